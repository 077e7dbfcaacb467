"""A trained SPP-net detector: pooled windows in, scored and refined boxes out (docs/algorithm.md section 10).

Shape shorthand: R windows (proposals) of one image, D pooled dimension, K classes, N detections.
Boxes follow ``sppdet.structures.boxes``.

Per image: every window is scored by every class's SVM (on fc7 of the fine-tuned head, or on
pool5, whichever the SVMs were trained on); windows scoring below ``score_threshold`` are dropped;
each remaining (window, class) pair is moved by that class's box regressor (when trained), clipped
to the image, and per-class NMS at IoU 0.3 keeps at most ``top_k`` boxes per class. Everything is
one matrix product per model and one batched NMS: no Python loop over windows or classes.

The detector is built from models in memory; ``sppdet.workdir.trained`` loads the ones a work
directory trained (``load_detector``) and runs them over a split from its caches (``detect_split``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from sppdet.models.bbox_reg import BboxRegressor
from sppdet.structures.boxes import batched_nms, clip, decode_deltas
from sppdet.config import DetectConfig
from sppdet.models.head import FcHead
from sppdet.models.svm import SvmModel
from sppdet.models.svm import svm_features
from sppdet.ops.views import delta_signs


@dataclass
class Detector:
    """SVMs (+ the fc head when they read fc7) and optional box regressors, with test settings."""

    classes: tuple[str, ...]
    svms: SvmModel
    head: FcHead | None
    regressors: BboxRegressor | None
    config: DetectConfig = DetectConfig()
    layer: str = "pool5"  # what the SVMs read (sppdet.models.svm.svm_features): pool5, fc7 or pool5+fc7
    #: computes fc7 of ``head`` in its place, e.g. once per kept window (``WindowSource.fc7_function``)
    fc7_of: Callable[[np.ndarray], np.ndarray] | None = None

    def score(self, pooled: np.ndarray) -> np.ndarray:
        """SVM scores float32 [R, K] of pooled windows [R, D]."""
        return self.svms.scores(svm_features(self.layer, pooled, self.head, self.fc7_weight, self.fc7_of))

    @property
    def fc7_weight(self) -> float:
        """The fc7 part's factor for layer "pool5+fc7", saved with the SVMs (1 otherwise)."""
        return float(self.svms.metadata.get("fc7_weight", 1.0))

    def detect(self, pooled: np.ndarray, windows: np.ndarray, image_hw: tuple[int, int],
               views: Sequence[tuple[str, np.ndarray]] = ()):
        """Detections of one image: (boxes float32 [N, 4], scores float32 [N], labels int64 [N]
        in 1..K), sorted by decreasing score, from pooled [R, D] of ``windows`` [R, 4].

        ``views`` (test-time augmentation, ``DetectConfig.tta``): (view name, pooled [R, D]) of
        the same windows seen in views of the image (``sppdet.ops.views``). Each window's SVM scores
        and box deltas are then the mean over the image and its views, each view's deltas turned
        back by ``delta_signs``; a window stays where it is, so NMS and everything after it are
        unchanged. Each view raised the demo's mAP (docs/decisions.md); which views suit a dataset
        is chosen on its validation split (``sppdet.pipelines.selection``).
        """
        scores = self.score(pooled)
        for _, seen in views:
            scores = scores + self.score(seen)
        scores = scores / (1 + len(views))
        rows, cols = np.nonzero(scores >= self.config.score_threshold)
        boxes = windows[rows]
        if self.regressors is not None and len(rows):
            used = np.unique(rows)
            deltas = self.regressors.deltas_all_classes(pooled[used])
            for view, seen in views:
                deltas = deltas + self.regressors.deltas_all_classes(seen[used]) * delta_signs(view)
            deltas = deltas / (1 + len(views))
            position = np.searchsorted(used, rows)
            boxes = decode_deltas(boxes, deltas[position, cols])
        boxes = clip(boxes, *image_hw)
        labels = cols.astype(np.int64) + 1
        kept_scores = scores[rows, cols]
        keep = batched_nms(boxes, kept_scores, labels, self.config.nms)  # by decreasing score
        keep = keep[_rank_within_label(labels[keep]) < self.config.top_k]
        return boxes[keep], kept_scores[keep], labels[keep]


def _rank_within_label(labels: np.ndarray) -> np.ndarray:
    """For labels [N] listed in decreasing score, each row's 0-based rank among its own label."""
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    run_start = np.repeat(starts, np.diff(np.r_[starts, len(labels)]))
    ranks = np.empty(len(labels), np.int64)
    ranks[order] = np.arange(len(labels)) - run_start
    return ranks


