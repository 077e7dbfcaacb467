"""Time VOC evaluation at Pascal VOC 2007 test scale: 5,000 images x 20 classes x 100 detections
per class per image (10 million detections), and the results-file round trip on a tenth of it.

Synthetic data, fixed seed: VOC-like ground truth (on average ~2.4 objects per image, ~10%
difficult) or a crowded variant; per class and image, three jittered copies of each box of the
class (hits and duplicates) plus random boxes. Prints a markdown table, then one JSON line
(times as [wall s, CPU s], the best of --repeat runs).

    .venv/bin/python benchmarks/bench_eval.py [--images 5000] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np

from sppdet.data.voc import VOC_CLASSES, Annotation
from sppdet.evaluation.voc_ap import Detections, evaluate
from sppdet.evaluation.results_io import read_devkit_results, write_devkit_results

PER_CLASS = 100


def random_boxes(rng, n, size=500.0):
    xy = rng.random((n, 2)) * size * 0.8
    return np.concatenate([xy, xy + 8 + rng.random((n, 2)) * size * 0.4], axis=1)


def make_data(images: int, mean_objects: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    k = len(VOC_CLASSES)
    counts = rng.poisson(mean_objects - 1, images) + 1
    annotations, gt_image, gt_label, gt_boxes = [], [], [], []
    for i, n in enumerate(counts):
        labels = rng.integers(1, k + 1, n)
        boxes = random_boxes(rng, n).astype(np.float32)
        annotations.append(Annotation(f"{i:06d}", 500, 500, boxes,
                                      tuple(VOC_CLASSES[c - 1] for c in labels), rng.random(n) < 0.1))
        gt_image += [i] * n
        gt_label.append(labels)
        gt_boxes.append(boxes)
    gt_image, gt_label, gt_boxes = np.array(gt_image), np.concatenate(gt_label), np.concatenate(gt_boxes)

    total = images * k * PER_CLASS  # rows ordered (image, class, rank)
    image_index = np.repeat(np.arange(images), k * PER_CLASS)
    labels = np.tile(np.repeat(np.arange(1, k + 1), PER_CLASS), images)
    boxes = random_boxes(rng, total)
    scores = 0.7 * rng.random(total)
    # three jittered copies of each box of its class in its image (up to 33 boxes per cell)
    cell = gt_image * k + gt_label - 1
    order = np.argsort(cell, kind="stable")
    cell = cell[order]
    rank = np.minimum(np.arange(len(cell)) - np.searchsorted(cell, cell), 32)
    for copy in range(3):
        rows = cell * PER_CLASS + copy * 33 + rank
        boxes[rows] = gt_boxes[order] + rng.normal(0, 6, (len(order), 4))
        scores[rows] = 0.3 + 0.7 * rng.random(len(order))
    detections = Detections(tuple(a.image_id for a in annotations), image_index, boxes, scores, labels)
    return annotations, detections


def timed(fn, repeat):
    """Best wall-clock and CPU seconds over ``repeat`` runs, and the last value."""
    wall = cpu = float("inf")
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        value = fn()
        wall = min(wall, time.perf_counter() - start)
        cpu = min(cpu, time.process_time() - start_cpu)
    return (wall, cpu), value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()

    rows, record = [], {"images": args.images, "classes": len(VOC_CLASSES), "per_class": PER_CLASS}
    variants = (("VOC-like (~2.4 objects/image)", 2.4), ("crowded (~20 objects/image)", 20.0))
    for name, mean_objects in variants:
        annotations, detections = make_data(args.images, mean_objects)
        for metric in ("voc07", "area"):
            seconds, result = timed(lambda: evaluate(annotations, detections, VOC_CLASSES, metric),  # noqa: B023
                                    args.repeat)
            rows.append((f"evaluate {metric}, {name}", len(detections), seconds, result.mAP))
            record[f"evaluate_{metric}_{int(mean_objects)}_s"] = [round(t, 3) for t in seconds]

    annotations, detections = make_data(args.images // 10, 2.4, seed=1)
    ids = [a.image_id for a in annotations]
    with tempfile.TemporaryDirectory() as folder:
        seconds, _ = timed(lambda: write_devkit_results(folder, "test", detections, VOC_CLASSES), 1)
        rows.append(("write devkit results files", len(detections), seconds, float("nan")))
        record["write_results_s"] = [round(t, 3) for t in seconds]
        seconds, back = timed(lambda: read_devkit_results(folder, "test", VOC_CLASSES, ids), 1)
        rows.append(("read devkit results files", len(back), seconds, float("nan")))
        record["read_results_s"] = [round(t, 3) for t in seconds]

    print("| task | detections | wall s | CPU s | mAP |")
    print("|---|---:|---:|---:|---:|")
    for task, n, (wall, cpu), m_ap in rows:
        print(f"| {task} | {n:,} | {wall:.2f} | {cpu:.2f} | {'' if np.isnan(m_ap) else f'{m_ap:.4f}'} |")
    print(json.dumps({"benchmark": "eval", **record}))


if __name__ == "__main__":
    main()
