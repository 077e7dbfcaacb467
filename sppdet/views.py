"""Test-time views of an image: its mirror images and its half turn (``--tta``).

Boxes follow ``sppdet.boxes``. ``sppdet extract --tta hflip`` caches each view's conv features
beside the image's own (``sppdet.extract_stage``); ``eval`` / ``detect --tta hflip`` score every
window in the image and in each view, the window moved with the view, and average the SVM
scores and the box deltas over the views (``sppdet.detector``). The window itself stays where it
is, so NMS and everything after it are unchanged.

Views: "hflip" (left-right mirror, right for natural images, Fast R-CNN trains on it), "vflip"
(top-bottom) and "rot180" (both, a half turn): the latter two only for classes that keep their
identity upside down (the demo's shapes), as ``sppdet pretrain --augment rot90``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from sppdet.boxes import mirror_boxes
from sppdet.errors import ConfigError

#: view -> (mirrors x, mirrors y)
VIEWS = {"hflip": (True, False), "vflip": (False, True), "rot180": (True, True)}


def check_views(views: Sequence[str]) -> tuple[str, ...]:
    """``views`` without repeats, in their order; ``ConfigError`` naming unknown ones."""
    unknown = [v for v in views if v not in VIEWS]
    if unknown:
        raise ConfigError(f"--tta {','.join(unknown)}: choose from {', '.join(VIEWS)}")
    return tuple(dict.fromkeys(views))


def view_image(bgr: np.ndarray, view: str) -> np.ndarray:
    """``bgr`` ``[H, W, 3]`` as seen in ``view`` (a contiguous copy)."""
    mirror_x, mirror_y = VIEWS[view]
    return np.ascontiguousarray(bgr[::-1 if mirror_y else 1, ::-1 if mirror_x else 1])


def view_boxes(boxes: np.ndarray, image_hw: tuple[int, int], view: str) -> np.ndarray:
    """Boxes ``[N, 4]`` of an image of ``image_hw`` = (H, W), moved into ``view`` (each view is
    its own inverse)."""
    mirror_x, mirror_y = VIEWS[view]
    out = mirror_boxes(boxes, image_hw[1]) if mirror_x else np.asarray(boxes).reshape(-1, 4)
    if mirror_y:
        out = np.stack([out[:, 0], image_hw[0] - out[:, 3], out[:, 2], image_hw[0] - out[:, 1]], axis=1)
    return out.astype(out.dtype if np.issubdtype(out.dtype, np.floating) else np.float32)


def delta_signs(view: str) -> np.ndarray:
    """Per box delta (tx, ty, tw, th), the factor float32 ``[4]`` taking one predicted in ``view``
    back to the image: a box moved right in a left-right mirror image moves left in the image."""
    mirror_x, mirror_y = VIEWS[view]
    return np.array([-1.0 if mirror_x else 1.0, -1.0 if mirror_y else 1.0, 1.0, 1.0], np.float32)
