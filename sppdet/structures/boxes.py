"""Boxes: the one convention every sppdet module uses, plus IoU, NMS, clipping and deltas.

Convention (stated here once; everything else points here):
    A set of N boxes is a float32 array ``[N, 4]`` of ``(x1, y1, x2, y2)`` in pixels of the
    original image, in continuous coordinates: the image spans ``[0, W] x [0, H]`` and pixel
    ``(i, j)`` covers ``[i, i+1) x [j, j+1)``. A valid box has ``x1 < x2`` and ``y1 < y2``; its
    width is ``x2 - x1`` (no "+1").

    VOC's 1-based inclusive integer boxes ``(xmin, ymin, xmax, ymax)`` map to
    ``(xmin - 1, ymin - 1, xmax, ymax)``. That conversion happens only in
    ``sppdet.data.voc`` (reader and writer) and the VOC results writer of ``sppdet.evaluation.voc_ap``.
    IoU of the converted boxes equals the devkit's "+1" IoU of the originals.

Functions take and return numpy arrays; NMS runs on torchvision.ops (suppresses a box whose IoU
with a higher-scored kept box is strictly greater than the threshold).
"""

from __future__ import annotations

import numpy as np
import torch
import torchvision.ops

#: Clamp for log-space size deltas before exp(): exp(4.135) ~ 1000/16, as in Detectron's
#: BBOX_XFORM_CLIP, so one wild regressor output cannot overflow a box.
DELTA_CLAMP = float(np.log(1000.0 / 16))


def as_boxes(boxes) -> np.ndarray:
    """``boxes`` as a float32 ``[N, 4]`` array (an empty input gives shape ``[0, 4]``)."""
    array = np.asarray(boxes, dtype=np.float32)
    return array.reshape(-1, 4)


def area(boxes) -> np.ndarray:
    """Areas ``[N]`` of boxes ``[N, 4]`` (x1, y1, x2, y2); degenerate boxes have area 0."""
    b = as_boxes(boxes)
    return np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)


def iou_matrix(boxes_a, boxes_b) -> np.ndarray:
    """IoU ``[N, M]`` between boxes ``[N, 4]`` and ``[M, 4]`` (x1, y1, x2, y2), float32.

    Pairs whose union is empty have IoU 0.
    """
    a, b = as_boxes(boxes_a), as_boxes(boxes_b)
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), dtype=np.float32)
    left_top = np.maximum(a[:, None, :2], b[None, :, :2])
    right_bottom = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(right_bottom - left_top, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area(a)[:, None] + area(b)[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    return iou.astype(np.float32)


def nms(boxes, scores, iou_threshold: float) -> np.ndarray:
    """Indices (int64, by decreasing score) of boxes ``[N, 4]`` kept by greedy NMS.

    A box is dropped when its IoU with an already kept, higher-scored box is > ``iou_threshold``.
    """
    b = torch.from_numpy(as_boxes(boxes))
    s = torch.from_numpy(np.asarray(scores, dtype=np.float32).reshape(-1))
    return torchvision.ops.nms(b, s, float(iou_threshold)).numpy()


def batched_nms(boxes, scores, labels, iou_threshold: float) -> np.ndarray:
    """Per-class NMS: like :func:`nms`, but boxes only suppress boxes with the same label ``[N]``."""
    b = torch.from_numpy(as_boxes(boxes))
    s = torch.from_numpy(np.asarray(scores, dtype=np.float32).reshape(-1))
    idx = torch.from_numpy(np.asarray(labels, dtype=np.int64).reshape(-1))
    return torchvision.ops.batched_nms(b, s, idx, float(iou_threshold)).numpy()


def clip(boxes, height: float, width: float) -> np.ndarray:
    """Boxes ``[N, 4]`` clipped to the image ``[0, width] x [0, height]`` (a new array)."""
    b = as_boxes(boxes).copy()
    b[:, 0::2] = np.clip(b[:, 0::2], 0, width)
    b[:, 1::2] = np.clip(b[:, 1::2], 0, height)
    return b


def mirror_boxes(boxes, width: float) -> np.ndarray:
    """``boxes`` ``[N, 4]`` of an image ``width`` pixels wide, moved to its left-right mirror
    image (``image[:, ::-1]``): x1' = width - x2, x2' = width - x1. Float inputs keep their dtype
    (others become float32)."""
    b = np.asarray(boxes)
    b = (b if np.issubdtype(b.dtype, np.floating) else b.astype(np.float32)).reshape(-1, 4)
    return np.stack([width - b[:, 2], b[:, 1], width - b[:, 0], b[:, 3]], axis=1).astype(b.dtype)


def valid(boxes, min_size: float = 0.0) -> np.ndarray:
    """Boolean mask ``[N]`` of boxes at least ``min_size`` wide and high, and non-empty."""
    b = as_boxes(boxes)
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    return (w > 0) & (h > 0) & (w >= min_size) & (h >= min_size)


def _centres_sizes(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    return boxes[:, 0] + 0.5 * w, boxes[:, 1] + 0.5 * h, w, h


def encode_deltas(proposals, targets) -> np.ndarray:
    """R-CNN regression targets ``[N, 4]`` (tx, ty, tw, th) taking ``proposals`` to ``targets``.

    Both ``[N, 4]`` (x1, y1, x2, y2) with positive sizes. docs/algorithm.md section 9:
    tx = (gx - px) / pw, ty = (gy - py) / ph, tw = log(gw / pw), th = log(gh / ph),
    with (x, y) the box centre. Inverse of :func:`decode_deltas`.
    """
    p, g = as_boxes(proposals).astype(np.float64), as_boxes(targets).astype(np.float64)
    px, py, pw, ph = _centres_sizes(p)
    gx, gy, gw, gh = _centres_sizes(g)
    deltas = np.stack([(gx - px) / pw, (gy - py) / ph, np.log(gw / pw), np.log(gh / ph)], axis=1)
    return deltas.astype(np.float32)


def decode_deltas(proposals, deltas) -> np.ndarray:
    """Boxes ``[N, 4]`` (x1, y1, x2, y2) from ``proposals`` ``[N, 4]`` moved by ``deltas`` ``[N, 4]``.

    Inverse of :func:`encode_deltas`; tw/th are clamped to ``DELTA_CLAMP`` before ``exp``.
    The result is not clipped to the image: call :func:`clip`.
    """
    p = as_boxes(proposals).astype(np.float64)
    d = np.asarray(deltas, dtype=np.float64).reshape(-1, 4)
    px, py, pw, ph = _centres_sizes(p)
    cx = px + d[:, 0] * pw
    cy = py + d[:, 1] * ph
    w = pw * np.exp(np.minimum(d[:, 2], DELTA_CLAMP))
    h = ph * np.exp(np.minimum(d[:, 3], DELTA_CLAMP))
    out = np.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=1)
    return out.astype(np.float32)
