"""Images per second of ``propose`` and ``extract`` with the local executor and with Ray (issue 19
section 4): what running on Ray costs on one machine, before it buys more machines.

Data: the first ``--images`` images (by id) of a ``sppdet synth`` dataset (made at ``--data``
with 40 images if it is missing), as the split ``ray-bench``. Each configuration computes both
stages from empty caches (a fresh work directory), in this process:

    local 1       propose --workers 1; extract (one process; torch threads as OMP_NUM_THREADS)
    local 2       propose --workers 2 (a spawn pool); extract as above (it has no workers)
    ray N         --executor ray on a local Ray started with num_cpus=N (N tasks side by side,
                  one thread each); the Ray start is timed apart, the first tasks' worker
                  start-up (importing torch and OpenCV) counts

Extract: random zf5 weights of width ``--width`` at one scale ``--scale`` (the features only have to
be computed, not be good). Run it with ``OMP_NUM_THREADS=1`` so that every configuration uses one
thread per process; on a shared machine the numbers are rough.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_ray.py [--data /tmp/raybench/data]
        [--images 24] [--workers 1,2] [--width 0.25] [--scale 400] [--json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sppdet.config import ProposeConfig
from sppdet.data.voc import write_split
from sppdet.stages.extract import prepare_extract, run_extract
from sppdet.stages.propose import prepare_propose, run_propose

SPLIT = "ray-bench"


def make_data(root: Path, images: int) -> list[str]:
    """``sppdet synth root --images 40`` unless ``root`` exists; write and return the split of its
    first ``images`` image ids."""
    if not root.is_dir():
        synth = Path(sys.executable).with_name("sppdet")
        subprocess.run([str(synth) if synth.exists() else "sppdet", "synth", str(root), "--images",
                        str(max(40, images))], check=True, stdout=subprocess.DEVNULL)
    ids = sorted(p.stem for p in (root / "JPEGImages").iterdir())[:images]
    if len(ids) < images:
        raise SystemExit(f"{root}: only {len(ids)} images, fewer than --images {images}")
    write_split(root, SPLIT, ids)
    return ids


@contextlib.contextmanager
def local_ray(cpus: int):
    """A local Ray of ``cpus`` CPUs for the block; yields the seconds its start took."""
    import ray

    temp = tempfile.mkdtemp(prefix="raybench", dir="/tmp")
    start = time.perf_counter()
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, _temp_dir=temp,
             logging_level=logging.ERROR)
    try:
        yield time.perf_counter() - start
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def measure(root: Path, work: Path, executor: str, workers: int, width: float, scale: int) -> dict:
    """Both stages from empty caches in ``work``: images per second of each."""
    shutil.rmtree(work, ignore_errors=True)
    job = prepare_propose(work, ProposeConfig(), SPLIT, root)
    start = time.perf_counter()
    run_propose(job, workers=workers, executor=executor)
    propose = len(job.todo) / (time.perf_counter() - start)
    job = prepare_extract(work, split=SPLIT, backbone="zf5", width=width, weights="none", scales=(scale,),
                          device="cpu")
    start = time.perf_counter()
    summary = run_extract(job, executor=executor)
    extract = summary.computed / (time.perf_counter() - start)
    return {"propose_images_per_s": propose, "extract_images_per_s": extract}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("/tmp/raybench/data"))
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--workers", default="1,2", help="local pool sizes and Ray CPUs to measure")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--scale", type=int, default=400)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    make_data(args.data, args.images)
    scratch = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    rows = []
    try:
        for n in counts:
            rows.append({"executor": f"local {n}", "start_s": 0.0,
                         **measure(args.data, scratch / "work", "local", n, args.width, args.scale)})
        for n in counts:
            with local_ray(n) as started:
                rows.append({"executor": f"ray {n}", "start_s": started,
                             **measure(args.data, scratch / "work", "ray", n, args.width, args.scale)})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"{args.images} images of {args.data}; extract: zf5 width {args.width:g}, scale {args.scale}; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; {os.cpu_count()} CPUs, "
          f"{platform.processor() or platform.machine()}")
    print(f"{'executor':<10} {'propose img/s':>14} {'extract img/s':>14} {'Ray start s':>12}")
    for row in rows:
        print(f"{row['executor']:<10} {row['propose_images_per_s']:>14.2f} {row['extract_images_per_s']:>14.2f} "
              f"{row['start_s']:>12.1f}")
    if args.json:
        settings = {"backbone": "zf5", "width": args.width, "scale": args.scale, "workers": counts,
                    "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "cpus": len(os.sched_getaffinity(0))}
        args.json.write_text(json.dumps({"images": args.images, "settings": settings, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
