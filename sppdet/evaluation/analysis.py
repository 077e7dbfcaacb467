"""Error analysis of detections on a split: which errors a detector makes, not only how much AP they cost.

Shape shorthand: K classes (label k names ``classes[k - 1]``), M images (annotation order), N detections,
G ground-truth objects of the K classes (objects with other names are left out, as ``voc_ap`` leaves them
out), D confident detections. Boxes are continuous (x1, y1, x2, y2) float64 pixels and IoU is
``voc_ap.devkit_iou`` (equal to the devkit's "+1" IoU of the original VOC boxes); ``t`` is the IoU threshold.

Ranking: each class's detections ranked as the devkit ranks them (decreasing score, ties in row order)
with the devkit's flags (``voc_ap.match_class``): TP, FP, or ignored (neither) when the detection's best
same-class object at IoU >= t is difficult.

Confident detections (confusion matrix, worst images): per class, its r top-ranked detections, where r
maximises F1 = 2 TP / (TP + FP + npos) over the ranking (the first maximum; r = 0 when the class never
has a TP, or has no positives). Why: one score threshold for all classes assumes scores comparable across
classes, and per-class SVM scores are not; the best-F1 point balances misses against false alarms, is the
operating point a user would pick from the class's PR curve, and needs no setting. ``score_threshold``
instead makes every detection scoring >= it confident (for calibrated scores). A class's reported
threshold is the lowest confident score (equal scores below the cut stay out: the ranking is by rows).

Confusion matrix, int64 ``[K + 2, K + 1]``: rows are ground-truth classes 1..K, then ``duplicate`` and
``background`` (detections that found no object); columns are detected classes 1..K, then ``missed``.
Two passes over the confident detections:
    1. same class (the devkit's rule): each TP counts its object at [g, g];
    2. other class: each remaining FP, in decreasing score order over all classes (ties in row order),
       takes its best-IoU object of another class if IoU >= t: a difficult one makes the detection
       ignored; a non-difficult one found by neither pass so far counts at [g, d] (a confusion).
Then every non-difficult object found by neither pass counts at [g, missed], and every FP left over at
[duplicate, d] when it has IoU >= t with an object that another detection found, else at [background, d]
(so poorly localised detections, IoU < t, land in ``background``; the breakdown below tells them apart).
Ignored detections and difficult objects are counted nowhere: row g sums to npos of class g, column d
to class d's confident detections that are not ignored.

False-positive breakdown (Hoiem, Chodpathumwan and Dai 2012, "Diagnosing error in object detectors", the
analysis of the R-CNN paper's figure 6): per class, among its top-ranked N decided (TP or FP)
detections, N = npos (the ranks a perfect detector fills with TPs, so each FP there displaces one), each
FP is exactly one of, in this order:
    duplicate      IoU >= t with its best same-class object, which a higher-ranked detection claimed
    localisation   best same-class IoU in [0.1, t)
    confusion      IoU >= 0.1 with an object of another class
    background     anything else
Hoiem et al. count duplicates as localisation errors; they are reported apart here. IoU is taken
against objects of any difficulty (only the TP / FP / ignored decision follows the difficult rule).

Worst images: an image's errors are its off-diagonal confusion-matrix entries: objects missed, objects
found only as another class, duplicate and background detections (a confusion counts once, for its
object). Images are ranked by errors, ties in split order; images without errors are never listed.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from sppdet.data.voc import Annotation
from sppdet.errors import ConfigError
from sppdet.evaluation.voc_ap import Detections, devkit_iou, image_rows, match_class, scorable, stable_descending
from sppdet.fileio import atomic_write_text

#: outcomes of a confident detection (``ErrorAnalysis.detection_outcome``)
OUTCOMES = ("correct", "confusion", "duplicate", "background", "ignored")
CORRECT, CONFUSION, DUPLICATE, BACKGROUND, IGNORED = range(len(OUTCOMES))
#: outcomes of a ground-truth object (``ErrorAnalysis.object_outcome``)
OBJECT_OUTCOMES = ("found", "confused", "missed", "difficult")
FOUND, CONFUSED, MISSED, DIFFICULT = range(len(OBJECT_OUTCOMES))
#: false-positive types of the breakdown, in ``FalsePositives.counts`` order
FP_TYPES = ("localisation", "duplicate", "confusion", "background")
#: error kinds counted per image, in ``ErrorAnalysis.image_counts`` column order
IMAGE_ERRORS = ("missed", "confused", "duplicate", "background")
#: IoU from which a false positive touches an object (Hoiem et al.)
TOUCH_IOU = 0.1


@dataclass(frozen=True)
class FalsePositives:
    """One class's top-ranked detections: ``considered`` decided detections (npos, or fewer when the class
    has fewer), ``true_positives`` of them TP and the rest FP, counted per type in ``counts`` (int64
    ``[4]``, :data:`FP_TYPES` order)."""

    name: str
    npos: int
    considered: int
    true_positives: int
    counts: np.ndarray

    def to_json(self) -> dict:
        return {"considered": self.considered, "true_positives": self.true_positives,
                **{kind: int(n) for kind, n in zip(FP_TYPES, self.counts)}}


@dataclass(frozen=True)
class ErrorAnalysis:
    """The analysis of one split (see the module docstring for every rule).

    Per class: ``npos`` int64 ``[K]``; ``thresholds`` float64 ``[K]`` (lowest confident score, ``inf``
    when none is confident); ``f1`` float64 ``[K]`` at the confident cut (NaN without positives);
    ``false_positives`` one :class:`FalsePositives` each. ``confusion`` int64 ``[K + 2, K + 1]``.
    Confident detections in decreasing score order (ties in row order): ``detection_rows`` int64 ``[D]``
    into the ``Detections``, ``detection_image`` int64 ``[D]`` into ``image_ids``, ``detection_boxes``
    ``[D, 4]``, ``detection_scores`` ``[D]``, ``detection_labels`` ``[D]`` (1..K),
    ``detection_outcome`` int64 ``[D]`` (:data:`OUTCOMES`). Objects in annotation order:
    ``object_image`` ``[G]``, ``object_boxes`` ``[G, 4]``, ``object_labels`` ``[G]``, ``object_outcome``
    ``[G]`` (:data:`OBJECT_OUTCOMES`), ``object_detected_as`` ``[G]`` (the label a confused object was
    detected as, else 0). ``image_counts`` int64 ``[M, 4]`` errors per image (:data:`IMAGE_ERRORS`).
    """

    classes: tuple[str, ...]
    image_ids: tuple[str, ...]
    iou_threshold: float
    score_threshold: float | None
    npos: np.ndarray
    thresholds: np.ndarray
    f1: np.ndarray
    confusion: np.ndarray
    false_positives: tuple[FalsePositives, ...]
    detection_rows: np.ndarray
    detection_image: np.ndarray
    detection_boxes: np.ndarray
    detection_scores: np.ndarray
    detection_labels: np.ndarray
    detection_outcome: np.ndarray
    object_image: np.ndarray
    object_boxes: np.ndarray
    object_labels: np.ndarray
    object_outcome: np.ndarray
    object_detected_as: np.ndarray
    image_counts: np.ndarray

    @property
    def row_names(self) -> tuple[str, ...]:
        """Names of the confusion matrix's K + 2 rows."""
        return (*self.classes, "duplicate", "background")

    @property
    def column_names(self) -> tuple[str, ...]:
        """Names of the confusion matrix's K + 1 columns."""
        return (*self.classes, "missed")

    @property
    def image_errors(self) -> np.ndarray:
        """int64 ``[M]``: errors per image (the sum of ``image_counts``' columns)."""
        return self.image_counts.sum(axis=1)

    def worst_images(self, top: int) -> np.ndarray:
        """Indices int64 (at most ``top``) into ``image_ids`` of the images with most errors, most
        first, ties in split order; images without errors are left out."""
        errors = self.image_errors
        order = stable_descending(errors.astype(np.float64))
        return order[errors[order] > 0][:max(0, top)]

    def to_json(self, top: int) -> dict:
        """Plain JSON values: settings, per class numbers, the confusion matrix and the ``top`` worst images."""
        rule = ("best F1 per class" if self.score_threshold is None else f"score >= {self.score_threshold!r}")
        classes = {}
        for k, name in enumerate(self.classes):
            threshold = float(self.thresholds[k])
            classes[name] = {
                "npos": int(self.npos[k]),
                "confident": int(np.sum(self.detection_labels == k + 1)),
                "score_threshold": threshold if math.isfinite(threshold) else None,
                "f1": None if math.isnan(self.f1[k]) else float(self.f1[k]),
                "false_positives": self.false_positives[k].to_json(),
            }
        worst = [{"image_id": self.image_ids[m], "errors": int(self.image_errors[m]),
                  **{kind: int(n) for kind, n in zip(IMAGE_ERRORS, self.image_counts[m])}}
                 for m in self.worst_images(top).tolist()]
        return {"iou": self.iou_threshold, "confident": rule, "fp_types": list(FP_TYPES), "classes": classes,
                "confusion_matrix": {"rows": list(self.row_names), "columns": list(self.column_names),
                                     "counts": self.confusion.tolist()},
                "worst_images": worst}


