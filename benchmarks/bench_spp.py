"""Time sppdet.ops.spp.spp_pool against torchvision.ops.roi_pool over the same pyramid and windows.

The workload is SPEC's: a 256 x 43 x 58 conv5 map (ZF-5 at stride 16 on a 688 x 917 image) and
2,000 windows shaped like selective-search proposals (log-uniform sides from 20 px to the whole
image, anywhere in it), projected to cells with sppdet.ops.spp.project_boxes. roi_pool runs once per
pyramid level (output n x n for n in 1, 2, 3, 6) on the same inclusive cell boxes with
spatial_scale 1, which gives the same bins, so both produce the same [R, 12800] matrix (the
largest difference is reported). Each timing is the median of several repeats after a warm-up,
the two ops alternating, single-threaded and with torch's default thread count.

Usage: python benchmarks/bench_spp.py [--windows 2000] [--repeats 7] [--device cpu] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import platform

import numpy as np
import torch
import torchvision.ops

from sppdet.ops.spp import LEVELS, project_boxes, spp_pool
from sppdet.fileio import atomic_write_json
from sppdet.bench.timing import interleaved_medians

IMAGE_HW = (688, 917)
MAP_SHAPE = (256, 43, 58)
STRIDE = 16


def proposal_like_boxes(rng: np.random.Generator, count: int) -> np.ndarray:
    """``[count, 4]`` float32 (x1, y1, x2, y2) inside the image, sides log-uniform in [20, side]."""
    height, width = IMAGE_HW
    w = np.exp(rng.uniform(np.log(20), np.log(width), count))
    h = np.exp(rng.uniform(np.log(20), np.log(height), count))
    x1, y1 = rng.uniform(0, width - w), rng.uniform(0, height - h)
    return np.stack([x1, y1, x1 + w, y1 + h], 1).astype(np.float32)


def roi_pool_pyramid(fmap: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
    """torchvision's RoI max pooling at every level, concatenated like spp_pool's output."""
    return torch.cat([torchvision.ops.roi_pool(fmap[None], rois, (n, n), 1.0).flatten(1)
                      for n in LEVELS], 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", dest="json_path", help="also write the results to this file")
    args = parser.parse_args()

    device = torch.device(args.device)
    rng = np.random.default_rng(0)
    fmap = torch.from_numpy(rng.standard_normal(MAP_SHAPE, dtype=np.float32)).to(device)
    boxes = proposal_like_boxes(rng, args.windows)
    cells = project_boxes(boxes, STRIDE, 0.0, MAP_SHAPE[1:]).to(device)
    rois = torch.cat([torch.zeros(len(cells), 1, device=device), cells.float()], 1)
    sizes = (cells[:, 2:] - cells[:, :2] + 1).float()

    with torch.no_grad():
        ours, theirs = spp_pool(fmap, cells), roi_pool_pyramid(fmap, rois)
        max_diff = float((ours - theirs).abs().max())
        default_threads = torch.get_num_threads()
        rows = []
        for threads in sorted({1, default_threads}) if device.type == "cpu" else [default_threads]:
            torch.set_num_threads(threads)
            ops = [lambda: spp_pool(fmap, cells), lambda: roi_pool_pyramid(fmap, rois)]
            spp_s, roi_s = interleaved_medians(ops, args.repeats, device)
            rows.append({"threads": threads, "spp_pool_ms": round(spp_s * 1e3, 2),
                         "roi_pool_ms": round(roi_s * 1e3, 2), "ratio": round(spp_s / roi_s, 3)})
        torch.set_num_threads(default_threads)

    result = {
        "benchmark": "spp_pool_vs_roi_pool", "windows": args.windows, "map": list(MAP_SHAPE),
        "levels": list(LEVELS), "mean_window_cells_wh": [round(v, 1) for v in sizes.mean(0).tolist()],
        "repeats": args.repeats, "device": str(device), "max_abs_diff": max_diff, "results": rows,
        "machine": f"{platform.machine()} {platform.processor() or platform.platform()}, "
                   f"{torch.get_num_threads()} threads, torch {torch.__version__}",
    }
    print(f"spp_pool vs roi_pool x{len(LEVELS)} levels: {args.windows} windows on a "
          f"{'x'.join(map(str, MAP_SHAPE))} map ({device}), median of {args.repeats}\n")
    print("| threads | spp_pool (ms) | roi_pool, 4 levels (ms) | ratio ours/roi_pool |")
    print("|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['threads']} | {row['spp_pool_ms']} | {row['roi_pool_ms']} | {row['ratio']} |")
    print(f"\nmax |spp_pool - roi_pool| = {max_diff}")
    print(json.dumps(result))
    if args.json_path:
        atomic_write_json(args.json_path, result)


if __name__ == "__main__":
    main()
