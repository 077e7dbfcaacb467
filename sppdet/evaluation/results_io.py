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

COCO-style JSON: a list of ``{"image_id", "category_id": k (label, 1..K) and/or "category": name,
"bbox": [x, y, w, h], "score": float}``; errors name the entry's index. ``bbox`` is sppdet's
continuous box as (x1, y1, x2 - x1, y2 - y1), with no "+1": COCO's IoU and areas use w * h, and
the continuous box (xmin - 1, ymin - 1, xmax, ymax) of a devkit box already has the devkit's
inclusive width xmax - xmin + 1 (``sppdet.data.voc``), so COCO's IoU of these boxes equals the
devkit's IoU (``sppdet.evaluation.voc_ap.devkit_iou``) and a box's area is its devkit pixel count.
Two forms of ``image_id``:
- a string, sppdet's image id (the VOC file stem; ``detect``'s file stem): readable by sppdet only,
  as COCO tools want integers;
- an integer, for COCO tools (pycocotools, faster-coco-eval): image ``name`` gets
  ``1 + sorted(names).index(name)`` over the images written (a split's images, or the images a
  ``detect`` run saw), so the ids depend only on the set of names, never on order or file
  system. The ground-truth-style mapping file ``<stem>.images.json`` beside the results
  (:func:`mapping_path`) holds ``"images": [{"id", "file_name", "width", "height", "sppdet_id"}]``
  (``sppdet_id`` the name), ``"categories": [{"id": k, "name"}]`` and, when written from a
  dataset split, ``"annotations"``: one per box of a known class, ``{"id": 1.., "image_id",
  "category_id", "bbox", "area": w * h, "iscrowd": 1 if difficult else 0}`` (COCO ignores
  crowd boxes much as VOC ignores difficult ones; ``sppdet.evaluation.coco_metric`` lists the
  differences). So ``COCO("<stem>.images.json").loadRes("<stem>.json")`` works as is.
Reading: a string id is the image's name; an integer id is looked up in the mapping file beside
the results when there is one, and is otherwise read as its decimal text (``7`` -> image ``"7"``).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Iterable, Mapping, NamedTuple, Sequence

import numpy as np

from sppdet.data.voc import Annotation
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


class CocoImage(NamedTuple):
    """One image of a COCO ground-truth-style file: sppdet's image id, its file name and size."""

    name: str
    file_name: str
    width: int
    height: int


def mapping_path(path: str | os.PathLike) -> Path:
    """The mapping file of the COCO results ``path``: ``dets.json`` -> ``dets.images.json``."""
    return Path(path).with_suffix(".images.json")


def coco_image_ids(names: Iterable[str]) -> dict[str, int]:
    """COCO's integer id of each image name: 1 + its position in ``sorted(names)`` (1-based, as
    COCO's own ids). ``DatasetError`` if a name appears twice."""
    ordered = sorted(names)
    for a, b in zip(ordered, ordered[1:]):
        if a == b:
            raise DatasetError(f"image id {a!r} appears twice; COCO needs one id per image")
    return {name: i for i, name in enumerate(ordered, start=1)}


def coco_images(annotations: Iterable[Annotation]) -> list[CocoImage]:
    """The images of a split's annotations (``file_name`` the XML's <filename>, else ``<id>.jpg``)."""
    return [CocoImage(a.image_id, a.filename or f"{a.image_id}.jpg", int(a.width), int(a.height))
            for a in annotations]


def coco_ground_truth(images: Sequence[CocoImage], classes: Sequence[str],
                      annotations: Sequence[Annotation] | None = None) -> dict:
    """A COCO ground-truth dict: ``images`` (with ``sppdet_id``), ``categories`` (label k, 1..K)
    and, given the split's ``annotations``, one COCO annotation per box of a class in ``classes``
    (see the module docstring; boxes of other names are left out, as ``voc_ap.evaluate`` does)."""
    ids = coco_image_ids(image.name for image in images)
    data = {"images": [{"id": ids[image.name], "file_name": image.file_name, "width": int(image.width),
                        "height": int(image.height), "sppdet_id": image.name}
                       for image in sorted(images, key=lambda image: ids[image.name])],
            "categories": [{"id": k, "name": name} for k, name in enumerate(classes, start=1)]}
    if annotations is not None:
        rows = []
        for a in sorted(annotations, key=lambda a: ids[a.image_id]):
            labels = a.labels(classes)
            boxes = np.asarray(a.boxes, np.float64).reshape(-1, 4)
            wh = boxes[:, 2:] - boxes[:, :2]
            for label, (x, y), (w, h), crowd in zip(labels.tolist(), boxes[:, :2].tolist(), wh.tolist(),
                                                    np.asarray(a.difficult, bool).tolist()):
                if label > 0:
                    rows.append({"id": len(rows) + 1, "image_id": ids[a.image_id], "category_id": label,
                                 "bbox": [x, y, w, h], "area": w * h, "iscrowd": int(crowd)})
        data["annotations"] = rows
    return data


