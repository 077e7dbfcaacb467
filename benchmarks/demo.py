"""The demo: the whole SPP-net chain on the built-in dataset, each stage timed (``make demo``).

    synth -> propose (trainval, test) -> pretrain -> extract (trainval, test) -> finetune
          -> train-svm -> train-bbox -> eval (test) -> detect (a few test images)

Each stage runs as an ``sppdet`` command line, exactly as a user would type it, so the demo also
checks the command line; all of them run in this one process through the click group the console
script calls (``cli.main.cli``), which saves a ~6 s torch import per command. ``pretrain`` learns
from random windows (``--windows random``, see PRETRAIN), so it needs no proposals; the chain
keeps the issue's order. A second run finds every cache and finishes in seconds. Writes
``<workdir>/demo-times.json`` (seconds per stage, mAP) and prints a table; the mAP comes from
``sppdet eval --json``.

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

#: Settings for the demo dataset (shapes of 15-220 px on 300-500 px images); each is a
#: command-line option a user can change, and README.md explains the choice.
BACKBONE = ["--backbone", "zf5", "--width", "0.25"]
#: Five scales (the paper's count), a factor sqrt(2) apart: each window is pooled where it
#: measures about 96 px, the default target for a trunk pretrained on 64 px crops
#: (sppdet.extract_stage), so shapes from 15 to 220 px all find a scale near the size the trunk
#: learned. Up to 1088 rather than 896 so that 15-30 px shapes get closer to it: +0.015 and
#: +0.013 test mAP on two pretrained trunks (224-896: 0.612 and 0.557; 320-1280, twice the conv
#: time: +0.027 and +0.025; pool5 SVMs, no box regression, one thread).
SCALES = ["--scales", "272,384,544,768,1088"]
PROPOSE = ["--max-side", "320"]
#: The trunk in bfloat16 (sppdet.features.PRECISIONS): this project's CPU has AVX512-BF16, and
#: extract takes 41 + 78 s instead of 49 + 100 s for the same mAP (0.812 vs 0.806, within the
#: run-to-run spread of the SVMs); pass "float32" on a CPU without bfloat16 units.
PRECISION = ["--precision", "bfloat16"]
#: The demo's classes are shapes: any rotation, colour independent of class (sppdet.data.synth).
#: Random windows, jittered ground truth and object parts instead of proposals
#: (sppdet.random_windows): test mAP 0.646 / 0.665 against 0.627 / 0.570 for pretraining seeds
#: 0 / 1 (batch 128, no parts; pool5, no box regression). Parts (8 per object) are a wash alone
#: and help with the SVM's extra positives below (README, "What limits the demo's mAP").
PRETRAIN = ["--augment", "flip,rot90,channels", "--windows", "random", "--parts-per-object", "8"]
#: pool5+fc7 SVMs (sppdet.svm_stage): pool5 beats fc7 of the fine-tuned head on this data
#: (BENCHMARKS.md, ablation), and both side by side beat pool5: 0.763 vs 0.746 (box regression).
#: C above the paper's 1e-3: with ~160 positives per class, C 1e-3 leaves every score below -0.9
#: (same ranking, mAP 0.528 vs 0.527, but `detect` at threshold 0 draws nothing). Each object's
#: three quarter-turned copies join the positives (sppdet.augmented_windows; the shapes keep their
#: class when turned): on the demo's models of 2026-12-01, 0.801 against 0.802 for all 7 flips and
#: turns in 65% of the train-svm time (test views hflip; 0.811 vs 0.814 with hflip,rot180);
#: without copies 0.763 (4 extra positives per object, C 0.005, no test views).
SVM = ["--layer", "pool5+fc7", "--C", "0.01", "--augment-positives", "rot90"]
#: Test-time views (sppdet.views): the test split's mirror image and half turn are extracted too,
#: and each window's scores and box deltas averaged over the three: on the same models (7
#: copies) none 0.784, hflip 0.802, hflip,rot180 0.814, hflip,vflip,rot180 0.818 (one more
#: conv pass of the test split per view, ~33 s).
TTA = ["--tta", "hflip,rot180"]


def run_command(argv: list[str]) -> int:
    """``sppdet ARGV --quiet`` in this process; its exit code (errors print one line, as the CLI)."""
    try:
        return int(cli.main(args=[*argv, "--quiet"], prog_name="sppdet", standalone_mode=False) or 0)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code


def stages(work: Path, data: Path, images: int) -> list[tuple[str, list[str]]]:
    """(stage name, sppdet arguments) in order; detect is added once the test split exists."""
    return [
        ("synth", ["synth", str(data), "--images", str(images), "--seed", "0"]),
        ("propose trainval", ["propose", "--data", str(data), "--split", "trainval", *PROPOSE]),
        ("propose test", ["propose", "--split", "test", *PROPOSE]),
        ("pretrain", ["pretrain", *BACKBONE, *PRETRAIN]),
        ("extract trainval", ["extract", "--split", "trainval", *BACKBONE, *SCALES, *PRECISION]),
        ("extract test", ["extract", "--split", "test", *BACKBONE, *SCALES, *PRECISION, *TTA]),
        ("finetune", ["finetune"]),
        ("train-svm", ["train-svm", *SVM]),
        ("train-bbox", ["train-bbox"]),
        ("eval", ["eval", "--split", "test", *TTA, "--json", str(work / "demo-eval.json"),
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
    plan = stages(work, data, args.images)
    times: dict[str, float] = {}
    started = time.perf_counter()
    for name, argv in plan + [("detect", None)]:
        if argv is None:
            argv = ["detect", *first_test_images(data, 4), *TTA, "--out", str(work / "demo-detections")]
        print(f"\n== sppdet {' '.join(argv)}", flush=True)
        begin = time.perf_counter()
        code = run_command(argv)
        times[name] = time.perf_counter() - begin
        if code != 0:
            print(f"demo: `sppdet {argv[0]}` failed (exit {code})", file=sys.stderr)
            return code
    total = time.perf_counter() - started
    evaluation = json.loads((work / "demo-eval.json").read_text())
    print("\n| stage | seconds |\n|---|---:|")
    for name, seconds in times.items():
        print(f"| {name} | {seconds:.1f} |")
    print(f"| **total** | **{total:.1f}** |")
    print(f"\nmAP (VOC07 11-point) on the demo test split: {evaluation['mAP']:.4f}")
    print(f"annotated test images: {work / 'demo-detections'}")
    summary = {"seconds": times, "total_seconds": total, "mAP": evaluation["mAP"],
               "images": args.images, "date": time.strftime("%Y-%m-%d")}
    (work / "demo-times.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
