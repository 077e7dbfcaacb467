"""Pascal VOC detection AP, scored exactly as the official devkit (VOCevaldet.m), vectorised.

Shape shorthand: N detections, G ground-truth boxes, K classes, M images, P (detection, box)
pairs that share an image. Labels are 1..K (0 is background; ``classes[k - 1]`` has label k, as
in ``sppdet.data.voc``).

Rules (docs/algorithm.md section 11, VOCevaldet.m of the VOC2007-2012 devkits), applied per class:
- The detections of the whole split are sorted by decreasing score. The sort is stable: tied
  scores keep the row order of ``Detections`` (line order when read from results files), which
  is what the devkit's MATLAB ``sort`` does. (py-faster-rcnn's ``np.argsort`` is not stable.)
- A detection is matched to its single best-overlapping box of the class in its image (the first
  such box on a tie; a box it does not intersect is never matched). If IoU >= threshold (the
  devkit's ``>=``; py-faster-rcnn uses ``>``): a difficult box makes it neither TP nor FP; an
  unclaimed box makes it a TP and claims the box; a claimed box makes it a FP. Otherwise FP.
- npos counts the non-difficult boxes; recall = cumTP / npos, precision = cumTP / (cumTP + cumFP).
- ``voc07``: sum over t in MATLAB's ``0:0.1:1`` of (max precision at recall >= t, 0 if none) / 11,
  added in the devkit's order (so a perfect class scores 1.0000000000000002, as in the devkit).
  ``area`` (VOC2010+, VOCap.m): area under the monotone precision envelope (summed by numpy;
  MATLAB's ``sum`` may round the last bit differently).
Vectorisation: which box a detection matches does not depend on the ranking; only "claimed"
does, and a box is claimed by the highest-ranked detection that hits it. So TP = the first
occurrence of each box among the ranked hits (``np.unique(return_index=True)``). Pairs of a
detection with the boxes of its image are laid out flat (P rows) and reduced per detection with
``reduceat``; the stable sort is :func:`stable_descending`.

Edge cases and deviations:
- A class without non-difficult boxes has AP NaN (the devkit divides by zero) and is left out of
  mAP; a class with positives but no detections has AP 0.
- Where every detection so far was ignored (difficult), precision is 0 here and NaN in MATLAB.
  MATLAB's ``max`` skips NaN, so AP is the same, except when every detection of a class is
  ignored: the devkit's 07 AP is then NaN, ours 0.
- Boxes and scores are float64 here, not ``sppdet.structures.boxes``' float32, so that numbers read from
  results files are scored exactly as the devkit (MATLAB doubles) scores them; float32 converts
  exactly. Ground truth comes from the VOC reader, which clips boxes to the image (the devkit
  does not; official annotations lie inside the image anyway).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from sppdet.data.voc import Annotation, read_annotation, read_split
from sppdet.errors import ConfigError, DatasetError
from sppdet.parallel import Progress, no_progress

METRICS = ("voc07", "area")

#: MATLAB's ``0:0.1:1`` as the devkit's 07 loop sees it. The colon operator builds the first half
#: as a + k*d and the second half as b - (n-k)*d, so t[3] = 3*0.1 = 0.30000000000000004 (a recall
#: of exactly 0.3 does not reach it) while t[6], t[7] are the doubles nearest 0.6 and 0.7.
#: (py-faster-rcnn's ``np.arange(0, 1.1, 0.1)`` has 0.6000000000000001 and 0.7000000000000001.)
VOC07_THRESHOLDS = tuple(k * 0.1 if k < 5 else 1.0 - (10 - k) * 0.1 for k in range(11))


@dataclass(frozen=True)
class Detections:
    """Scored boxes over a split, one row per detection.

    ``images`` the M image ids; ``image_index`` int64 ``[N]`` into ``images``; ``boxes`` float64
    ``[N, 4]`` (x1, y1, x2, y2) in continuous 0-based pixels (``sppdet.structures.boxes``' convention in
    float64, see the module docstring); ``scores`` float64 ``[N]``; ``labels`` int64 ``[N]`` in
    1..K. Row order only matters between equal scores: the earlier row ranks first.
    """

    images: tuple[str, ...]
    image_index: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "images", tuple(self.images))
        object.__setattr__(self, "image_index", np.asarray(self.image_index, np.int64).reshape(-1))
        object.__setattr__(self, "boxes", np.asarray(self.boxes, np.float64).reshape(-1, 4))
        object.__setattr__(self, "scores", np.asarray(self.scores, np.float64).reshape(-1))
        object.__setattr__(self, "labels", np.asarray(self.labels, np.int64).reshape(-1))
        n = len(self.scores)
        if not len(self.image_index) == len(self.boxes) == len(self.labels) == n:
            raise ValueError("Detections: image_index, boxes, scores and labels differ in length")
        if n and (self.image_index.min() < 0 or self.image_index.max() >= len(self.images)):
            raise ValueError("Detections: image_index out of range of images")

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def from_images(cls, per_image: Mapping[str, tuple]) -> "Detections":
        """Detections from ``{image_id: (boxes [n, 4], scores [n], labels [n])}`` (any dtypes,
        boxes in ``sppdet.structures.boxes``' convention); rows keep the mapping's order."""
        images = tuple(per_image)
        parts = [tuple(np.asarray(a) for a in per_image[i]) for i in images]
        counts = [len(np.reshape(scores, -1)) for _, scores, _ in parts]
        return cls(
            images=images,
            image_index=np.repeat(np.arange(len(images), dtype=np.int64), counts),
            boxes=np.concatenate([np.reshape(b, (-1, 4)) for b, _, _ in parts] or [np.zeros((0, 4))]),
            scores=np.concatenate([np.reshape(s, -1) for _, s, _ in parts] or [np.zeros(0)]),
            labels=np.concatenate([np.reshape(k, -1) for _, _, k in parts] or [np.zeros(0)]),
        )


@dataclass(frozen=True)
class ClassResult:
    """One class: AP (NaN without positives), npos, ndet and the ranked PR curve: ``precision``
    and ``recall`` float64 ``[ndet]`` (recall NaN without positives)."""

    name: str
    ap: float
    npos: int
    ndet: int
    precision: np.ndarray
    recall: np.ndarray


@dataclass(frozen=True)
class EvalResult:
    """Per-class results in class order, the metric and the IoU threshold used."""

    metric: str
    iou_threshold: float
    classes: tuple[ClassResult, ...]

    @property
    def mAP(self) -> float:
        """Mean AP over the classes that have positives (NaN if none has)."""
        aps = [c.ap for c in self.classes if not math.isnan(c.ap)]
        return float(np.mean(aps)) if aps else math.nan

    def to_json(self, split: str) -> dict:
        """The summary ``{"metric", "iou", "split", "mAP", "classes": {name: {"ap", "npos",
        "ndet"}}}`` with NaN as ``None``."""
        def number(x: float) -> float | None:
            return None if math.isnan(x) else float(x)

        return {"metric": self.metric, "iou": float(self.iou_threshold), "split": split,
                "mAP": number(self.mAP),
                "classes": {c.name: {"ap": number(c.ap), "npos": int(c.npos), "ndet": int(c.ndet)}
                            for c in self.classes}}


def load_ground_truth(root: str | os.PathLike, split: str, progress: Progress | None = None,
                      split_dir: str | os.PathLike | None = None) -> list[Annotation]:
    """The annotations of a split, in split order (reads only XML; no image files needed);
    ``split_dir``: a work directory's own split files (``sppdet.data.voc.split_path``)."""
    progress = progress or no_progress
    annotations = []
    for image_id in read_split(root, split, split_dir):
        annotations.append(read_annotation(Path(root) / "Annotations" / f"{image_id}.xml"))
        progress(1)
    return annotations


def average_precision(recall, precision, metric: str = "voc07") -> float:
    """AP of one ranked PR curve: ``recall``, ``precision`` float ``[n]`` (no NaN).

    ``voc07``: devkit 2007 11-point rule, summed in the devkit's order; ``area``: VOCap.m.
    """
    rec = np.asarray(recall, np.float64).reshape(-1)
    prec = np.asarray(precision, np.float64).reshape(-1)
    if metric == "voc07":
        ap = 0.0
        for t in VOC07_THRESHOLDS:
            ap = ap + float(np.max(prec[rec >= t], initial=0.0)) / 11
        return ap
    if metric == "area":
        mrec = np.concatenate([[0.0], rec, [1.0]])
        mpre = np.maximum.accumulate(np.concatenate([[0.0], prec, [0.0]])[::-1])[::-1]
        change = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
        return float(np.sum((mrec[change] - mrec[change - 1]) * mpre[change]))
    raise ConfigError(f"metric {metric!r}: expected one of {', '.join(METRICS)}")


def devkit_iou(det_boxes: np.ndarray, gt_boxes: np.ndarray) -> np.ndarray:
    """IoU ``[P]`` of paired boxes ``[P, 4]`` (continuous x1, y1, x2, y2), float64; ``-inf``
    where the pair does not intersect (the devkit never matches such a box)."""
    # With (x1, y1, x2, y2) = (xmin - 1, ymin - 1, xmax, ymax), x2 - x1 = xmax - xmin + 1 and
    # min(x2) - max(x1) = min(xmax) - max(xmin) + 1: these are VOCevaldet's inclusive-pixel
    # widths, combined with the same operations in the same order, so IoU equals the devkit's.
    iw = np.minimum(det_boxes[:, 2], gt_boxes[:, 2]) - np.maximum(det_boxes[:, 0], gt_boxes[:, 0])
    ih = np.minimum(det_boxes[:, 3], gt_boxes[:, 3]) - np.maximum(det_boxes[:, 1], gt_boxes[:, 1])
    overlap = (iw > 0) & (ih > 0)
    inter = iw * ih
    union = ((det_boxes[:, 2] - det_boxes[:, 0]) * (det_boxes[:, 3] - det_boxes[:, 1])
             + (gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1]) - inter)
    iou = np.full(len(inter), -np.inf)
    np.divide(inter, union, out=iou, where=overlap)
    return iou


