"""Where SPP-net's recognition fails, by the scale each object is pooled at (issue 20, item 1).

For a trained work directory and a split it has features of (default: the validation split that
``sppdet train`` chose on, never the test split), every non-difficult ground-truth object is
routed to the scale whose scaled box area is nearest the target (``sppdet.ops.spp.choose_scales``,
as pooling does), and per scale this reports:

- objects: how many objects are pooled at that scale, and their mean side in conv5 cells there
  (box side x scale factor / stride: the window the pyramid divides into 6 x 6 bins);
- border: the share of objects within one stride of the image edge, whose window reaches the
  map's padded border;
- top-1: the share of objects whose own ground-truth box gets its class's SVM score as the highest
  of all classes (recognition alone, no proposals, no box regression);
- score: the mean SVM score of the object's class on its own box;
- recall: the share of objects found by the detector (a detection of its class, score >= 0, IoU
  >= 0.5), with the recorded test-time views.

The SVMs are the work directory's final ones (trained on train + val after ``sppdet train``), so
on val they have seen the objects: read the table as where recognition is hardest, not as a
held-out score. ``--split`` another split the work directory has features of to change that.

    .venv/bin/python benchmarks/spp_scales.py --workdir sppdet-work [--split val] [--method spp|rcnn]
        [--json PATH]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import numpy as np

from sppdet.config import DetectConfig
from sppdet.ops.spp import choose_scales, scale_factors
from sppdet.structures.boxes import iou_matrix
from sppdet.workdir.caches import features_dir, features_info
from sppdet.workdir.records import SELECTION_RECORD, recorded_views
from sppdet.workdir.store import WorkDir
from sppdet.workdir.trained import detect_split, load_detector
from sppdet.workdir.window_source import WindowSource


def scale_table(work: WorkDir, split: str, method: str = "spp") -> dict:
    """The per-scale figures of the module docstring, as a dict (scales ascending). ``method``
    "rcnn" scores the R-CNN models of the work directory instead, on the same objects, each still
    filed under the scale SPP would pool it at (so the two tables compare object for object)."""
    source = WindowSource(work, split, method=method)
    detector = load_detector(work, source.feature_hash, source.dim, method=method)
    views = recorded_views(work) if method == "spp" else ()
    detections = detect_split(work, split, DetectConfig(tta=tuple(views)), method=method, source=source)
    spp = features_info(features_dir(work))
    scales, target, stride = spp.config.scales, spp.config.target, spp.stride
    rows = defaultdict(lambda: defaultdict(list))
    for image_id, boxes, labels, (height, width), factors, routed in routed_objects(source, scales, target):
        scores = detector.score(source.pool(image_id, boxes))
        found = _found(detections, image_id, boxes, labels)
        sides = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
        edge = stride
        border = ((boxes[:, 0] < edge) | (boxes[:, 1] < edge) | (boxes[:, 2] > width - edge)
                  | (boxes[:, 3] > height - edge))
        own = scores[np.arange(len(labels)), labels - 1]
        for i, s in enumerate(routed):
            row = rows[int(s)]
            row["cells"].append(sides[i] * factors[s] / stride)
            row["border"].append(bool(border[i]))
            row["top1"].append(bool(scores[i].argmax() == labels[i] - 1))
            row["score"].append(float(own[i]))
            row["found"].append(bool(found[i]))
    table = []
    for s in sorted(rows):
        row = rows[s]
        table.append({"scale": int(scales[s]), "objects": len(row["cells"]),
                      "cells": float(np.mean(row["cells"])), "border": float(np.mean(row["border"])),
                      "top1": float(np.mean(row["top1"])), "score": float(np.mean(row["score"])),
                      "recall": float(np.mean(row["found"]))})
    return {"split": split, "method": method, "scales": list(scales), "target": target, "views": list(views),
            "rows": table}


def routed_objects(source: WindowSource, scales, target: int):
    """Per image of ``source`` with a non-difficult object: ``(image id, boxes float32 [G, 4],
    labels [G], (H, W), scale factors float64 [S], the scale index each box is pooled at [G])``,
    routed as ``sppdet.ops.spp.choose_scales`` routes windows."""
    for image_id in source.image_ids:
        boxes, labels, difficult = source.ground_truth(image_id)
        keep = (labels > 0) & ~difficult
        boxes, labels = boxes[keep], labels[keep]
        if not len(boxes):
            continue
        annotation = source.dataset.annotation(image_id)
        hw = (annotation.height, annotation.width)
        factors = np.asarray(scale_factors(hw, scales), np.float64)
        yield image_id, boxes, labels, hw, factors, choose_scales(boxes, factors, target).numpy()


def _found(detections, image_id: str, boxes: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per object [G] bool: a detection of its class with score >= 0 at IoU >= 0.5."""
    index = detections.images.index(image_id) if image_id in detections.images else -1
    rows = np.flatnonzero((detections.image_index == index) & (detections.scores >= 0))
    if not len(rows):
        return np.zeros(len(boxes), bool)
    iou = iou_matrix(boxes, detections.boxes[rows].astype(np.float32))  # [G, N], continuous boxes
    same = labels[:, None] == detections.labels[rows][None, :]
    return ((iou >= 0.5) & same).any(axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="sppdet-work")
    parser.add_argument("--split", default=None, help="default: the val split sppdet train chose on")
    parser.add_argument("--method", default="spp", choices=["spp", "rcnn"],
                        help="rcnn: the R-CNN models (sppdet ... --method rcnn), objects filed by SPP's scale")
    parser.add_argument("--json", dest="json_path", default=None)
    args = parser.parse_args()
    work = WorkDir(args.workdir)
    split = args.split or work.config()["stages"][SELECTION_RECORD]["val_split"]
    result = scale_table(work, split, args.method)
    print(f"{args.method} on {split}: scales {result['scales']}, target {result['target']} px, "
          f"views {result['views'] or 'none'}")
    print(f"{'scale':>6} {'objects':>8} {'cells':>6} {'border':>7} {'top-1':>6} {'score':>6} {'recall':>7}")
    for row in result["rows"]:
        print(f"{row['scale']:>6} {row['objects']:>8} {row['cells']:>6.1f} {row['border']:>7.2f} "
              f"{row['top1']:>6.2f} {row['score']:>6.2f} {row['recall']:>7.2f}")
    if args.json_path:
        with open(args.json_path, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
