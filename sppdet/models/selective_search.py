"""Selective search proposals for one image, and the recall of a set of proposals.

Shape shorthand: H, W image height and width; N proposals; G ground-truth boxes; T thresholds.
Boxes follow ``sppdet.structures.boxes`` (float32 ``[N, 4]`` continuous (x1, y1, x2, y2) original pixels).

How the search runs (docs/algorithm.md section 1). OpenCV's ``cv2.ximgproc.segmentation`` does the work. Its
``switchToSelectiveSearchFast`` / ``...Quality`` set up a list of colour images, a list of graph
segmentations (Felzenszwalb, sigma 0.8, k = base_k + i * inc_k) and a list of grouping strategies,
and ``process()`` runs every strategy on every (colour image, k) pair. We build the same lists
and call ``process()`` once per (colour image, k) pair, a "group": the union of the groups' boxes
is exactly OpenCV's output (tested against ``switchToSelectiveSearchFast``), and we learn how
many groups found each box. Details needed for that equality: sigma is passed as float32 0.8, as
OpenCV's ``float`` argument rounds it, and the two strategies of a group share their fill,
texture and size sub-strategies, as in OpenCV.

Deviation in quality mode: OpenCV's ``switchToSelectiveSearchQuality`` means to add the hue
channel but, because ``cv::split`` later reuses the same buffer, searches the blue channel
instead. We use hue, as Uijlings et al. (HSV, Lab, rgI, H, I) intend.

Order and cap. OpenCV orders boxes by ``rand() * hierarchy level`` with C ``rand()``: neither
seedable nor thread-safe, so its order (not its set of boxes) changes between runs, and a cap on
it would keep different boxes each time. Our order is deterministic: first by votes (how many
groups produced the box, most first: boxes that several colour spaces and thresholds agree on),
then by a fixed pseudo-random hash of the box (an unbiased, reproducible stand-in for OpenCV's
``rand()``), then by coordinates. ``max_proposals`` keeps the first N. On the demo dataset a
tight cap keeps more objects in this order than in OpenCV's own, and as many from 100 boxes up;
tried stand-ins for OpenCV's ``rand() * level`` did no better (docs/decisions.md).

Other choices: an image whose longer side exceeds ``max_side`` is shrunk (``INTER_AREA``) for the
search and its boxes are scaled back per axis; boxes narrower or shorter than ``min_size``
original pixels are dropped (R-CNN's ``FilterBoxesWidth``, 20 px); OpenCV's Rect (x, y, w, h)
covers pixels x .. x+w-1, i.e. the continuous box (x, y, x+w, y+h). The graph-segmentation k
values are OpenCV's defaults (fast: 150, 300, 450; quality: up to 750), not the original's
smaller {50, 100, 150, 300} (docs/algorithm.md section 1): on the demo's images the smaller k gave
more boxes and a lower recall (docs/decisions.md).
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from sppdet.structures.boxes import as_boxes, clip, iou_matrix, valid
from sppdet.config import PROPOSAL_MODES, ProposeConfig
from sppdet.data.images import to_bgr8
from sppdet.errors import ConfigError

MODES = PROPOSAL_MODES
#: OpenCV's defaults for both modes: k = BASE_K + i * INC_K, i < GROUP_KS[mode]; sigma 0.8.
BASE_K = 150
INC_K = 150
GROUP_KS = {"fast": 3, "quality": 5}
SIGMA = float(np.float32(0.8))  # as OpenCV's float parameter stores it

_segmentation = cv2.ximgproc.segmentation


def check_config(config: ProposeConfig) -> None:
    """Raise ``ConfigError`` naming the option if a ``ProposeConfig`` field is out of range."""
    if config.mode not in MODES:
        raise ConfigError(f"--mode {config.mode!r}: expected one of {', '.join(MODES)}")
    if config.max_proposals < 1:
        raise ConfigError(f"--max-proposals {config.max_proposals}: need at least 1")
    if config.min_size < 0:
        raise ConfigError(f"--min-size {config.min_size}: need 0 or more pixels")
    if config.max_side < 16:
        raise ConfigError(f"--max-side {config.max_side}: need at least 16 pixels")


def _colour_images(bgr: np.ndarray, mode: str) -> list[np.ndarray]:
    """The images OpenCV's fast (HSV, Lab) or quality (+ gray, hue, rgI) mode segments."""
    hsv = cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV)
    images = [hsv, cv2.cvtColor(bgr, cv2.COLOR_BGR2Lab)]
    if mode == "quality":
        gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
        rg_i = cv2.merge([bgr[:, :, 2], bgr[:, :, 1], gray])
        images += [gray, np.ascontiguousarray(hsv[:, :, 0]), rg_i]
    return images


def _strategies(mode: str) -> list:
    """OpenCV's grouping strategies: colour+fill+texture+size and fill+texture+size (sharing their
    sub-strategies, as OpenCV does); quality mode adds fill alone and size alone."""
    fill = _segmentation.createSelectiveSearchSegmentationStrategyFill()
    texture = _segmentation.createSelectiveSearchSegmentationStrategyTexture()
    size = _segmentation.createSelectiveSearchSegmentationStrategySize()
    colour = _segmentation.createSelectiveSearchSegmentationStrategyColor()
    multiple = _segmentation.createSelectiveSearchSegmentationStrategyMultiple
    strategies = [multiple(colour, fill, texture, size), multiple(fill, texture, size)]
    if mode == "quality":
        strategies += [_segmentation.createSelectiveSearchSegmentationStrategyFill(),
                       _segmentation.createSelectiveSearchSegmentationStrategySize()]
    return strategies