def stable_descending(scores: np.ndarray) -> np.ndarray:
    """Indices int64 ``[N]`` sorting ``scores`` ``[N]`` by decreasing value, ties in index order.

    Same as ``np.argsort(-scores, kind="stable")`` (MATLAB's stable ``sort``) but ~3x faster: an
    unstable SIMD argsort, then one sort of (tie group << 32 | index) keys orders each group of
    equal scores by index.
    """
    if len(scores) >= 1 << 32:
        return np.argsort(-scores, kind="stable")
    order = np.argsort(-scores)
    ranked = scores[order]
    group = np.concatenate([[0], np.cumsum(ranked[1:] != ranked[:-1])]).astype(np.uint64)
    keys = (group << np.uint64(32)) | order.astype(np.uint64)
    return (np.sort(keys) & np.uint64(0xFFFFFFFF)).astype(np.int64)


def best_match(det_image, det_boxes, gt_image, gt_boxes) -> tuple[np.ndarray, np.ndarray]:
    """Each detection's best-overlapping box of its image: IoU float64 ``[N]`` (``-inf`` if it
    intersects none) and box index int64 ``[N]`` (the first on a tie, 0 if none).

    ``det_image`` int64 ``[N]``, ``det_boxes`` ``[N, 4]``; ``gt_image`` int64 ``[G]`` sorted
    ascending, ``gt_boxes`` ``[G, 4]``; boxes continuous (x1, y1, x2, y2).
    """
    n = len(det_image)
    best_iou, best_gt = np.full(n, -np.inf), np.zeros(n, np.int64)
    n_images = int(max(det_image.max(initial=-1), gt_image.max(initial=-1))) + 1
    per_image = np.bincount(gt_image, minlength=n_images)
    image_start = np.cumsum(per_image) - per_image
    # P pairs: detection d (with candidates) against gt rows image_start .. + per_image - 1.
    dets = np.flatnonzero(per_image[det_image])
    if len(dets) == 0:
        return best_iou, best_gt
    counts = per_image[det_image[dets]]
    pair_start = np.cumsum(counts) - counts
    total = int(pair_start[-1] + counts[-1])
    pair_gt = np.arange(total) - np.repeat(pair_start - image_start[det_image[dets]], counts)
    iou = devkit_iou(np.repeat(det_boxes[dets], counts, axis=0), gt_boxes[pair_gt])
    best_iou[dets] = np.maximum.reduceat(iou, pair_start)
    is_best = iou == np.repeat(best_iou[dets], counts)
    best_gt[dets] = pair_gt[np.minimum.reduceat(np.where(is_best, np.arange(total), total), pair_start)]
    return best_iou, best_gt


