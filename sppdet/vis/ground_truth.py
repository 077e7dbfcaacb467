"""Ground truth drawn on its images (``sppdet data show``), in the look of ``sppdet.vis.draw``.

Each box gets its class colour (``class_colour``; label k of ``classes``) and a label with the
class name; a difficult object is drawn with a dashed line and labelled ``"<name> (difficult)"``.
Boxes are ``sppdet.structures.boxes``' continuous (x1, y1, x2, y2) pixels, drawn on the pixels
they cover as in ``draw_detections``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

from sppdet.data.images import load_bgr, to_bgr8
from sppdet.data.voc import Annotation, VocDataset
from sppdet.fileio import safe_file_stem
from sppdet.vis.draw import box_pixels, class_colour, dashed_rectangle, draw_label, line_thickness, write_image


def draw_annotation(image: np.ndarray, annotation: Annotation, classes: Sequence[str]) -> np.ndarray:
    """A copy of ``image`` (uint8 BGR ``[H, W, 3]``, or anything ``to_bgr8`` takes) with every
    object of ``annotation`` drawn: box in its class colour (dashed when difficult) and name.
    A name not in ``classes`` gets the colour of label 0. Returns uint8 BGR ``[H, W, 3]``."""
    canvas = to_bgr8(image).copy()
    height, width = canvas.shape[:2]
    thickness = line_thickness(height, width)
    font_scale = max(0.35, 0.0005 * (height + width))
    pixels = box_pixels(annotation.boxes, height, width)
    labels = annotation.labels(classes).clip(min=0)
    for corners, label, hard in zip(pixels.tolist(), labels, annotation.difficult):
        if hard:
            dashed_rectangle(canvas, corners, class_colour(label), thickness, dash=3 * thickness + 3)
        else:
            cv2.rectangle(canvas, tuple(corners[:2]), tuple(corners[2:]), class_colour(label), thickness)
    for corners, name, label, hard in zip(pixels.tolist(), annotation.names, labels, annotation.difficult):
        draw_label(canvas, f"{name} (difficult)" if hard else name, corners[0], corners[1], class_colour(label),
                   font_scale, max(1, thickness // 2))
    return canvas


def write_ground_truth(dataset: VocDataset, out: str | os.PathLike, limit: int = 0,
                       progress: Callable[..., None] | None = None) -> list[Path]:
    """Draw the first ``limit`` images of ``dataset`` (all when 0), in split order, into ``out``
    as ``<safe id>.jpg`` (``sppdet.fileio.safe_file_stem``: an id never places a file outside
    ``out``); returns the files written. ``progress(n)`` is called per image."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for image_id in dataset.image_ids[:limit or None]:
        canvas = draw_annotation(load_bgr(dataset.image_path(image_id)), dataset.annotation(image_id), dataset.classes)
        path = out / f"{safe_file_stem(image_id)}.jpg"
        write_image(path, canvas)
        written.append(path)
        if progress is not None:
            progress(1)
    return written