def _segment_best(values: np.ndarray, starts: np.ndarray, counts: np.ndarray,
                  candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per segment (``values[starts[i] : starts[i] + counts[i]]``, all counts > 0): the maximum and the
    first ``candidates`` entry reaching it (-1 where the maximum is ``-inf``)."""
    best = np.maximum.reduceat(values, starts)
    total = len(values)
    is_best = (values == np.repeat(best, counts)) & (values > -np.inf)
    first = np.minimum.reduceat(np.where(is_best, np.arange(total), total), starts)
    index = np.full(len(starts), -1, np.int64)
    found = first < total
    index[found] = candidates[first[found]]
    return best, index


def class_matches(det_image, det_boxes, det_labels, gt_image, gt_boxes, gt_labels):
    """Each detection's best-IoU object of its own class and of any other class, in its image.

    Detections: ``det_image`` int64 ``[N]``, ``det_boxes`` ``[N, 4]``, ``det_labels`` ``[N]``; objects:
    ``gt_image`` int64 ``[G]`` sorted ascending, ``gt_boxes`` ``[G, 4]``, ``gt_labels`` ``[G]``. Returns
    ``(same_iou, same_object, other_iou, other_object)``, each ``[N]``: IoU float64 (``-inf`` when the
    detection intersects no such object) and object index int64 (the first on a tie, -1 when none).
    """
    det_image = np.asarray(det_image, np.int64)
    n = len(det_image)
    same_iou, other_iou = np.full(n, -np.inf), np.full(n, -np.inf)
    same_object, other_object = np.full(n, -1, np.int64), np.full(n, -1, np.int64)
    n_images = int(max(det_image.max(initial=-1), np.max(gt_image, initial=-1))) + 1
    per_image = np.bincount(np.asarray(gt_image, np.int64), minlength=n_images)
    image_start = np.cumsum(per_image) - per_image
    dets = np.flatnonzero(per_image[det_image])  # P pairs: each of these against its image's objects
    if len(dets) == 0:
        return same_iou, same_object, other_iou, other_object
    counts = per_image[det_image[dets]]
    starts = np.cumsum(counts) - counts
    pair_det = np.repeat(dets, counts)
    pair_gt = np.arange(int(counts.sum())) - np.repeat(starts - image_start[det_image[dets]], counts)
    iou = devkit_iou(np.asarray(det_boxes, np.float64)[pair_det], np.asarray(gt_boxes, np.float64)[pair_gt])
    same = np.asarray(gt_labels)[pair_gt] == np.asarray(det_labels)[pair_det]
    same_iou[dets], same_object[dets] = _segment_best(np.where(same, iou, -np.inf), starts, counts, pair_gt)
    other_iou[dets], other_object[dets] = _segment_best(np.where(same, -np.inf, iou), starts, counts, pair_gt)
    return same_iou, same_object, other_iou, other_object


def _confident_count(tp: np.ndarray, fp: np.ndarray, ranked_scores: np.ndarray, npos: int,
                     score_threshold: float | None) -> tuple[int, float]:
    """(r, F1 at r) for one class's ranking (module docstring); F1 is NaN without positives."""
    cum_tp = np.cumsum(tp)
    f1 = 2.0 * cum_tp / (cum_tp + np.cumsum(fp) + npos) if npos else np.full(len(tp), math.nan)
    if score_threshold is not None:
        r = int(np.sum(ranked_scores >= score_threshold))
    elif npos and len(tp) and f1.max() > 0:
        r = int(np.argmax(f1)) + 1
    else:
        r = 0
    return r, (float(f1[r - 1]) if r else (0.0 if npos else math.nan))


def _objects(annotations: Sequence[Annotation], classes: Sequence[str]):
    """(image int64 [G], boxes float64 [G, 4], labels int64 [G], difficult bool [G]) in annotation
    order, objects of the K classes only."""
    labels = np.concatenate([a.labels(classes) for a in annotations] or [np.zeros(0, np.int64)])
    image = np.repeat(np.arange(len(annotations)), [len(a.names) for a in annotations])
    boxes = np.concatenate([a.boxes for a in annotations] or [np.zeros((0, 4))]).astype(np.float64)
    difficult = np.concatenate([a.difficult for a in annotations] or [np.zeros(0, bool)]).astype(bool)
    keep = labels >= 1
    return image[keep].astype(np.int64), boxes[keep].reshape(-1, 4), labels[keep], difficult[keep]


def _class_prefix(c: int, detections: Detections, det_image, gt_image, gt_boxes, gt_labels, gt_difficult,
                  npos: int, iou_threshold: float, score_threshold: float | None):
    """Class ``c``'s ranked detections as far as the analysis needs them (its confident ones and its
    top N decided ones): rows int64, TP, FP, confident and top-N flags, all bool ``[n]``; then the
    class's score threshold (``inf`` when nothing is confident) and F1 at the confident cut."""
    rows = np.flatnonzero(detections.labels == c)
    objects = np.flatnonzero(gt_labels == c)
    tp, fp = match_class(det_image[rows], detections.boxes[rows], detections.scores[rows],
                         gt_image[objects], gt_boxes[objects], gt_difficult[objects], iou_threshold)
    ranked = rows[stable_descending(detections.scores[rows])]
    r, f1 = _confident_count(tp, fp, detections.scores[ranked], npos, score_threshold)
    decided = np.cumsum(tp | fp)
    n_top = min(int(np.searchsorted(decided, npos)) + 1, len(ranked)) if npos else 0
    cut = max(r, n_top)
    position = np.arange(cut)
    threshold = float(detections.scores[ranked[r - 1]]) if r else math.inf
    return ranked[:cut], tp[:cut], fp[:cut], position < r, position < n_top, threshold, f1


def analyze_errors(ground_truth: Iterable[Annotation], detections: Detections, classes: Sequence[str],
                   iou_threshold: float = 0.5, score_threshold: float | None = None) -> ErrorAnalysis:
    """Confusion matrix, false-positive breakdown and per-image errors of ``detections`` against
    ``ground_truth`` (a ``VocDataset`` or annotations, one per image of the split); rules in the
    module docstring. ``classes[k - 1]`` names label k; ``score_threshold`` None picks each class's
    best-F1 cut, a number makes every detection scoring >= it confident."""
    if not 0.0 <= iou_threshold <= 1.0:
        raise ConfigError(f"IoU threshold {iou_threshold}: expected a number in [0, 1]")
    if score_threshold is not None and not math.isfinite(score_threshold):
        raise ConfigError(f"score threshold {score_threshold}: expected a finite number")
    k = len(classes)
    if k == 0:
        raise ConfigError("no classes to analyse; pass the dataset's class list")
    annotations = scorable(ground_truth, detections, classes)  # what evaluate refuses, refused here too
    det_image = image_rows(detections, [a.image_id for a in annotations])
    gt_image, gt_boxes, gt_labels, gt_difficult = _objects(annotations, classes)

    npos = np.array([int(np.sum((gt_labels == c) & ~gt_difficult)) for c in range(1, k + 1)], np.int64)
    thresholds, f1 = np.full(k, np.inf), np.full(k, math.nan)
    parts = []
    for c in range(1, k + 1):
        *part, thresholds[c - 1], f1[c - 1] = _class_prefix(
            c, detections, det_image, gt_image, gt_boxes, gt_labels, gt_difficult, int(npos[c - 1]),
            iou_threshold, score_threshold)
        parts.append(part)
    rows, tp, fp, confident, top = (np.concatenate(arrays) for arrays in zip(*parts))
    labels = detections.labels[rows]
    same_iou, same_object, other_iou, other_object = class_matches(
        det_image[rows], detections.boxes[rows], labels, gt_image, gt_boxes, gt_labels)

    false_positives = _false_positive_breakdown(classes, npos, labels, tp, fp, top, same_iou, other_iou,
                                                iou_threshold)

    # the confident detections in decreasing score order over all classes, ties in row order
    pick = np.flatnonzero(confident)
    pick = pick[np.argsort(rows[pick], kind="stable")]
    pick = pick[stable_descending(detections.scores[rows[pick]])]
    outcome, object_outcome, detected_as = _confusion_passes(
        tp[pick], fp[pick], same_iou[pick], same_object[pick], other_iou[pick], other_object[pick],
        labels[pick], gt_difficult, iou_threshold)

    d_rows, d_labels = rows[pick], labels[pick]
    confusion = _confusion_matrix(k, gt_labels, object_outcome, detected_as, d_labels, outcome)
    image_counts = np.stack([
        np.bincount(gt_image[object_outcome == MISSED], minlength=len(annotations)),
        np.bincount(gt_image[object_outcome == CONFUSED], minlength=len(annotations)),
        np.bincount(det_image[d_rows[outcome == DUPLICATE]], minlength=len(annotations)),
        np.bincount(det_image[d_rows[outcome == BACKGROUND]], minlength=len(annotations)),
    ], axis=1).astype(np.int64).reshape(len(annotations), len(IMAGE_ERRORS))
    return ErrorAnalysis(
        classes=tuple(classes), image_ids=tuple(a.image_id for a in annotations),
        iou_threshold=float(iou_threshold), score_threshold=score_threshold, npos=npos,
        thresholds=thresholds, f1=f1, confusion=confusion, false_positives=false_positives,
        detection_rows=d_rows, detection_image=det_image[d_rows], detection_boxes=detections.boxes[d_rows],
        detection_scores=detections.scores[d_rows], detection_labels=d_labels, detection_outcome=outcome,
        object_image=gt_image, object_boxes=gt_boxes, object_labels=gt_labels, object_outcome=object_outcome,
        object_detected_as=detected_as, image_counts=image_counts)


def _false_positive_breakdown(classes, npos, labels, tp, fp, top, same_iou, other_iou,
                              iou_threshold) -> tuple[FalsePositives, ...]:
    """One :class:`FalsePositives` per class from the flags of its top-N detections (module docstring)."""
    kind = np.select([same_iou >= iou_threshold, same_iou >= TOUCH_IOU, other_iou >= TOUCH_IOU],
                     [FP_TYPES.index("duplicate"), FP_TYPES.index("localisation"), FP_TYPES.index("confusion")],
                     FP_TYPES.index("background"))
    k, n_types = len(classes), len(FP_TYPES)
    counted = top & fp
    counts = np.bincount((labels[counted] - 1) * n_types + kind[counted], minlength=k * n_types)
    counts = counts.reshape(k, n_types).astype(np.int64)
    true_positives = np.bincount(labels[top & tp] - 1, minlength=k)
    return tuple(FalsePositives(name, int(npos[c]), int(true_positives[c] + counts[c].sum()),
                                int(true_positives[c]), counts[c]) for c, name in enumerate(classes))


def _confusion_passes(tp, fp, same_iou, same_object, other_iou, other_object, labels, gt_difficult,
                      iou_threshold):
    """Outcome of each confident detection ``[D]`` (given in the pass-2 order), outcome of each object
    ``[G]`` and the label each confused object was detected as ``[G]`` (module docstring, two passes)."""
    object_outcome = np.where(gt_difficult, DIFFICULT, MISSED).astype(np.int64)
    object_outcome[same_object[tp]] = FOUND  # pass 1: the devkit's TPs
    outcome = np.where(tp, CORRECT, IGNORED).astype(np.int64)  # neither TP nor FP: a difficult object
    reaches = fp & (other_iou >= iou_threshold)  # pass 2: FPs on an object of another class
    target = other_object[reaches]
    on_difficult, free = np.zeros(len(tp), bool), np.zeros(len(tp), bool)
    on_difficult[reaches] = gt_difficult[target]
    free[reaches] = ~gt_difficult[target] & (object_outcome[target] == MISSED)
    claims = np.flatnonzero(free)
    claims = claims[np.unique(other_object[claims], return_index=True)[1]]  # the first in order claims it
    object_outcome[other_object[claims]] = CONFUSED
    detected_as = np.zeros(len(gt_difficult), np.int64)
    detected_as[other_object[claims]] = labels[claims]
    left = fp & ~on_difficult
    overlaps = (same_iou >= iou_threshold) | (other_iou >= iou_threshold)
    outcome[left] = np.where(overlaps[left], DUPLICATE, BACKGROUND)
    outcome[claims] = CONFUSION
    return outcome, object_outcome, detected_as


def _confusion_matrix(k, gt_labels, object_outcome, detected_as, det_labels, outcome) -> np.ndarray:
    """int64 ``[K + 2, K + 1]`` from the object and detection outcomes (module docstring)."""
    counted = object_outcome != DIFFICULT
    column = np.select([object_outcome == FOUND, object_outcome == CONFUSED],
                       [gt_labels - 1, detected_as - 1], k)
    rows = [gt_labels[counted] - 1]
    columns = [column[counted]]
    for row, kind in ((k, DUPLICATE), (k + 1, BACKGROUND)):
        rows.append(np.full(int(np.sum(outcome == kind)), row))
        columns.append(det_labels[outcome == kind] - 1)
    flat = np.concatenate(rows) * (k + 1) + np.concatenate(columns)
    return np.bincount(flat.astype(np.int64), minlength=(k + 2) * (k + 1)).reshape(k + 2, k + 1).astype(np.int64)


def confusion_csv(analysis: ErrorAnalysis) -> str:
    """The confusion matrix as CSV text: a header of detected classes and ``missed``, one row per
    ground-truth class then ``duplicate`` and ``background``, each starting with its name."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["ground truth \\ detected", *analysis.column_names])
    for name, counts in zip(analysis.row_names, analysis.confusion.tolist()):
        writer.writerow([name, *counts])
    return buffer.getvalue()


def write_analysis_files(folder: str | os.PathLike, analysis: ErrorAnalysis, top: int) -> list[Path]:
    """Write ``analysis.json`` (:meth:`ErrorAnalysis.to_json`) and ``confusion_matrix.csv`` into
    ``folder`` atomically; returns their paths."""
    folder = Path(folder)
    json_path, csv_path = folder / "analysis.json", folder / "confusion_matrix.csv"
    atomic_write_text(json_path, json.dumps(analysis.to_json(top), indent=2, allow_nan=False) + "\n")
    atomic_write_text(csv_path, confusion_csv(analysis))
    return [json_path, csv_path]
