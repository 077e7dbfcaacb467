"""Detections on disk: the devkit's per-class results files, COCO-style JSON, the eval summary.

Devkit results (competition 4, "any training data"): ``<folder>/comp4_det_<split>_<class>.txt``,
one line per detection, ``<image_id> <score> <xmin> <ymin> <xmax> <ymax>`` in the devkit's 1-based
inclusive pixel coordinates. A continuous sppdet box (x1, y1, x2, y2) is written as
(x1 + 1, y1 + 1, x2, y2): the inverse of the conversion in ``sppdet.data.voc.read_annotation``, so
the official MATLAB code scores the files as ``sppdet.evaluation.voc_ap`` scores the boxes. Every class gets
a file (empty if it has no detections), as the devkit expects. Numbers are written with Python's
``repr`` (the shortest text that reads back to the same double), so a round trip is exact.
Reading: files of other splits are ignored (but a split named ``<split>_x`` cannot share the
folder: its files would read as classes ``x_...``), a missing class file means no detections of
that class, and an unknown class, a malformed line or an unknown image id is an error naming the
file and line.

COCO-style JSON: a list of ``{"image_id": str, "category_id": k (label, 1..K) and/or "category":
name, "bbox": [x, y, w, h] in continuous 0-based pixels, "score": float}``; errors name the
entry's index. Integer image ids are read as their decimal text.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from sppdet.errors import DatasetError
from sppdet.evaluation.voc_ap import Detections, EvalResult
from sppdet.fileio import atomic_write_text, safe_file_stem

RESULTS_PREFIX = "comp4_det_"
LINE_FORMAT = "<image_id> <score> <xmin> <ymin> <xmax> <ymax>"


def results_path(folder: str | os.PathLike, split: str, name: str) -> Path:
    """``<folder>/comp4_det_<split>_<name>.txt``; a class name that is not a safe file name (e.g.
    ``a/../../x``) is made one (``sppdet.fileio.safe_file_stem``), so the file stays in ``folder``."""
    return Path(folder) / f"{RESULTS_PREFIX}{split}_{safe_file_stem(name)}.txt"


def write_devkit_results(folder: str | os.PathLike, split: str, detections: Detections,
                         classes: Sequence[str]) -> list[Path]:
    """Write one devkit results file per class (atomically, rows in ``detections`` order);
    returns the K paths. ``classes[k - 1]`` names label k."""
    paths = []
    for label, name in enumerate(classes, start=1):
        rows = np.flatnonzero(detections.labels == label)
        lines = [
            f"{detections.images[i]} {s!r} {x1 + 1.0!r} {y1 + 1.0!r} {x2!r} {y2!r}\n"
            for i, s, (x1, y1, x2, y2) in zip(detections.image_index[rows].tolist(),
                                              detections.scores[rows].tolist(),
                                              detections.boxes[rows].tolist())
        ]
        path = results_path(folder, split, name)
        atomic_write_text(path, "".join(lines))
        paths.append(path)
    return paths


def _image_lookup(image_ids: Sequence[str]) -> dict[str, int]:
    return {image_id: i for i, image_id in enumerate(image_ids)}


def _unknown_image(where: str, image_id: str, split: str) -> DatasetError:
    return DatasetError(f"{where}: image {image_id!r} is not in split {split!r}; "
                        "were these detections made on another split?")


def _read_results_file(path: Path, split: str, lookup: dict[str, int]):
    """(image index int64 [n], values float64 [n, 5]) of one results file, in line order.

    Whole-file fast path; if anything is wrong, :func:`_check_lines` finds the first bad line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read results file ({exc})") from None
    lines = text.splitlines()
    tokens = text.split()
    if not tokens:
        return np.zeros(0, np.int64), np.zeros((0, 5))
    try:  # loadtxt needs >= 6 columns per non-blank line; the token count then proves exactly 6
        values = np.loadtxt(lines, dtype=np.float64, usecols=range(1, 6), ndmin=2, comments=None)
        if len(tokens) != 6 * len(values) or not np.isfinite(values).all():
            raise ValueError
        index = np.array([lookup[image_id] for image_id in tokens[0::6]], dtype=np.int64)
    except (KeyError, ValueError):
        _check_lines(path, lines, split, lookup)
        raise DatasetError(f"{path}: not a results file of lines '{LINE_FORMAT}'") from None
    return index, values


def _check_lines(path: Path, lines: Sequence[str], split: str, lookup: dict[str, int]) -> None:
    """Raise ``DatasetError`` naming the first line that is not a valid results line."""
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            valid = len(fields) == 6 and all(math.isfinite(float(f)) and "_" not in f
                                             for f in fields[1:])
        except ValueError:
            valid = False
        if not valid:
            raise DatasetError(f"{path}:{number}: expected '{LINE_FORMAT}' with finite numbers, "
                               f"got {line.strip()!r}")
        if fields[0] not in lookup:
            raise _unknown_image(f"{path}:{number}", fields[0], split)


