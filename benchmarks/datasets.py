"""``sppdet train`` with no flags on datasets that do not come from ``sppdet synth``.

For each look of ``sppdet scenery`` (glyphs on paper, road signs, cells; see
``sppdet.data.scenery``), as a new user would:

    sppdet scenery D --look LOOK --images N --seed S     (trainval + test only: val is carved)
    sppdet train --data D                                (no other flag)
    sppdet eval --split test                             (once, at the end)

Each dataset gets its own work directory under ``--workdir``. Writes ``<workdir>/datasets.json``
(per look: val mAP of the choices, test mAP, seconds of train and eval, the choices) and prints a
markdown table for BENCHMARKS.md.

Usage: python benchmarks/datasets.py [--workdir sppdet-work/datasets] [--images 300] [--looks glyphs,signs,cells]
                                    [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from demo import run_command


def run_look(root: Path, look: str, images: int, seed: int) -> dict:
    """Generate, train and evaluate one look; its figures."""
    data, work = root / look / "data", root / look / "work"
    times = {}
    for name, argv in (("scenery", ["scenery", str(data), "--look", look, "--images", str(images),
                                    "--seed", str(seed)]),
                       ("train", ["train", "--data", str(data), "--workdir", str(work)]),
                       ("eval", ["eval", "--split", "test", "--workdir", str(work),
                                 "--json", str(work / "test-eval.json")])):
        print(f"\n== sppdet {' '.join(argv)}", flush=True)
        start = time.perf_counter()
        if run_command(argv) != 0:
            sys.exit(f"datasets: `sppdet {name}` failed on {look}")
        times[name] = round(time.perf_counter() - start, 1)
    trained = json.loads((work / "train-summary.json").read_text())
    test = json.loads((work / "test-eval.json").read_text())
    return {"look": look, "images": images, "seed": seed, "val_mAP": trained["val_map"], "test_mAP": test["mAP"],
            "seconds": times, "train_steps": {s["name"]: s["seconds"] for s in trained["times"]},
            "chosen": trained["selection"], "splits": trained["splits"],
            "test_classes": test["classes"]}


def table(results: list[dict]) -> str:
    """The markdown table of :func:`run_look` results."""
    lines = ["| dataset | images | val mAP | test mAP | train s | eval s | chosen on val |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in results:
        svm = r["chosen"]["svm"]
        chosen = (f"{svm['layer']}, C {svm['C']:g}, copies {','.join(svm['augment_positives']) or 'none'}, "
                  f"views {','.join(r['chosen']['tta']) or 'none'}")
        lines.append(f"| scenery {r['look']} (seed {r['seed']}) | {r['images']} | {r['val_mAP']:.3f} | "
                     f"{r['test_mAP']:.3f} | {r['seconds']['train']:.0f} | {r['seconds']['eval']:.0f} | {chosen} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="sppdet-work/datasets")
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--looks", default="glyphs,signs,cells")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    root = Path(args.workdir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    results = [run_look(root, look, args.images, args.seed) for look in args.looks.split(",")]
    text = json.dumps({"benchmark": "datasets", "date": time.strftime("%Y-%m-%d"), "results": results}, indent=2)
    (root / "datasets.json").write_text(text + "\n")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
    print("\n" + table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
