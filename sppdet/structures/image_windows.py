"""Training windows of one image: pooled features of ground-truth boxes and proposals.

Shape shorthand: R windows in one image, G ground-truth boxes, P proposals, K classes (labels 1..K;
0 is background), D feature length (fc7 width, or C * sum(n^2) for pool5). Boxes follow
``sppdet.structures.boxes``: float32 ``[n, 4]`` (x1, y1, x2, y2), continuous 0-based pixels.

:class:`ImageWindows` is what ``sppdet.models.svm`` and ``sppdet.models.bbox_reg`` consume, one image at a time;
:class:`WindowSource` (in ``sppdet.workdir.window_source``) builds them from the work directory's caches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

from sppdet.structures.boxes import as_boxes, iou_matrix
from sppdet.errors import ModelError


@dataclass(frozen=True, eq=False)
class ImageWindows:
    """One image's training windows: ground-truth rows first, then proposals.

    ``features`` float32 ``[R, D]``; ``boxes`` float32 ``[R, 4]``; ``gt_labels`` int64 ``[R]``
    (1..K for ground-truth rows, 0 for proposals); ``overlaps`` float32 ``[R, K]`` (max IoU of each
    row with the class's ground-truth boxes, difficult ones included); ``gt_boxes`` float32
    ``[G, 4]`` and ``gt_classes`` int64 ``[G]``: every ground-truth box of a known class.
    """

    features: np.ndarray
    boxes: np.ndarray
    gt_labels: np.ndarray
    overlaps: np.ndarray
    gt_boxes: np.ndarray
    gt_classes: np.ndarray


def make_image_windows(features, gt_boxes, gt_labels, proposal_boxes, num_classes: int,
                       difficult=None, use_difficult: bool = True) -> ImageWindows:
    """Build :class:`ImageWindows` from pooled features of ground-truth boxes then proposals.

    ``features`` ``[G + P, D]`` (rows for ``gt_boxes`` ``[G, 4]`` in order, then for
    ``proposal_boxes`` ``[P, 4]``); ``gt_labels`` int ``[G]`` in 1..K, or -1 for a class outside
    the model (row and box ignored); ``difficult`` bool ``[G]``. Without ``use_difficult``,
    difficult boxes lose their rows but still shape ``overlaps``.
    """
    gt_boxes, proposal_boxes = as_boxes(gt_boxes), as_boxes(proposal_boxes)
    gt_labels = np.asarray(gt_labels, dtype=np.int64).reshape(-1)
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2 or len(features) != len(gt_boxes) + len(proposal_boxes):
        raise ValueError(f"features {features.shape}: need one row per box "
                         f"({len(gt_boxes)} ground truth + {len(proposal_boxes)} proposals)")
    if len(gt_labels) != len(gt_boxes) or np.any(gt_labels > num_classes) or np.any(gt_labels == 0):
        raise ValueError(f"gt_labels must be [G] in 1..{num_classes} (or -1), got {gt_labels}")
    difficult = (np.zeros(len(gt_boxes), bool) if difficult is None
                 else np.asarray(difficult, dtype=bool).reshape(-1))
    known = gt_labels > 0
    keep_gt = known & (use_difficult | ~difficult)
    keep = np.concatenate([keep_gt, np.ones(len(proposal_boxes), bool)])
    boxes = np.concatenate([gt_boxes, proposal_boxes])[keep]
    iou = iou_matrix(boxes, gt_boxes[known])
    one_hot = gt_labels[known, None] == np.arange(1, num_classes + 1)[None, :]
    overlaps = np.where(one_hot[None], iou[:, :, None], 0.0).max(axis=1, initial=0.0)
    labels = np.concatenate([gt_labels[keep_gt], np.zeros(len(proposal_boxes), np.int64)])
    return ImageWindows(features[keep], boxes, labels, overlaps.astype(np.float32),
                        gt_boxes[known], gt_labels[known])


def estimate_feature_scale(feature_batches: Iterable[np.ndarray], target_norm: float = 20.0) -> float:
    """``target_norm / mean L2 norm`` over the rows of the given ``[n, D]`` arrays (R-CNN: 20)."""
    norms = [np.linalg.norm(np.asarray(f, dtype=np.float64).reshape(len(f), -1), axis=1)
             for f in feature_batches]
    mean = float(np.concatenate(norms).mean()) if norms and sum(map(len, norms)) else 0.0
    if not mean > 0:
        raise ModelError("cannot scale features to a mean norm: they are all zero (or there are "
                         "none); check the extract and finetune stages")
    return target_norm / mean


def extra_positive_boxes(gt_boxes, gt_labels, difficult, proposals, min_iou: float, per_object: int,
                         rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Proposals that may join the positives: boxes float32 ``[E, 4]``, labels int64 ``[E]``.

    Each proposal ``[P, 4]`` goes to the ground-truth box ``[G, 4]`` it overlaps most; of those
    with IoU >= ``min_iou`` to a non-difficult box of a known class (``gt_labels`` 1..K), at most
    ``per_object`` per box are drawn at random (``rng``), labelled with that box's class.
    """
    gt_boxes, proposals = as_boxes(gt_boxes), as_boxes(proposals)
    gt_labels = np.asarray(gt_labels, np.int64).reshape(-1)
    usable = (gt_labels > 0) & ~np.asarray(difficult, bool).reshape(-1)
    if not usable.any() or not len(proposals) or per_object < 1:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
    overlaps = iou_matrix(proposals, gt_boxes)
    owner = overlaps.argmax(1)
    close = (overlaps.max(1) >= min_iou) & usable[owner]
    rows = np.flatnonzero(close)[rng.permutation(int(close.sum()))]  # random order within owners
    rank = np.zeros(len(rows), np.int64)
    for box in np.unique(owner[rows]):  # a loop over objects, not windows
        mine = owner[rows] == box
        rank[mine] = np.arange(int(mine.sum()))
    chosen = np.sort(rows[rank < per_object])
    return proposals[chosen], gt_labels[owner[chosen]]


def collect_positives(images: Iterable[ImageWindows]) -> tuple[np.ndarray, np.ndarray]:
    """The ground-truth rows of every image: features float32 ``[P, D]``, labels int64 ``[P]``.

    This is R-CNN's first pass; its windows need no proposals (``make_image_windows`` with an
    empty ``proposal_boxes``), so only the G ground-truth boxes per image need pooling.
    """
    feats, labels = [], []
    for windows in images:
        gt = windows.gt_labels > 0
        feats.append(windows.features[gt])
        labels.append(windows.gt_labels[gt])
    if not feats:
        raise ModelError("no images to collect positives from; check the split")
    return np.concatenate(feats).astype(np.float32), np.concatenate(labels).astype(np.int64)
