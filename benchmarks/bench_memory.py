"""Peak resident memory of ``sppdet finetune`` and ``sppdet train-svm`` against the number of
training images, and the feature cache's bytes per image per scale (issue 6 section 4).

Build (every stage caches, so a re-run with the same --workdir only measures):
    sppdet synth WORK/synth --images MAX; split files firstN (the first N image ids: synth is
    prefix-stable, so they are the images of ``--images N``) for every N of --counts;
    sppdet propose --split firstMAX (small --max-side / --max-proposals: the proposals only have
    to exist); sppdet extract --split firstMAX with a random-init zf5 of width 0.25 at --scales.
Measure: for each N, ``sppdet finetune --split firstN`` then ``sppdet train-svm --split firstN``
(fc7, the default), each in a fresh process. finetune runs with ``--lr 1e-5``: the random trunk's
conv5 values are large (pooled norms ~7,000), and the default 0.01 diverges to NaN, leaving
train-svm all-zero fc7 features; memory does not depend on the rate. The measured stages always
train: their output folders (finetune-*, svm-*) are removed from the scratch work directory
before each run, so a re-run never measures a cache hit. Its peak resident set comes from ``os.wait4`` on
that one child (``ru_maxrss``), so no earlier process is mixed in. ``sppdet --version`` in a
fresh process is the start-up baseline (it imports torch and every command); "above start-up" is
the rest. Streaming stages keep that flat as N grows; one that loads the split grows with N.

    .venv/bin/python benchmarks/bench_memory.py [--workdir DIR] [--counts 100,200,400]
                                                [--epochs 2] [--lr 1e-5] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from sppdet.data.synth import image_id
from sppdet.data.voc import write_split
from sppdet.workdir.caches import features_dir
from sppdet.models.features import load_feature_file
from sppdet.workdir.caches import proposals_dir
from sppdet.fileio import atomic_write_json
from sppdet.workdir.store import WorkDir


def sppdet() -> list[str]:
    """The sppdet console script next to this interpreter (the project's venv), else on PATH."""
    local = Path(sys.executable).with_name("sppdet")
    return [str(local)] if local.exists() else ["sppdet"]


def run_measured(argv: list[str], env: dict) -> tuple[float, float]:
    """Run ``sppdet argv`` in a fresh process; (peak resident MB of that process, wall seconds)."""
    print(f"== sppdet {' '.join(argv)}", flush=True)
    start = time.perf_counter()
    process = subprocess.Popen(sppdet() + argv, env=env)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        sys.exit(f"bench_memory: `sppdet {argv[0]}` failed (exit {process.returncode})")
    return usage.ru_maxrss / 1024, time.perf_counter() - start  # ru_maxrss is in KiB on Linux


def forget_trained(work: Path) -> None:
    """Remove the finetune and train-svm outputs of the scratch work directory."""
    for folder in [*work.glob("finetune-*"), *work.glob("svm-*")]:
        shutil.rmtree(folder)


def build(work: Path, counts: list[int], args, env: dict) -> Path:
    """The dataset and caches every measurement reads; returns the dataset root."""
    data = work / "synth"
    largest = max(counts)
    run_measured(["synth", str(data), "--images", str(largest), "--seed", "0", "--quiet"], env)
    for count in counts:
        write_split(data, f"first{count}", [image_id(i) for i in range(1, count + 1)])
    run_measured(["propose", "--data", str(data), "--split", f"first{largest}", "--max-side",
                  str(args.max_side), "--max-proposals", str(args.max_proposals), "--quiet"], env)
    run_measured(["extract", "--split", f"first{largest}", "--backbone", "zf5", "--width", "0.25",
                  "--weights", "none", "--scales", args.scales, "--quiet"], env)
    return data


def cache_sizes(work: Path) -> dict:
    """Feature-cache bytes per image (file, and each scale's map) and proposals per image."""
    folder = features_dir(WorkDir(work))
    files = sorted(folder.glob("*.npz"))
    per_scale, shapes = [], []
    for path in files:
        maps = load_feature_file(path).maps
        per_scale.append([m.nbytes for m in maps])
        shapes.append([m.shape for m in maps])
    proposals = [len(np.load(p, mmap_mode="r", allow_pickle=False))
                 for p in proposals_dir(WorkDir(work)).glob("*.npy")]
    return {"images": len(files), "file_bytes_per_image": float(np.mean([p.stat().st_size for p in files])),
            "map_bytes_per_image_per_scale": np.mean(per_scale, axis=0).tolist(),
            "map_shape_mean_per_scale": np.mean(shapes, axis=0).round(1).tolist(),
            "proposals_per_image": float(np.mean(proposals))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "sppdet-bench-memory"))
    parser.add_argument("--counts", default="100,200,400", help="training-set sizes to measure")
    parser.add_argument("--epochs", type=int, default=2, help="finetune epochs (memory is per pass)")
    parser.add_argument("--lr", default="1e-5", help="finetune learning rate (see above)")
    parser.add_argument("--scales", default="448", help="extract scales (the demo's: 448)")
    parser.add_argument("--max-side", type=int, default=200, help="propose: search on images this small")
    parser.add_argument("--max-proposals", type=int, default=500)
    parser.add_argument("--json", dest="json_path", default=None, help="also write the results here")
    args = parser.parse_args()
    counts = sorted(int(c) for c in args.counts.split(","))
    work = Path(args.workdir).resolve()
    env = {**os.environ, "SPPDET_WORKDIR": str(work), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}

    build(work, counts, args, env)
    baseline, _ = run_measured(["--version"], env)
    rows = []
    for count in counts:
        forget_trained(work)
        for stage, extra in (("finetune", ["--epochs", str(args.epochs), "--lr", args.lr]), ("train-svm", [])):
            peak, seconds = run_measured([stage, "--split", f"first{count}", *extra, "--quiet"], env)
            rows.append({"stage": stage, "images": count, "peak_rss_mb": round(peak, 1),
                         "above_startup_mb": round(peak - baseline, 1), "seconds": round(seconds, 1)})
    cache = cache_sizes(work)

    print(f"\nPeak resident memory per stage (fresh process each; start-up baseline "
          f"`sppdet --version`: {baseline:.0f} MB); OMP_NUM_THREADS={env['OMP_NUM_THREADS']}\n")
    print("| stage | training images | peak RSS (MB) | above start-up (MB) | seconds |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['stage']} | {row['images']} | {row['peak_rss_mb']:.0f} | {row['above_startup_mb']:.0f} "
              f"| {row['seconds']:.1f} |")
    print(f"\nFeature cache (zf5 width 0.25, float16, {cache['images']} images, "
          f"{cache['proposals_per_image']:.0f} proposals per image):\n")
    print("| scale | conv5 map (C x H x W, mean) | bytes per image |")
    print("|---:|---|---:|")
    for scale, shape, size in zip(args.scales.split(","), cache["map_shape_mean_per_scale"],
                                  cache["map_bytes_per_image_per_scale"]):
        print(f"| {scale} | {' x '.join(f'{v:g}' for v in shape)} | {size:,.0f} |")
    print(f"| all (file) | | {cache['file_bytes_per_image']:,.0f} |")
    result = {"benchmark": "memory", "baseline_rss_mb": round(baseline, 1), "rows": rows, "cache": cache,
              "settings": {"counts": counts, "epochs": args.epochs, "lr": args.lr, "scales": args.scales,
                           "max_side": args.max_side, "max_proposals": args.max_proposals},
              "machine": f"{platform.machine()}, python {platform.python_version()}"}
    print(json.dumps(result))
    if args.json_path:
        atomic_write_json(args.json_path, result)


if __name__ == "__main__":
    main()