def read_devkit_results(folder: str | os.PathLike, split: str, classes: Sequence[str],
                        image_ids: Sequence[str]) -> Detections:
    """Detections from the ``comp4_det_<split>_<class>.txt`` files in ``folder`` (boxes
    converted to continuous 0-based pixels; rows in class order, then line order).
    ``image_ids`` are the split's images; ``DatasetError`` for anything it cannot score."""
    folder = Path(folder)
    prefix = f"{RESULTS_PREFIX}{split}_"
    files = sorted(folder.glob(f"{prefix}*.txt"))
    if not files:
        raise DatasetError(f"{folder}: no {prefix}<class>.txt results files for split {split!r}")
    label_of = {name: k for k, name in enumerate(classes, start=1)}
    file_stems = {safe_file_stem(name) for name in classes}  # as results_path names the files
    for path in files:
        name = path.name[len(prefix):-len(".txt")]
        if name not in file_stems:
            raise DatasetError(f"{path}: unknown class {name!r}; the dataset's classes are "
                               f"{', '.join(classes)}")
    lookup = _image_lookup(image_ids)
    parts = []
    for name, label in label_of.items():
        path = results_path(folder, split, name)
        if path.is_file():
            index, values = _read_results_file(path, split, lookup)
            parts.append((index, values, np.full(len(index), label, dtype=np.int64)))
    index = np.concatenate([p[0] for p in parts])
    values = np.concatenate([p[1] for p in parts])
    boxes = values[:, 1:] - np.array([1.0, 1.0, 0.0, 0.0])  # inverse of write_devkit_results
    labels = np.concatenate([p[2] for p in parts])
    return Detections(tuple(image_ids), index, boxes, values[:, 0], labels)


def write_coco_json(path: str | os.PathLike, detections: Detections, classes: Sequence[str]) -> None:
    """Write detections as COCO-style JSON (both ``category_id`` and ``category``), atomically."""
    entries = [
        {"image_id": detections.images[i], "category_id": k, "category": classes[k - 1],
         "bbox": [x1, y1, x2 - x1, y2 - y1], "score": s}
        for i, k, s, (x1, y1, x2, y2) in zip(detections.image_index.tolist(),
                                            detections.labels.tolist(), detections.scores.tolist(),
                                            detections.boxes.tolist())
    ]
    atomic_write_text(path, json.dumps(entries, allow_nan=False) + "\n")


def _coco_entry(entry, where: str, split: str, lookup: dict[str, int], classes: Sequence[str]):
    if not isinstance(entry, dict):
        raise DatasetError(f"{where}: expected an object with image_id, category_id, bbox, score")
    image_id = entry.get("image_id")
    if isinstance(image_id, int) and not isinstance(image_id, bool):
        image_id = str(image_id)
    if not isinstance(image_id, str):
        raise DatasetError(f"{where}: image_id {image_id!r} is not a string")
    if image_id not in lookup:
        raise _unknown_image(where, image_id, split)
    label = entry.get("category_id")
    if label is not None and (not isinstance(label, int) or isinstance(label, bool)
                              or not 1 <= label <= len(classes)):
        raise DatasetError(f"{where}: category_id {label!r} is not a label in 1..{len(classes)}")
    name = entry.get("category")
    if name is not None:
        if name not in classes:
            raise DatasetError(f"{where}: unknown category {name!r}; the dataset's classes are "
                               f"{', '.join(classes)}")
        if label is not None and classes[label - 1] != name:
            raise DatasetError(f"{where}: category_id {label} is {classes[label - 1]!r}, "
                               f"but category is {name!r}")
        label = classes.index(name) + 1
    if label is None:
        raise DatasetError(f"{where}: needs category_id or category")
    bbox, score = entry.get("bbox"), entry.get("score")
    numbers = bbox + [score] if isinstance(bbox, list) and len(bbox) == 4 else None
    if numbers is None or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                  and math.isfinite(v) for v in numbers):
        raise DatasetError(f"{where}: expected bbox [x, y, w, h] and score as finite numbers")
    x, y, w, h = (float(v) for v in bbox)
    return lookup[image_id], label, float(score), (x, y, x + w, y + h)


def read_coco_json(path: str | os.PathLike, split: str, classes: Sequence[str],
                   image_ids: Sequence[str]) -> Detections:
    """Detections from a COCO-style JSON list (rows in list order); ``image_ids`` are the
    split's images. ``DatasetError`` naming the entry for anything it cannot score."""
    path = Path(path)
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DatasetError(f"{path}: cannot read COCO-style JSON ({exc})") from None
    if not isinstance(entries, list):
        raise DatasetError(f"{path}: expected a JSON list of detections")
    lookup = _image_lookup(image_ids)
    rows = [_coco_entry(e, f"{path}: entry {i}", split, lookup, classes) for i, e in enumerate(entries)]
    return Detections(tuple(image_ids), [r[0] for r in rows], [r[3] for r in rows],
                      [r[2] for r in rows], [r[1] for r in rows])


def read_detections(path: str | os.PathLike, split: str, classes: Sequence[str],
                    image_ids: Sequence[str]) -> Detections:
    """A folder of devkit results files or a COCO-style ``.json`` file (see the module docstring)."""
    path = Path(path)
    if path.is_dir():
        return read_devkit_results(path, split, classes, image_ids)
    if path.is_file() and path.suffix.lower() == ".json":
        return read_coco_json(path, split, classes, image_ids)
    raise DatasetError(f"{path}: expected a folder of {RESULTS_PREFIX}{split}_<class>.txt files "
                       "or a COCO-style .json file")


def write_summary_json(path: str | os.PathLike, result: EvalResult, split: str) -> None:
    """Write ``result.to_json(split)`` (NaN as null, classes in class order) atomically."""
    atomic_write_text(path, json.dumps(result.to_json(split), indent=2, allow_nan=False) + "\n")