def match_class(det_image, det_boxes, det_scores, gt_image, gt_boxes, gt_difficult,
                iou_threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Ranked TP and FP flags (bool ``[N]``, in decreasing score order) for one class.

    Detections: ``det_image`` int64 ``[N]``, ``det_boxes`` float64 ``[N, 4]``, ``det_scores``
    ``[N]``. Boxes of the class: ``gt_image`` int64 ``[G]`` sorted ascending, ``gt_boxes``
    ``[G, 4]``, ``gt_difficult`` bool ``[G]``. Ignored detections are neither TP nor FP.
    """
    best_iou, best_gt = best_match(det_image, det_boxes, gt_image, gt_boxes)
    order = stable_descending(np.asarray(det_scores, np.float64))
    best_iou, best_gt = best_iou[order], best_gt[order]
    hit = best_iou >= iou_threshold
    ignored = hit & gt_difficult[best_gt] if len(gt_difficult) else np.zeros(len(hit), bool)
    claims = np.flatnonzero(hit & ~ignored)
    tp = np.zeros(len(hit), bool)
    tp[claims[np.unique(best_gt[claims], return_index=True)[1]]] = True
    fp = ~hit | (hit & ~ignored & ~tp)
    return tp, fp


def image_rows(detections: Detections, image_ids: Sequence[str]) -> np.ndarray:
    """Index into ``image_ids`` of each detection row; ``DatasetError`` for an unknown image."""
    position = {image_id: i for i, image_id in enumerate(image_ids)}
    used = np.flatnonzero(np.bincount(detections.image_index, minlength=len(detections.images)))
    lookup = np.full(len(detections.images), -1, np.int64)
    for i in used:
        name = detections.images[i]
        if name not in position:
            raise DatasetError(f"detections for image {name!r}, which is not in the evaluated "
                               f"split ({len(image_ids)} images); evaluate on its split")
        lookup[i] = position[name]
    return lookup[detections.image_index]


def scorable(ground_truth, detections: "Detections", classes: Sequence[str]) -> list[Annotation]:
    """The annotations of ``ground_truth`` (a ``VocDataset`` or annotations) as a list, after
    checking that ``detections`` can be scored against K = ``len(classes)`` classes: labels in
    1..K, finite boxes and scores (``DatasetError`` otherwise). Shared by every metric."""
    annotations = list(ground_truth.annotations() if hasattr(ground_truth, "annotations") else ground_truth)
    k = len(classes)
    if len(detections) and (detections.labels.min() < 1 or detections.labels.max() > k):
        raise DatasetError(f"detection labels must lie in 1..{k} (one per class); "
                           f"got {detections.labels.min()}..{detections.labels.max()}")
    if not np.isfinite(detections.boxes).all() or not np.isfinite(detections.scores).all():
        raise DatasetError("detections contain a non-finite box coordinate or score")
    return annotations


def evaluate(ground_truth: Iterable[Annotation], detections: Detections, classes: Sequence[str],
             metric: str = "voc07", iou_threshold: float = 0.5) -> EvalResult:
    """VOC AP per class of ``detections`` against ``ground_truth`` (a ``VocDataset`` or
    annotations; one per image of the split). ``classes[k - 1]`` is the name of label k."""
    if metric not in METRICS:
        raise ConfigError(f"metric {metric!r}: expected one of {', '.join(METRICS)}")
    if not 0.0 <= iou_threshold <= 1.0:
        raise ConfigError(f"IoU threshold {iou_threshold}: expected a number in [0, 1]")
    annotations = scorable(ground_truth, detections, classes)
    k = len(classes)
    det_image = image_rows(detections, [a.image_id for a in annotations])

    gt_label = np.concatenate([a.labels(classes) for a in annotations] or [np.zeros(0, np.int64)])
    gt_image = np.repeat(np.arange(len(annotations)), [len(a.names) for a in annotations])
    gt_boxes = np.concatenate([a.boxes for a in annotations] or [np.zeros((0, 4))]).astype(np.float64)
    gt_difficult = np.concatenate([a.difficult for a in annotations] or [np.zeros(0, bool)])

    # uint16 keys get numpy's linear-time radix sort (labels were checked to lie in 1..K)
    det_order = np.argsort(detections.labels.astype(np.uint16 if k < 1 << 16 else np.int64),
                           kind="stable")
    det_bounds = np.searchsorted(detections.labels[det_order], np.arange(1, k + 2))
    gt_order = np.argsort(gt_label, kind="stable")  # keeps image order within a class
    gt_bounds = np.searchsorted(gt_label[gt_order], np.arange(1, k + 2))

    results = []
    for c, name in enumerate(classes):
        d = det_order[det_bounds[c]:det_bounds[c + 1]]
        g = gt_order[gt_bounds[c]:gt_bounds[c + 1]]
        npos = int((~gt_difficult[g]).sum())
        tp, fp = match_class(det_image[d], detections.boxes[d], detections.scores[d],
                             gt_image[g], gt_boxes[g], gt_difficult[g], iou_threshold)
        tp_sum = np.cumsum(tp, dtype=np.float64)
        decided = tp_sum + np.cumsum(fp, dtype=np.float64)
        precision = np.divide(tp_sum, decided, out=np.zeros(len(d)), where=decided > 0)
        recall = tp_sum / npos if npos else np.full(len(d), math.nan)
        ap = math.nan if npos == 0 else average_precision(recall, precision, metric)
        results.append(ClassResult(name, ap, npos, len(d), precision, recall))
    return EvalResult(metric, float(iou_threshold), tuple(results))
