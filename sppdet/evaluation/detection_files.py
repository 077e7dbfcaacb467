"""Detections of new images in the formats other tools read: YOLO label files, VOC XML, CSV.

Boxes come in sppdet's convention (``sppdet.structures.boxes``): float ``[N, 4]`` (x1, y1, x2, y2)
in continuous 0-based pixels; labels int ``[N]`` in 1..K for ``classes``; scores float ``[N]``.

* YOLO (``detect --save-txt``, as ``yolo predict save_txt save_conf``): one ``<stem>.txt`` per
  image, a line ``class cx cy w h score`` per detection, class 0-based, the box centre and size
  divided by the image's width and height; an image without detections gets an empty file.
* VOC XML (``detect --save-xml``): one ``<stem>.xml`` per image, what labelling tools (labelImg,
  CVAT's VOC import) open as annotations; scores are not part of the format and are dropped.
* CSV (``detect --csv``): one file, a row ``image,class,score,x1,y1,x2,y2`` per detection.

Files are named by the image file's stem, inside the folder given; every file is written
atomically.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from sppdet.data.voc import Annotation, write_annotation
from sppdet.fileio import atomic_write_text


def yolo_lines(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, image_hw: tuple[int, int]) -> str:
    """The YOLO label text of one image (module docstring), one line per detection."""
    height, width = float(image_hw[0]), float(image_hw[1])
    rows = []
    for (x1, y1, x2, y2), score, label in zip(np.asarray(boxes, np.float64), scores, labels):
        rows.append(f"{int(label) - 1} {(x1 + x2) / 2 / width:.6f} {(y1 + y2) / 2 / height:.6f} "
                    f"{(x2 - x1) / width:.6f} {(y2 - y1) / height:.6f} {float(score):.6f}")
    return "".join(row + "\n" for row in rows)


def write_yolo_txt(folder: str | os.PathLike, stem: str, boxes, scores, labels,
                   image_hw: tuple[int, int]) -> Path:
    """Write ``folder/<stem>.txt`` (YOLO label lines with scores); returns its path."""
    path = Path(folder) / f"{stem}.txt"
    atomic_write_text(path, yolo_lines(boxes, scores, labels, image_hw))
    return path


def write_voc_xml(folder: str | os.PathLike, stem: str, filename: str, boxes, labels,
                  image_hw: tuple[int, int], classes: Sequence[str]) -> Path:
    """Write ``folder/<stem>.xml``: the detections as VOC objects (not difficult); returns its path."""
    path = Path(folder) / f"{stem}.xml"
    names = tuple(classes[int(label) - 1] for label in labels)
    write_annotation(path, Annotation(image_id=stem, width=int(image_hw[1]), height=int(image_hw[0]),
                                      boxes=np.asarray(boxes, np.float32).reshape(-1, 4), names=names,
                                      difficult=np.zeros(len(names), bool), filename=filename))
    return path


def write_detections_csv(path: str | os.PathLike, rows: Iterable[tuple[str, np.ndarray, np.ndarray, np.ndarray]],
                         classes: Sequence[str]) -> None:
    """Write every detection to one CSV; ``rows``: per image (stem, boxes, scores, labels)."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["image", "class", "score", "x1", "y1", "x2", "y2"])
    for stem, boxes, scores, labels in rows:
        for box, score, label in zip(np.asarray(boxes, np.float64), scores, labels):
            writer.writerow([stem, classes[int(label) - 1], f"{float(score):.6f}",
                             *(f"{v:.2f}" for v in box)])
    atomic_write_text(path, text.getvalue())
