"""COCO detection metrics of sppdet detections: AP@[.50:.95], AP50, AP75, AP and AR by object size.

Library: pycocotools, the reference COCOeval that published COCO numbers come from; its cp311
manylinux wheel needs only numpy (faster-coco-eval is faster, but a re-implementation, and speed
does not matter at VOC's size). It is optional (``pip install 'sppdet[coco]'``) and imported only
when scoring; :func:`require_coco` says how to install it.

Everything stays in memory: the split's annotations and the ``Detections`` become COCO dicts by
``sppdet.evaluation.results_io`` (``coco_ground_truth``, ``coco_results``: integer image ids,
boxes (x1, y1, x2 - x1, y2 - y1) in continuous pixels, so COCO's IoU of them equals the devkit's,
and a difficult box becomes ``iscrowd`` 1), then go through ``COCOeval(iouType="bbox")``.

How COCO's rules differ from VOC's (``sppdet.evaluation.voc_ap``), so the numbers are not
comparable with VOC mAP even at IoU 0.5:
- AP is the mean over IoU thresholds .50:.05:.95 of the precision envelope sampled at 101 recall
  points 0:.01:1 (VOC07: 11 points; VOC2010+ ``area``: the exact area under the envelope).
- A detection is matched to the best-IoU box that no higher-scored detection matched yet; VOC
  matches it to its best box and counts a FP if that box is taken.
- Difficult boxes are crowd boxes: detections matched to them are ignored, as in VOC, but a
  crowd box is only matched when no ordinary box is, by intersection over the detection's area.
- Only the 100 highest-scored detections per image and class count (``maxDets``; VOC: all).
- Object size (small < 32², medium < 96² <= large pixels of box area) selects the boxes for
  AP/AR by size; a value with no box in its range is NaN (pycocotools' -1).
"""

from __future__ import annotations

import contextlib
import io
import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from sppdet.data.voc import Annotation
from sppdet.errors import DatasetError, SppdetError
from sppdet.evaluation.results_io import coco_ground_truth, coco_image_ids, coco_images, coco_results
from sppdet.evaluation.voc_ap import Detections, scorable

COCO_METRIC = "coco"
INSTALL_HINT = "pip install 'sppdet[coco]'"

#: COCOeval.stats in its order: AP over IoU .50:.95 / at .50 / at .75 / by size, then AR with
#: at most 1, 10, 100 detections per image and AR by size (100 detections).
STAT_NAMES = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
              "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large")


class CocoUnavailable(SppdetError):
    """The optional COCO evaluation library is not installed."""


def require_coco():
    """``pycocotools``' (COCO, COCOeval) classes; ``CocoUnavailable`` with the install line if absent."""
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise CocoUnavailable(f"--metric coco needs pycocotools: {INSTALL_HINT}") from None
    return COCO, COCOeval


@dataclass(frozen=True)
class CocoClassResult:
    """One class: AP over IoU .50:.95, AP50 and AP75 (all boxes, 100 detections per image; NaN
    without positives), npos its non-difficult boxes and ndet its detections (before maxDets)."""

    name: str
    ap: float
    ap50: float
    ap75: float
    npos: int
    ndet: int


@dataclass(frozen=True)
class CocoResult:
    """``stats``: the 12 COCO summary numbers by name (:data:`STAT_NAMES`, NaN where
    undefined); ``classes``: per-class AP in class order."""

    stats: dict[str, float]
    classes: tuple[CocoClassResult, ...]

    def to_json(self, split: str) -> dict:
        """``{"metric": "coco", "split", "stats": {name: value}, "classes": {name: {"ap", "ap50",
        "ap75", "npos", "ndet"}}}`` with NaN as ``None``."""
        def number(x: float) -> float | None:
            return None if math.isnan(x) else float(x)

        return {"metric": COCO_METRIC, "split": split,
                "stats": {k: number(v) for k, v in self.stats.items()},
                "classes": {c.name: {"ap": number(c.ap), "ap50": number(c.ap50), "ap75": number(c.ap75),
                                     "npos": c.npos, "ndet": c.ndet} for c in self.classes}}


def _coco_api(coco_cls, data: dict):
    """A pycocotools ``COCO`` over the dict ``data`` (no file; its index built quietly)."""
    api = coco_cls()
    api.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        api.createIndex()
    return api


def _mean_valid(precision: np.ndarray) -> float:
    """pycocotools' summary rule: mean of the entries > -1 (-1 marks "no boxes"), else NaN."""
    valid = precision[precision > -1]
    return float(valid.mean()) if valid.size else math.nan


def evaluate_coco(ground_truth: Iterable[Annotation], detections: Detections,
                  classes: Sequence[str]) -> CocoResult:
    """COCO metrics of ``detections`` against ``ground_truth`` (a ``VocDataset`` or its
    annotations, one per image of the split; boxes (x1, y1, x2, y2) continuous pixels).
    ``classes[k - 1]`` names label k. ``DatasetError`` for detections it cannot score."""
    coco_cls, eval_cls = require_coco()
    annotations = scorable(ground_truth, detections, classes)
    if not annotations:
        raise DatasetError("the split has no images to score")
    k = len(classes)
    images = coco_images(annotations)
    truth = coco_ground_truth(images, classes, annotations)
    results = coco_results(detections, classes, coco_image_ids(image.name for image in images))
    for i, entry in enumerate(results, start=1):  # what COCO.loadRes adds to each result
        w, h = entry["bbox"][2:]
        entry.update(id=i, area=w * h, iscrowd=0)
    dt = dict(truth, annotations=results)
    evaluator = eval_cls(_coco_api(coco_cls, truth), _coco_api(coco_cls, dt), iouType="bbox")
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = {name: (math.nan if v < 0 else float(v)) for name, v in zip(STAT_NAMES, evaluator.stats)}

    precision = evaluator.eval["precision"]  # [T IoU thresholds, R recalls, K, A areas, M maxDets]
    thresholds = evaluator.params.iouThrs
    at50, at75 = (int(np.argmin(np.abs(thresholds - t))) for t in (0.5, 0.75))
    npos = np.zeros(k + 1, np.int64)
    for a in annotations:
        labels = a.labels(classes)
        np.add.at(npos, labels[(labels > 0) & ~np.asarray(a.difficult, bool)], 1)
    ndet = np.bincount(detections.labels, minlength=k + 1)
    per_class = tuple(
        CocoClassResult(name, _mean_valid(precision[:, :, c, 0, -1]), _mean_valid(precision[at50, :, c, 0, -1]),
                        _mean_valid(precision[at75, :, c, 0, -1]), int(npos[c + 1]), int(ndet[c + 1]))
        for c, name in enumerate(classes))
    return CocoResult(stats, per_class)