def coco_results(detections: Detections, classes: Sequence[str],
                 image_ids: Mapping[str, int] | None = None) -> list[dict]:
    """COCO results dicts of ``detections`` in row order: ``image_id`` the name (``image_ids``
    None) or ``image_ids[name]``; ``DatasetError`` for a detection on an image missing from it."""
    if image_ids is None:
        images = list(detections.images)
    else:
        used = np.flatnonzero(np.bincount(detections.image_index, minlength=len(detections.images)))
        for name in (detections.images[i] for i in used.tolist()):
            if name not in image_ids:
                raise DatasetError(f"detections for image {name!r}, which is not among the "
                                   f"{len(image_ids)} images of the evaluated split or mapping")
        images = [image_ids.get(name, 0) for name in detections.images]
    return [
        {"image_id": images[i], "category_id": k, "category": classes[k - 1],
         "bbox": [x1, y1, x2 - x1, y2 - y1], "score": s}
        for i, k, s, (x1, y1, x2, y2) in zip(detections.image_index.tolist(),
                                            detections.labels.tolist(), detections.scores.tolist(),
                                            detections.boxes.tolist())
    ]


def write_coco_json(path: str | os.PathLike, detections: Detections, classes: Sequence[str],
                    images: Sequence[CocoImage | tuple] | None = None,
                    ground_truth: Sequence[Annotation] | None = None) -> Path | None:
    """Write detections as COCO-style JSON (both ``category_id`` and ``category``), atomically.

    Without ``images`` and ``ground_truth``: string image ids (sppdet's names); returns None.
    With either: integer ids and the mapping file :func:`mapping_path` (written first), whose
    images are ``images`` (``CocoImage`` or (name, file_name, width, height) tuples) or those of
    ``ground_truth`` (a split's annotations, which also fill its ``annotations``); returns the
    mapping file's path. Boxes: see the module docstring.
    """
    if images is None and ground_truth is None:
        atomic_write_text(path, json.dumps(coco_results(detections, classes), allow_nan=False) + "\n")
        return None
    ground_truth = None if ground_truth is None else list(ground_truth)
    images = [CocoImage(*image) for image in images] if images is not None else coco_images(ground_truth)
    entries = coco_results(detections, classes, coco_image_ids(image.name for image in images))
    mapping = mapping_path(path)
    atomic_write_text(mapping, json.dumps(coco_ground_truth(images, classes, ground_truth),
                                          allow_nan=False) + "\n")
    atomic_write_text(path, json.dumps(entries, allow_nan=False) + "\n")
    return mapping


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_coco_mapping(path: str | os.PathLike) -> dict[int, str]:
    """``{COCO image id: sppdet image id}`` from a mapping file (``images[].id``/``sppdet_id``);
    ``DatasetError`` naming the file if it is not one."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DatasetError(f"{path}: cannot read the COCO image mapping ({exc})") from None
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise DatasetError(f"{path}: expected a COCO ground-truth-style object with an \"images\" list")
    mapping: dict[int, str] = {}
    for i, image in enumerate(images):
        coco_id = image.get("id") if isinstance(image, dict) else None
        name = image.get("sppdet_id") if isinstance(image, dict) else None
        if not _is_int(coco_id) or not isinstance(name, str) or coco_id in mapping:
            raise DatasetError(f"{path}: images[{i}] needs a unique integer id and a string sppdet_id; "
                               "write the file again with sppdet")
        mapping[coco_id] = name
    return mapping


def _coco_entry(entry, where: str, split: str, lookup: dict[str, int], classes: Sequence[str],
                names: Mapping[int, str] | None, mapping: Path):
    if not isinstance(entry, dict):
        raise DatasetError(f"{where}: expected an object with image_id, category_id, bbox, score")
    image_id = entry.get("image_id")
    if _is_int(image_id):
        if names is None:
            image_id = str(image_id)
        elif image_id in names:
            image_id = names[image_id]
        else:
            raise DatasetError(f"{where}: image_id {image_id} is not an id of {mapping}")
    if not isinstance(image_id, str):
        raise DatasetError(f"{where}: image_id {image_id!r} is not a string or an integer")
    if image_id not in lookup:
        raise _unknown_image(where, image_id, split)
    label = entry.get("category_id")
    if label is not None and (not _is_int(label) or not 1 <= label <= len(classes)):
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
    split's images. Integer image ids go through the mapping file beside ``path`` when it
    exists (module docstring). ``DatasetError`` naming the entry for anything it cannot score."""
    path = Path(path)
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DatasetError(f"{path}: cannot read COCO-style JSON ({exc})") from None
    if isinstance(entries, dict) and "images" in entries:
        raise DatasetError(f"{path}: this is COCO ground truth (an image mapping), not detections; "
                           "pass the results file beside it")
    if not isinstance(entries, list):
        raise DatasetError(f"{path}: expected a JSON list of detections")
    mapping = mapping_path(path)
    names = None
    if mapping.is_file() and any(isinstance(e, dict) and _is_int(e.get("image_id")) for e in entries):
        names = read_coco_mapping(mapping)
    lookup = _image_lookup(image_ids)
    rows = [_coco_entry(e, f"{path}: entry {i}", split, lookup, classes, names, mapping)
            for i, e in enumerate(entries)]
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
    """Write ``result.to_json(split)`` (NaN as null, classes in class order) atomically; ``result``
    is an ``EvalResult`` or anything with that method (``coco_metric.CocoResult``)."""
    atomic_write_text(path, json.dumps(result.to_json(split), indent=2, allow_nan=False) + "\n")
