"""Annotated images: detections drawn as boxes, class names and scores in readable colours.

Shape shorthand: N detections, K classes, (H, W) the image. Boxes follow ``sppdet.structures.boxes``
(float ``[N, 4]`` continuous (x1, y1, x2, y2) pixels); a box is drawn on the pixels it covers,
columns ``floor(x1) .. ceil(x2) - 1`` (rows alike).

Choices:
    * Colours: class ``k`` (label 1..K) always gets ``PALETTE[(k - 1) % len(PALETTE)]``, 20
      saturated, mutually distinct colours (Kelly's / Glasbey-style), so a class keeps its colour
      in every image of a run and across runs.
    * Labels ``"<class> <score>"`` sit on a filled rectangle of the class colour, in black or white,
      whichever contrasts more with that colour, so they read on any background; above the box
      when there is room, else just inside its top edge, and always inside the image.
    * Line thickness and font size grow with the image: ``thickness = max(1, round(sqrt(H * W) / 200))``,
      1 px at 160 x 120, 2 px at 400 x 300, 4 px at 1000 x 750, 17 px at 4000 x 3000.
    * Boxes, then labels, are drawn from the lowest score up: the best detections end up on top and
      no box line crosses a label.
    * :func:`write_image` keeps the format of the file name's suffix (JPEG at quality 95).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from sppdet.structures.boxes import as_boxes
from sppdet.data.images import to_bgr8
from sppdet.errors import DatasetError, SppdetError
from sppdet.fileio import atomic_write_bytes

#: BGR colours, one per class (label k uses entry (k - 1) mod 20).
PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 0, 230), (0, 200, 0), (230, 120, 0), (0, 190, 255), (200, 0, 200),
    (255, 220, 0), (0, 100, 255), (120, 0, 120), (120, 255, 120), (60, 60, 160),
    (255, 120, 200), (0, 128, 128), (180, 180, 255), (128, 128, 0), (40, 160, 255),
    (140, 70, 0), (200, 255, 255), (90, 0, 255), (255, 255, 120), (70, 130, 70),
)
FONT = cv2.FONT_HERSHEY_SIMPLEX
JPEG_QUALITY = 95


def class_colour(label: int) -> tuple[int, int, int]:
    """The BGR colour of class ``label`` (1..K); classes 20 apart share a colour."""
    return PALETTE[(int(label) - 1) % len(PALETTE)]


def text_colour(colour: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever reads better on the BGR ``colour``."""
    blue, green, red = colour
    return (0, 0, 0) if 0.299 * red + 0.587 * green + 0.114 * blue > 140 else (255, 255, 255)


def line_thickness(height: int, width: int) -> int:
    """Box line thickness in pixels for an ``height`` x ``width`` image (see module docstring)."""
    return max(1, int(round(math.sqrt(height * width) / 200)))


def draw_label(canvas: np.ndarray, text: str, left: int, top: int, colour: tuple[int, int, int],
               scale: float, thickness: int) -> None:
    """Draw ``text`` on a filled rectangle above row ``top`` (or inside the box if no room)."""
    height, width = canvas.shape[:2]
    (text_w, text_h), baseline = cv2.getTextSize(text, FONT, scale, thickness)
    pad = max(1, thickness)
    box_h = text_h + baseline + 2 * pad
    box_w = text_w + 2 * pad
    y0 = top - box_h if top >= box_h else top
    y0 = max(0, min(y0, height - box_h))
    x0 = max(0, min(left, width - box_w))
    cv2.rectangle(canvas, (x0, y0), (x0 + box_w - 1, y0 + box_h - 1), colour, cv2.FILLED)
    cv2.putText(canvas, text, (x0 + pad, y0 + pad + text_h), FONT, scale, text_colour(colour),
                thickness, cv2.LINE_AA)


