"""The demo: the built-in dataset, trained and scored as a user would (``make demo``).

    sppdet synth D --images N          the dataset (shapes on clutter; train, val, trainval, test)
    sppdet train --data D --augment flip,rot90,channels
    sppdet eval --split test           measured once, after every choice was made on val
    sppdet detect (4 test images)

The only setting given is a property of the data: the shapes keep their class when mirrored,
turned or recoloured (``--augment``); everything else is ``sppdet train``'s defaults, its rules
that follow the data and its choices on the validation split (``sppdet.training.settings``,
``sppdet.pipelines.selection``). Each command runs in this one process through the click group the console
script calls (``cli.main.cli``), which saves a ~6 s torch import per command. A second run finds
every cache and finishes in seconds. Writes ``<workdir>/demo-times.json`` (seconds per command and
per training step, val and test mAP) and prints a table.

:func:`stages` gives the single-stage commands equivalent to what ``train`` did (read from the
work directory's records), for ``benchmarks/ablation.py``, which re-runs them with other options.

Usage: python benchmarks/demo.py [--workdir sppdet-work] [--images 400]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import click

from cli.main import cli
from sppdet.workdir.store import WorkDir

#: What the demo's classes stay under (sppdet.data.synth: any rotation, colour unrelated to class).
AUGMENT = ["--augment", "flip,rot90,channels"]


def run_command(argv: list[str]) -> int:
    """``sppdet ARGV --quiet`` in this process; its exit code (errors print one line, as the CLI)."""
    try:
        return int(cli.main(args=[*argv, "--quiet"], prog_name="sppdet", standalone_mode=False) or 0)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code


def commands(work: Path, data: Path, images: int) -> list[tuple[str, list[str]]]:
    """(name, sppdet arguments) of the demo in order; detect is added once the test split exists."""
    return [
        ("synth", ["synth", str(data), "--images", str(images), "--seed", "0"]),
        ("train", ["train", "--data", str(data), *AUGMENT]),
        ("eval", ["eval", "--split", "test", "--json", str(work / "demo-eval.json"), "--plots", str(work / "plots")]),
    ]


def stages(work: Path, data: Path, images: int) -> list[tuple[str, list[str]]]:
    """The single-stage commands that reproduce what ``sppdet train`` did in ``work`` (every
    setting spelled out from its records), named as the ablation expects: "extract trainval",
    "extract test", "finetune", "train-svm", "train-bbox", "eval"."""
    stages_record = WorkDir(work).config().get("stages", {})
    extract, selection = stages_record["extract"]["config"], stages_record["selection"]
    chosen = selection["chosen"]
    views = ",".join(chosen["tta"]) or "none"
    trunk = ["--backbone", extract["backbone"], "--width", f"{extract['width']:g}",
             "--scales", ",".join(map(str, extract["scales"])), "--precision", extract["precision"]]
    return [
        ("extract trainval", ["extract", "--split", "trainval", *trunk]),
        ("extract test", ["extract", "--split", "test", *trunk, "--tta", views]),
        ("finetune", ["finetune", "--split", selection["train_split"]]),
        ("train-svm", ["train-svm", "--split", selection["final_split"], "--layer", chosen["layer"],
                       "--fc7-scale", f"{chosen.get('fc7_scale', 1.0):g}",
                       "--C", f"{chosen['C']:g}", "--augment-positives", ",".join(chosen["augment_positives"])]),
        ("train-bbox", ["train-bbox", "--split", selection["final_split"]]),
        ("eval", ["eval", "--split", "test", "--tta", views, "--json", str(work / "demo-eval.json"),
                  "--plots", str(work / "plots")]),
    ]


def first_test_images(data: Path, count: int) -> list[str]:
    """Paths of the first ``count`` images of the demo's test split."""
    ids = (data / "ImageSets" / "Main" / "test.txt").read_text().split()[:count]
    return [str(data / "JPEGImages" / f"{i}.jpg") for i in ids]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=os.environ.get("SPPDET_WORKDIR", "sppdet-work"))
    parser.add_argument("--images", type=int, default=400)
    args = parser.parse_args()
    work = Path(args.workdir).resolve()
    data = work / "synth"
    os.environ["SPPDET_WORKDIR"] = str(work)
    times: dict[str, float] = {}
    started = time.perf_counter()
    for name, argv in commands(work, data, args.images) + [("detect", None)]:
        if argv is None:
            argv = ["detect", *first_test_images(data, 4), "--out", str(work / "demo-detections")]
        print(f"\n== sppdet {' '.join(argv)}", flush=True)
        begin = time.perf_counter()
        code = run_command(argv)
        times[name] = time.perf_counter() - begin
        if code != 0:
            print(f"demo: `sppdet {argv[0]}` failed (exit {code})", file=sys.stderr)
            return code
    total = time.perf_counter() - started
    evaluation = json.loads((work / "demo-eval.json").read_text())
    trained = json.loads((work / "train-summary.json").read_text())
    print("\n| step | seconds |\n|---|---:|")
    for name, seconds in times.items():
        print(f"| {name} | {seconds:.1f} |")
        if name == "train":
            for step in trained["times"]:
                print(f"| - {step['name']} | {step['seconds']:.1f} |")
    print(f"| **total** | **{total:.1f}** |")
    print(f"\nmAP (VOC07 11-point): val {trained['val_map']:.4f} (the choices' score; models trained on "
          f"{trained['splits']['train']}), test {evaluation['mAP']:.4f}")
    print(f"annotated test images: {work / 'demo-detections'}")
    summary = {"seconds": times, "total_seconds": total, "mAP": evaluation["mAP"], "val_mAP": trained["val_map"],
               "train_steps": {step["name"]: step["seconds"] for step in trained["times"]},
               "chosen": trained["selection"], "images": args.images, "date": time.strftime("%Y-%m-%d")}
    (work / "demo-times.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
