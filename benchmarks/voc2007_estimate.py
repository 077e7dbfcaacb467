"""What the VOC 2007 recipe costs on this machine, projected from measured per-image costs.

The README's recipe (``--backbone vgg16 --weights imagenet``, the paper's five scales) runs
selective search and the conv trunk once per image of trainval (5,011) and test (4,952), then
pools, scores and refines ~2,000 windows per test image. This script measures, on a VOC-sized
image (500 x 375, random pixels for the trunk, a generated scene for selective search), the seconds
per image of each per-image step with the recipe's settings, and multiplies by the image counts:

- proposals: ``sppdet.models.selective_search.selective_search`` with the default ProposeConfig
  (fast mode, images shrunk to 500 px), on one core; ``propose`` runs one process per core;
- features: ``sppdet.models.features.compute_features`` at the five scales (480-1200), full-width
  trunk (weights random: timing does not depend on them), in the device's precision;
- detection per test image: pooling 2,000 windows (``sppdet.ops.spp.pool_windows``) plus the fc
  head (4096-wide fc6/fc7) over them.

Not projected: finetune, train-svm and train-bbox, whose cost depends on the windows mined, not
only on the images (on the demo they take less time than extraction); the estimate is a lower
bound for the whole chain. Also printed: the disk the float16 feature cache takes for both
splits. Time it alone (``OMP_NUM_THREADS`` as you will run sppdet).

    .venv/bin/python benchmarks/voc2007_estimate.py [--backbone vgg16] [--device auto] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import cv2
import numpy as np
import torch

from sppdet.config import ProposeConfig
from sppdet.data.synth import render_image
from sppdet.models.backbones import build_backbone, resolve_device
from sppdet.models.features import compute_features
from sppdet.models.head import FcHead, fc7_features
from sppdet.models.selective_search import selective_search
from sppdet.ops.spp import pool_windows, pooled_dim

PAPER_SCALES = (480, 576, 688, 864, 1200)
VOC2007_IMAGES = {"trainval": 5011, "test": 4952}
IMAGE_HW = (375, 500)
WINDOWS = 2000


def _median_seconds(action, reps: int) -> float:
    action()  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def measure(backbone_name: str, device: torch.device, reps: int) -> dict:
    """Seconds per image of proposals, features and per-image detection (module docstring)."""
    rng = np.random.default_rng(0)
    scene = cv2.resize(render_image(0, 0)[0], IMAGE_HW[::-1], interpolation=cv2.INTER_LINEAR)
    propose_s = _median_seconds(lambda: selective_search(scene, ProposeConfig()), reps)
    image = rng.integers(0, 256, (*IMAGE_HW, 3), dtype=np.uint8)
    backbone = build_backbone(backbone_name, 1.0)
    precision = "bfloat16" if device.type == "cpu" else "float16"
    features = {}

    def extract():
        features["maps"], features["factors"] = compute_features(backbone, image, PAPER_SCALES, device, precision)

    extract_s = _median_seconds(extract, reps)
    w = rng.uniform(16, IMAGE_HW[1] / 2, WINDOWS)
    h = rng.uniform(16, IMAGE_HW[0] / 2, WINDOWS)
    x1, y1 = rng.uniform(0, IMAGE_HW[1] - w), rng.uniform(0, IMAGE_HW[0] - h)
    boxes = np.stack([x1, y1, x1 + w, y1 + h], axis=1).astype(np.float32)
    head = FcHead(pooled_dim(backbone.channels), (4096, 4096), 21).eval()

    def detect():
        pooled = pool_windows(features["maps"], features["factors"], boxes, backbone.stride, backbone.offset).numpy()
        fc7_features(head, pooled)

    detect_s = _median_seconds(detect, reps)
    total = sum(VOC2007_IMAGES.values())
    cache_bytes = sum(int(m.nbytes) for m in features["maps"])  # float16 maps, as extract stores them
    workers = os.cpu_count() or 1
    return {"backbone": backbone_name, "device": str(device), "precision": precision, "scales": PAPER_SCALES,
            "image_hw": IMAGE_HW, "torch_threads": torch.get_num_threads(), "cpu_cores": workers,
            "seconds_per_image": {"propose (one core)": propose_s, "extract (5 scales)": extract_s,
                                  "pool + fc, 2000 windows": detect_s},
            "feature_cache_gb": cache_bytes * total / 1e9,
            "hours": {"propose": propose_s * total / workers / 3600, "extract": extract_s * total / 3600,
                      "detect test": (detect_s * VOC2007_IMAGES["test"]) / 3600}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="vgg16")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--json", dest="json_path", default=None)
    args = parser.parse_args()
    result = measure(args.backbone, resolve_device(args.device), args.reps)
    print(f"{result['backbone']} on {result['device']} ({result['precision']}, {result['torch_threads']} torch "
          f"threads, {result['cpu_cores']} cores), VOC-sized image {IMAGE_HW[1]} x {IMAGE_HW[0]}")
    for step, seconds in result["seconds_per_image"].items():
        print(f"  {step:28s} {seconds:8.3f} s per image")
    for step, hours in result["hours"].items():
        print(f"  VOC 2007 {step:19s} {hours:8.1f} h")
    print(f"  VOC 2007 per-image steps    {sum(result['hours'].values()):8.1f} h (training stages not included)")
    print(f"  VOC 2007 feature cache      {result['feature_cache_gb']:8.0f} GB (float16 conv5 maps, trainval + test)")
    if args.json_path:
        with open(args.json_path, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
