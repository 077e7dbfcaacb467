"""Flips and quarter turns of images and boxes; the test-time views of an image (``--tta``).

Boxes follow ``sppdet.structures.boxes``. ``sppdet extract --tta hflip`` caches each view's conv features
beside the image's own (``sppdet.stages.extract``); ``eval`` / ``detect --tta hflip`` score every
window in the image and in each view, the window moved with the view, and average the SVM
scores and the box deltas over the views (``sppdet.models.detector``). The window itself stays where it
is, so NMS and everything after it are unchanged.

Views: "hflip" (left-right mirror, right for natural images, Fast R-CNN trains on it), "vflip"
(top-bottom) and "rot180" (both, a half turn): the latter two only for classes that keep their
identity upside down (the demo's shapes), as ``sppdet pretrain --augment rot90``. Each view is a
:func:`transform_image` (the one ``sppdet.models.object_copies`` turns objects with).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from sppdet.ops.spp import LEVELS, TARGET, pool_windows
from sppdet.structures.boxes import mirror_boxes
from sppdet.errors import ConfigError

#: view -> (quarter turns, left-right flip first) as :func:`transform_image` applies them
VIEWS = {"hflip": (0, True), "vflip": (2, True), "rot180": (2, False)}


def check_views(views: Sequence[str]) -> tuple[str, ...]:
    """``views`` without repeats, in their order; ``ConfigError`` naming unknown ones."""
    unknown = [v for v in views if v not in VIEWS]
    if unknown:
        raise ConfigError(f"--tta {','.join(unknown)}: choose from {', '.join(VIEWS)}")
    return tuple(dict.fromkeys(views))


def transform_image(image: np.ndarray, turns: int, flip: bool) -> np.ndarray:
    """``image`` ``[H, W, ...]`` flipped left-right (if ``flip``), then turned ``turns`` quarter
    turns counter-clockwise (``np.rot90``)."""
    if flip:
        image = image[:, ::-1]
    return np.ascontiguousarray(np.rot90(image, turns))


def transform_boxes(boxes: np.ndarray, hw: tuple[int, int], turns: int, flip: bool) -> np.ndarray:
    """Boxes float ``[R, 4]`` of an ``hw = (H, W)`` image, moved with :func:`transform_image`."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    height, width = hw
    if flip:
        b = mirror_boxes(b, width)
    for _ in range(turns % 4):  # a counter-clockwise turn maps (x, y) to (y, W - x); W becomes H
        b = np.stack([b[:, 1], width - b[:, 2], b[:, 3], width - b[:, 0]], axis=1)
        height, width = width, height
    return b


def view_image(bgr: np.ndarray, view: str) -> np.ndarray:
    """``bgr`` ``[H, W, 3]`` as seen in ``view`` (a contiguous copy)."""
    return transform_image(bgr, *VIEWS[view])


def view_boxes(boxes: np.ndarray, image_hw: tuple[int, int], view: str) -> np.ndarray:
    """Boxes float64 ``[N, 4]`` of an image of ``image_hw`` = (H, W), moved into ``view`` (each
    view is its own inverse)."""
    return transform_boxes(boxes, image_hw, *VIEWS[view])


def pool_view_windows(maps: Sequence, scale_factors, image_hw: tuple[int, int], boxes: np.ndarray,
                      view: str | None, stride: float, offset: float, levels: Sequence[int] = LEVELS,
                      target: float = TARGET, device: str | torch.device = "cpu") -> torch.Tensor:
    """Pooled windows float32 ``[R, D]`` of ``boxes`` float ``[R, 4]`` (x1, y1, x2, y2, pixels of the
    original image of ``image_hw``) as seen in ``view`` of the image, from that view's feature maps
    and scale factors (``view`` None: the image's own). The one rule training's val scores and
    ``sppdet detect`` both pool test-time views by: each box moved into the view, then
    ``sppdet.ops.spp.pool_windows``."""
    windows = view_boxes(boxes, image_hw, view) if view else boxes
    return pool_windows(maps, scale_factors, windows, stride, offset, levels, target=target, device=device)


def delta_signs(view: str) -> np.ndarray:
    """Per box delta (tx, ty, tw, th), the factor float32 ``[4]`` taking one predicted in ``view``
    back to the image: a box moved right in a left-right mirror image moves left in the image."""
    turns, flip = VIEWS[view]
    mirror_x, mirror_y = flip != (turns == 2), turns == 2  # the views turn by 0 or 2 quarters
    return np.array([-1.0 if mirror_x else 1.0, -1.0 if mirror_y else 1.0, 1.0, 1.0], np.float32)
