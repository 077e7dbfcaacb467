"""One-pass conv (SPP-net) versus R-CNN's per-window conv, on the same trunk (SPEC, timing).

SPP-net: the 688-scale image (688 x 917, a 4:3 VOC image) goes through conv1-conv5 once
(``sppdet.models.features.compute_features``: preprocessing, trunk, float16 copy back).
R-CNN: each of 2,000 windows is cropped, warped to 224 x 224 and run through the same trunk. One
batch of ``--batch`` random windows is timed (crop + warp + trunk) and scaled to ``--windows``.
Reported: median seconds over ``--reps`` interleaved runs after a warm-up, the measured ratio,
and the ratio of multiply-accumulates of the conv layers (what the ratio would be if time followed
arithmetic). Weights are random (timing does not depend on them). Goal (issue 3): ratio >= 100.

    .venv/bin/python benchmarks/bench_conv.py [--backbones zf5,alexnet] [--device auto] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import platform

import cv2
import numpy as np
import torch
from torch import nn

from sppdet.models.backbones import build_backbone, resolve_device
from sppdet.models.features import compute_features
from sppdet.bench.timing import interleaved_medians

IMAGE_HW = (688, 917)
WARP = 224


def _conv_macs(trunk: nn.Module, shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of every Conv2d of ``trunk`` on a zero input of ``shape``."""
    total = 0

    def count(module, inputs, output):
        nonlocal total
        kh, kw = module.kernel_size
        total += output.numel() * (module.in_channels // module.groups) * kh * kw

    hooks = [m.register_forward_hook(count) for m in trunk.modules() if isinstance(m, nn.Conv2d)]
    with torch.inference_mode():
        trunk.cpu()(torch.zeros(shape))
    for hook in hooks:
        hook.remove()
    return total


def _random_windows(count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` boxes (x1, y1, x2, y2) inside the image, 32 px to the full size on a side."""
    height, width = IMAGE_HW
    w = rng.integers(32, width, count)
    h = rng.integers(32, height, count)
    x1 = rng.integers(0, width - w + 1)
    y1 = rng.integers(0, height - h + 1)
    return np.stack([x1, y1, x1 + w, y1 + h], axis=1)


def bench(name: str, windows: int, batch: int, reps: int, device: torch.device) -> dict:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (*IMAGE_HW, 3), dtype=np.uint8)
    backbone = build_backbone(name, 1.0)
    macs_one_pass = _conv_macs(backbone.trunk, (1, 3, *IMAGE_HW))
    macs_window = _conv_macs(backbone.trunk, (1, 3, WARP, WARP))
    trunk = backbone.trunk.to(device, memory_format=torch.channels_last)  # as compute_features
    boxes = _random_windows(batch, rng)

    def one_pass():
        compute_features(backbone, image, (IMAGE_HW[0],), device)

    def rcnn_batch():
        crops = np.stack([cv2.resize(image[y1:y2, x1:x2], (WARP, WARP), interpolation=cv2.INTER_LINEAR)
                          for x1, y1, x2, y2 in boxes])
        with torch.inference_mode():
            inputs = torch.stack([backbone.preprocess(crop, device) for crop in crops])
            trunk(inputs.contiguous(memory_format=torch.channels_last)).half().cpu()

    spp_s, batch_s = interleaved_medians([one_pass, rcnn_batch], reps, device)
    rcnn_s = batch_s * windows / batch
    return {"backbone": name, "device": str(device), "image_hw": list(IMAGE_HW), "windows": windows,
            "batch": batch, "spp_conv_s": spp_s, "rcnn_conv_s": rcnn_s, "speedup": rcnn_s / spp_s,
            "mac_ratio": macs_window * windows / macs_one_pass}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default="zf5,alexnet")
    parser.add_argument("--windows", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--json", dest="json_path", default=None, help="also write the results here")
    args = parser.parse_args()
    device = resolve_device(args.device)
    rows = [bench(name, args.windows, args.batch, args.reps, device)
            for name in args.backbones.split(",")]

    machine = (torch.cuda.get_device_name(device) if device.type == "cuda"
               else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    print(f"One-pass conv vs R-CNN per-window conv; image {IMAGE_HW[0]}x{IMAGE_HW[1]}, "
          f"{args.windows} windows warped to {WARP}x{WARP} (batch of {args.batch} timed, scaled); "
          f"device: {device} ({machine}); torch {torch.__version__}\n")
    print(f"| backbone | SPP one-pass conv (s) | R-CNN conv, {args.windows:,} windows (s) | speed-up "
          "| conv MAC ratio |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['backbone']} | {row['spp_conv_s']:.3f} | {row['rcnn_conv_s']:.1f} "
              f"| {row['speedup']:.0f}x | {row['mac_ratio']:.0f}x |")
    result = {"benchmark": "conv", "machine": machine, "torch": torch.__version__, "rows": rows}
    print(json.dumps(result))
    if args.json_path:
        with open(args.json_path, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