def box_pixels(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """int64 ``[N, 4]`` inclusive pixel corners (x1, y1, x2, y2) of continuous boxes ``[N, 4]``,
    clipped to an ``height`` x ``width`` image: every box is drawn on the pixels it covers."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    corners = np.stack([np.floor(boxes[:, 0]), np.floor(boxes[:, 1]),
                        np.ceil(boxes[:, 2]) - 1, np.ceil(boxes[:, 3]) - 1], axis=1)
    return np.clip(corners, 0, [width - 1, height - 1, width - 1, height - 1]).astype(np.int64)


def dashed_rectangle(canvas: np.ndarray, corners, colour: tuple[int, int, int], thickness: int,
                     dash: int) -> None:
    """A rectangle of ``dash`` px dashes with equal gaps on the pixels ``corners`` = (x1, y1, x2, y2)
    (inclusive, as :func:`box_pixels` gives), each edge starting with a dash at its corner."""
    x1, y1, x2, y2 = corners
    for (ax, ay), (bx, by) in (((x1, y1), (x2, y1)), ((x2, y1), (x2, y2)), ((x2, y2), (x1, y2)), ((x1, y2), (x1, y1))):
        dx, dy = int(np.sign(bx - ax)), int(np.sign(by - ay))  # edges are axis-aligned
        length = abs(bx - ax) + abs(by - ay)
        for start in range(0, length + 1, 2 * dash):
            end = min(start + dash, length)
            cv2.line(canvas, (ax + dx * start, ay + dy * start), (ax + dx * end, ay + dy * end), colour, thickness)


def draw_detections(image: np.ndarray, boxes, scores, labels, classes: Sequence[str]) -> np.ndarray:
    """A copy of ``image`` with every detection drawn: box, class name and score.

    ``image``: uint8 BGR ``[H, W, 3]`` (grayscale, BGRA and 16-bit are converted by
    ``sppdet.data.images.to_bgr8``); ``boxes`` float ``[N, 4]`` (x1, y1, x2, y2) continuous pixels;
    ``scores`` float ``[N]``; ``labels`` int ``[N]`` in 1..K naming ``classes[label - 1]``.
    Returns uint8 BGR ``[H, W, 3]``; the input is not modified. Boxes reaching past the image are
    drawn clipped to it. Filter by score before calling: every given box is drawn.
    """
    canvas = to_bgr8(image).copy()
    height, width = canvas.shape[:2]
    boxes = as_boxes(boxes)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if not len(boxes) == len(scores) == len(labels):
        raise ValueError(f"draw_detections: {len(boxes)} boxes, {len(scores)} scores, {len(labels)} labels")
    thickness = line_thickness(height, width)
    font_scale = max(0.35, 0.0005 * (height + width))
    text_thickness = max(1, thickness // 2)
    pixels = box_pixels(boxes, height, width)
    order = np.argsort(scores, kind="stable")
    for i in order:
        x1, y1, x2, y2 = pixels[i].tolist()
        cv2.rectangle(canvas, (x1, y1), (x2, y2), class_colour(labels[i]), thickness)
    for i in order:
        draw_label(canvas, f"{classes[labels[i] - 1]} {scores[i]:.2f}", int(pixels[i, 0]), int(pixels[i, 1]),
                   class_colour(labels[i]), font_scale, text_thickness)
    return canvas


def write_image(path: str | os.PathLike, bgr: np.ndarray) -> None:
    """Encode uint8 BGR [H, W, 3] in the format of ``path``'s suffix and write it atomically."""
    path = Path(path)
    suffix = path.suffix.lower()
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if suffix in (".jpg", ".jpeg") else []
    try:
        ok, data = cv2.imencode(suffix, bgr, params)
    except cv2.error:
        ok = False
    if not ok:
        raise DatasetError(f"{path}: OpenCV cannot write {suffix} images here")
    try:
        atomic_write_bytes(path, data.tobytes())
    except OSError as exc:
        raise SppdetError(f"{path}: cannot write the annotated image ({exc.strerror or exc}); "
                          "check --out") from None
