"""Random training windows for ``sppdet pretrain --windows random``: no proposals needed.

Shape shorthand: G ground-truth boxes, N windows. Boxes follow ``sppdet.structures.boxes``.

Why: ``pretrain`` normally learns from selective-search proposals (``sppdet propose``), which cost
~0.2 s per image. A separate, larger pretraining set (the paper pretrains on ImageNet, then
detects on VOC) would spend most of its time on proposals it uses only to find background and
near-object windows. Random boxes give the background, jittered copies of each ground-truth box
give the near-object windows, and ``sppdet.training.pretrain.pretrain_windows`` labels them exactly as it
labels proposals (IoU >= fg_iou: the object's class; < bg_iou to every object: background).

On the synth demo random windows trained a better trunk than proposals (docs/decisions.md), so
the demo and ``sppdet train`` use them. The default of ``sppdet pretrain`` stays "proposals", the
pipeline's own windows (docs/algorithm.md section 1), until a second dataset confirms the gain:
random background boxes are easier negatives than proposals that hug clutter.

Part windows (``parts``, ``PretrainConfig.parts_per_object``): on the demo many false positives
of the triangle SVM are corners of larger shapes, which random boxes seldom show as background.
Parts helped on the demo together with the SVMs' extra positives (docs/decisions.md). Default 0;
the demo and ``sppdet train`` use 8.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from sppdet.data.voc import VocDataset

#: Random boxes per image: background candidates (most miss every object).
RANDOM_BOXES = 300
#: Jittered copies of each ground-truth box: candidates for its near-object crops.
JITTERS_PER_OBJECT = 16
#: Jitter of each box edge, as a fraction of the box's width (x edges) or height (y edges).
JITTER_STD = 0.12
#: Smallest random box side in pixels (the demo's smallest annotated objects are ~12 px).
MIN_SIDE = 12.0
#: Sides of the boxes drawn inside each ground-truth box (``PretrainConfig.parts_per_object``), as
#: fractions of the box's sides: most have IoU < 0.3 with it, so they are background crops showing
#: part of an object (a corner of a large triangle looks like a small one). Random boxes rarely
#: fall there; proposals, which hug segments, do.
PART_SIDES = (0.2, 0.55)


def random_windows(gt_boxes: np.ndarray, width: int, height: int, rng: np.random.Generator,
                   count: int = RANDOM_BOXES, jitters: int = JITTERS_PER_OBJECT,
                   parts: int = 0) -> np.ndarray:
    """Candidate windows float32 ``[N, 4]`` inside a ``width`` x ``height`` image.

    ``count`` random boxes (side log-uniform from ``MIN_SIDE`` to 0.9 x the shorter image side,
    aspect ratio log-uniform in [1/2, 2], placed uniformly inside the image), then ``jitters``
    copies of each of the G ``gt_boxes`` ``[G, 4]`` with every edge moved by a normal draw of
    ``JITTER_STD`` x the box's size, clipped to the image; copies thinner than 2 px are dropped;
    then ``parts`` boxes inside each ground-truth box (each side a uniform ``PART_SIDES`` fraction
    of the box's, placed uniformly inside it).
    """
    gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
    longest = max(0.9 * min(width, height), MIN_SIDE)
    side = np.exp(rng.uniform(np.log(MIN_SIDE), np.log(longest), count))
    aspect = np.exp(rng.uniform(np.log(0.5), np.log(2.0), count))
    box_w = np.minimum(side * np.sqrt(aspect), width)
    box_h = np.minimum(side / np.sqrt(aspect), height)
    x1 = rng.uniform(0, 1, count) * (width - box_w)
    y1 = rng.uniform(0, 1, count) * (height - box_h)
    boxes = [np.stack([x1, y1, x1 + box_w, y1 + box_h], axis=1)]
    if len(gt_boxes) and jitters:
        copies = np.repeat(gt_boxes, jitters, axis=0)
        box_w, box_h = copies[:, 2] - copies[:, 0], copies[:, 3] - copies[:, 1]
        scale = np.stack([box_w, box_h, box_w, box_h], axis=1)
        copies = copies + rng.normal(0.0, JITTER_STD, copies.shape) * scale
        copies[:, [0, 2]] = copies[:, [0, 2]].clip(0, width)
        copies[:, [1, 3]] = copies[:, [1, 3]].clip(0, height)
        keep = (copies[:, 2] - copies[:, 0] >= 2) & (copies[:, 3] - copies[:, 1] >= 2)
        boxes.append(copies[keep])
    if len(gt_boxes) and parts:
        owners = np.repeat(gt_boxes, parts, axis=0)
        size = np.stack([owners[:, 2] - owners[:, 0], owners[:, 3] - owners[:, 1]], axis=1)
        part = size * rng.uniform(*PART_SIDES, size.shape)
        corner = owners[:, :2] + rng.uniform(0, 1, size.shape) * (size - part)
        boxes.append(np.concatenate([corner, corner + part], axis=1))
    return np.concatenate(boxes).astype(np.float32)


def random_window_source(dataset: VocDataset, seed: int, parts: int = 0) -> Callable[[str], np.ndarray]:
    """image id -> :func:`random_windows` of that image (``parts`` boxes inside each object), drawn
    from ``default_rng([seed, image index])``: the same windows every epoch and every run, like a
    proposals file."""
    index = {image_id: position for position, image_id in enumerate(dataset.image_ids)}

    def windows(image_id: str) -> np.ndarray:
        annotation = dataset.annotation(image_id)
        rng = np.random.default_rng([seed, index[image_id]])
        return random_windows(annotation.boxes, annotation.width, annotation.height, rng, parts=parts)

    return windows