def search_groups(bgr: np.ndarray, mode: str = "fast") -> list[np.ndarray]:
    """Raw selective search of a uint8 BGR image ``[H, W, 3]``, one result per group.

    Returns one int32 ``[n, 4]`` array of OpenCV Rects ``(x, y, w, h)`` per (colour image, k)
    pair, in a fixed order; their union is what OpenCV's ``switchToSelectiveSearch<Mode>`` gives.
    """
    groups = []
    for image in _colour_images(bgr, mode):
        for step in range(GROUP_KS[mode]):
            search = _segmentation.createSelectiveSearchSegmentation()
            search.addImage(image)
            search.addGraphSegmentation(
                _segmentation.createGraphSegmentation(SIGMA, float(BASE_K + step * INC_K)))
            for strategy in _strategies(mode):
                search.addStrategy(strategy)
            groups.append(np.asarray(search.process(), dtype=np.int32).reshape(-1, 4))
    return groups


def _scramble(rects: np.ndarray) -> np.ndarray:
    """A fixed pseudo-random uint64 per int rect ``[n, 4]`` (splitmix64 of the packed values)."""
    r = rects.astype(np.uint64)
    key = (r[:, 0] << np.uint64(48)) ^ (r[:, 1] << np.uint64(32)) ^ (r[:, 2] << np.uint64(16)) ^ r[:, 3]
    with np.errstate(over="ignore"):
        key = key + np.uint64(0x9E3779B97F4A7C15)
        key = (key ^ (key >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        key = (key ^ (key >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return key ^ (key >> np.uint64(31))


def selective_search(image: np.ndarray, config: ProposeConfig = ProposeConfig()) -> np.ndarray:
    """Proposals ``[N, 4]`` float32 (x1, y1, x2, y2) in pixels of ``image``, N <= max_proposals.

    ``image``: ``[H, W]``, ``[H, W, 1]``, ``[H, W, 3]`` BGR or ``[H, W, 4]`` BGRA, 8- or 16-bit
    (converted by ``sppdet.data.images.to_bgr8``). Boxes lie inside ``[0, W] x [0, H]``, are at
    least ``min_size`` wide and high, distinct, and in the deterministic order of the module
    docstring (same image and config give the same array, in any process or thread).
    """
    check_config(config)
    bgr = to_bgr8(image)
    height, width = bgr.shape[:2]
    shrink = min(1.0, config.max_side / max(height, width))
    if shrink < 1.0:
        size = (max(1, round(width * shrink)), max(1, round(height * shrink)))
        bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
    search_h, search_w = bgr.shape[:2]

    rects, votes = np.unique(np.concatenate(search_groups(bgr, config.mode)), axis=0,
                             return_counts=True)
    scale = np.array([width / search_w, height / search_h] * 2)
    corners = np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1)
    boxes = clip(corners * scale, height, width)
    keep = valid(boxes, config.min_size)
    rects, votes, boxes = rects[keep], votes[keep], boxes[keep]
    order = np.lexsort((rects[:, 3], rects[:, 2], rects[:, 1], rects[:, 0], _scramble(rects), -votes))
    return np.ascontiguousarray(boxes[order[: config.max_proposals]])


def best_overlaps(gt_boxes, proposals) -> np.ndarray:
    """Per ground-truth box ``[G, 4]``, the best IoU ``[G]`` (float32) with any proposal ``[N, 4]``
    (0 when there are no proposals)."""
    gt, props = as_boxes(gt_boxes), as_boxes(proposals)
    if len(props) == 0:
        return np.zeros(len(gt), dtype=np.float32)
    return iou_matrix(gt, props).max(axis=1)


def proposal_recall(gt_boxes_list: Sequence, proposals_list: Sequence,
                    thresholds: Sequence[float] = (0.5, 0.7)) -> np.ndarray:
    """Recall ``[T]`` (float64): the fraction of all ground-truth boxes, pooled over images, whose
    best IoU with a proposal of their image is >= each threshold.

    ``gt_boxes_list[i]`` ``[G_i, 4]`` and ``proposals_list[i]`` ``[N_i, 4]`` belong to image i
    (pass only the boxes that count, e.g. non-difficult ones). NaN when there is no ground truth.
    """
    if len(gt_boxes_list) != len(proposals_list):
        raise ValueError(f"{len(gt_boxes_list)} ground-truth sets but "
                         f"{len(proposals_list)} proposal sets")
    limits = np.asarray(thresholds, dtype=np.float32).reshape(-1)
    best = np.concatenate([np.zeros(0, np.float32)] + [
        best_overlaps(gt, props) for gt, props in zip(gt_boxes_list, proposals_list)])
    if len(best) == 0:
        return np.full(len(limits), np.nan)
    return (best[:, None] >= limits[None, :]).mean(axis=0, dtype=np.float64)
