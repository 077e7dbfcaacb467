"""Readers of other annotation formats, each giving the same list of :class:`SourceImage`.

Formats (``sppdet data import --format``):

- ``coco``: an instances JSON (``images``, ``annotations``, ``categories``). ``bbox`` ``[x, y, w, h]``
  is the continuous box ``(x, y, x + w, y + h)``; ``iscrowd`` marks the object difficult; images
  without annotations are kept (negatives). Images are looked up under ``images_dir``, by default
  the first of ``<json folder>``, ``<json folder>/images``, ``<json folder>/../images`` and, for
  ``annotations/instances_<name>.json``, ``<json folder>/../<name>`` that holds the first image.
- ``yolo``: ultralytics layout. Every image under a folder named ``images`` has its labels in the
  same place under ``labels`` (``images/train/a.jpg`` -> ``labels/train/a.txt``; also
  ``train/images`` -> ``train/labels``); a missing or empty label file is a negative. A line is
  ``class cx cy w h`` normalised to the image (a longer line is a polygon: its bounding box).
  Class names come from ``data.yaml`` (or another ``*.yaml`` beside it) ``names:``, as a list or an
  index -> name mapping, else from ``classes.txt`` (one per line). A folder named train, val
  (valid, validation) or test on the way to an image is its shipped subset.
- ``labelme``: a folder of labelme JSON files (searched recursively); rectangles, polygons,
  masks and circles give their bounding boxes, other shapes are skipped and counted; a shape's
  ``difficult`` flag is kept. ``imagePath`` is relative to the JSON file.
- ``voc-flat``: VOC XML files each beside its image (same stem, or the XML's ``<filename>``), in
  one folder tree without ImageSets; images without an XML are skipped and counted.

Boxes are sppdet's continuous ``(x1, y1, x2, y2)`` pixels (``sppdet.structures.boxes``), as the
source states them; clipping to the image and dropping what is left empty happen when the dataset
is written (``sppdet.data.voc_import``).
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from sppdet.data.images import IMAGE_SUFFIXES
from sppdet.data.voc import read_annotation
from sppdet.errors import DatasetError

FORMATS = ("coco", "yolo", "labelme", "voc-flat")
#: Folder names that mark an image's shipped subset (yolo), and the split each stands for.
SUBSETS = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
           "test": "test", "testing": "test"}
LABELME_BOX_SHAPES = ("rectangle", "polygon", "mask", "circle")


@dataclass(frozen=True)
class SourceImage:
    """One image of a source dataset. ``name``: its path relative to the source without suffix,
    ``/``-separated (image ids are made from it); ``boxes`` float64 ``[G, 4]`` continuous
    (x1, y1, x2, y2) pixels, not yet clipped; ``names`` the G class names; ``difficult`` bool
    ``[G]``; ``size`` (width, height) if the source states it; ``subset`` "train", "val" or
    "test" if the source ships a split."""

    path: Path
    name: str
    boxes: np.ndarray
    names: tuple[str, ...]
    difficult: np.ndarray
    size: tuple[int, int] | None = None
    subset: str | None = None


@dataclass
class SourceDataset:
    """What a reader found: the images (sorted by name) and what it skipped, ``reason -> count``."""

    images: list[SourceImage]
    skipped: dict[str, int] = field(default_factory=dict)


def _image(path: Path, name: str, boxes: list, names: list[str], difficult: list[bool], where: Path,
           size: tuple[int, int] | None = None, subset: str | None = None) -> SourceImage:
    """A :class:`SourceImage`, checking that every coordinate is a finite number and every class
    name a non-empty printable string (``DatasetError`` naming ``where``, the file stating them)."""
    array = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if not np.isfinite(array).all():
        raise DatasetError(f"{where}: a box coordinate is not a finite number; fix the annotation")
    clean = []
    for label in names:
        text = label.strip() if isinstance(label, str) else ""
        if not text or not text.isprintable():
            raise DatasetError(f"{where}: class name {label!r} is empty or holds control characters; "
                               "fix the annotation")
        clean.append(text)
    return SourceImage(path=path, name=name, boxes=array, names=tuple(clean),
                       difficult=np.asarray(difficult, dtype=bool).reshape(-1), size=size, subset=subset)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found; check the path") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise DatasetError(f"{path}: not valid UTF-8 JSON ({exc}); fix or re-export it") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read it ({exc.strerror or exc})") from None


def _relative_name(path: Path, root: Path) -> str:
    """``path`` relative to ``root``, without suffix, ``/``-separated (the file name if outside)."""
    try:
        relative = path.relative_to(root)
    except ValueError:
        relative = Path(path.name)
    return relative.with_suffix("").as_posix()


def _visible(root: Path, pattern: str) -> list[Path]:
    """Files under ``root`` matching ``pattern`` (recursively), sorted; none in hidden folders."""
    return sorted(p for p in root.rglob(pattern)
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))


def _image_files(root: Path) -> list[Path]:
    """Image files (a suffix of ``IMAGE_SUFFIXES``, any case) under ``root``, sorted; hidden
    folders and files are left out."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(folder) / f for f in files
                  if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_SUFFIXES]
    return sorted(found)


# ---------------------------------------------------------------------------------------------
# COCO


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DatasetError(f"{where}: expected a number, found {value!r}; fix the file")
    return float(value)


def coco_images_dir(json_path: Path, first_file: str | None) -> Path:
    """The folder the images of ``json_path`` lie in (module docstring), judged by whether it
    holds ``first_file``; the JSON's folder when there is no image or none holds it."""
    folder = json_path.parent
    candidates = [folder, folder / "images", folder.parent / "images"]
    match = re.fullmatch(r"instances_(.+)", json_path.stem)
    if match:
        candidates.append(folder.parent / match.group(1))
    if first_file is None:
        return folder
    for candidate in candidates:
        if (candidate / first_file).is_file():
            return candidate
    raise DatasetError(f"{json_path}: image {first_file!r} is in none of "
                       f"{', '.join(str(c) for c in candidates)}; pass --images DIR")


def read_coco(json_path: str | os.PathLike, images_dir: str | os.PathLike | None = None) -> SourceDataset:
    """The images and boxes of a COCO instances JSON (module docstring)."""
    json_path = Path(json_path)
    data = _read_json(json_path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DatasetError(f"{json_path}: not a COCO instances file (no \"images\" list)")
    categories: dict[int, str] = {}
    for category in data.get("categories") or []:
        if not isinstance(category, dict) or "id" not in category or not isinstance(category.get("name"), str):
            raise DatasetError(f"{json_path}: category {category!r} lacks an id or a name")
        categories[category["id"]] = category["name"]
    images: dict[Any, dict] = {}
    for entry in data["images"]:
        if not isinstance(entry, dict) or "id" not in entry or not isinstance(entry.get("file_name"), str):
            raise DatasetError(f"{json_path}: image entry {entry!r} lacks an id or a file_name")
        if entry["id"] in images:
            raise DatasetError(f"{json_path}: image id {entry['id']!r} is listed twice")
        images[entry["id"]] = entry
    objects: dict[Any, list[tuple[list[float], str, bool]]] = {key: [] for key in images}
    for annotation in data.get("annotations") or []:
        where = f"{json_path}: annotation {annotation.get('id', '?') if isinstance(annotation, dict) else '?'}"
        if not isinstance(annotation, dict) or annotation.get("image_id") not in images:
            raise DatasetError(f"{where}: its image_id is not among the images")
        if annotation.get("category_id") not in categories:
            raise DatasetError(f"{where}: category_id {annotation.get('category_id')!r} is not among the categories")
        bbox = annotation.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise DatasetError(f"{where}: bbox {bbox!r} is not [x, y, width, height]")
        x, y, w, h = (_number(v, where) for v in bbox)
        objects[annotation["image_id"]].append(([x, y, x + w, y + h], categories[annotation["category_id"]],
                                                bool(annotation.get("iscrowd", 0))))
    root = Path(images_dir) if images_dir is not None else coco_images_dir(
        json_path, next((entry["file_name"] for entry in images.values()), None))
    found = []
    for key, entry in images.items():
        rows = objects[key]
        size = None
        if "width" in entry and "height" in entry:
            size = (int(_number(entry["width"], str(json_path))), int(_number(entry["height"], str(json_path))))
        path = root / entry["file_name"]
        found.append(_image(path, Path(entry["file_name"]).with_suffix("").as_posix(), [r[0] for r in rows],
                            [r[1] for r in rows], [r[2] for r in rows], json_path, size=size))
    return SourceDataset(sorted(found, key=lambda image: image.name))


# ---------------------------------------------------------------------------------------------
# YOLO


def _strip_comment(text: str) -> str:
    return re.sub(r"\s+#.*$", "", text).strip()


def _scalar(text: str) -> str:
    """A YAML scalar: quotes removed (``''`` inside single quotes is one quote)."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] == "'":
        return text[1:-1].replace("''", "'")
    if len(text) >= 2 and text[0] == text[-1] == '"':
        try:
            return json.loads(text)  # YAML's double-quoted escapes are JSON's, mostly
        except ValueError:
            return text[1:-1]
    return text


_FLOW_ITEM = re.compile(r"\s*('(?:[^']|'')*'|\"(?:[^\"\\]|\\.)*\"|[^,]+?)\s*(?:,|$)")


def _flow_items(text: str) -> list[str]:
    """The comma-separated items of a YAML flow collection's inside (quotes respected)."""
    return [match.group(1) for match in _FLOW_ITEM.finditer(text) if match.group(1).strip()]


def _names_from_pairs(pairs: list[tuple[str, str]], where: Path) -> list[str]:
    """Class names from ``index: name`` pairs; the indices must be 0..K-1."""
    try:
        mapping = {int(key): _scalar(value) for key, value in pairs}
    except ValueError:
        raise DatasetError(f"{where}: names must map class indices 0, 1, ... to names") from None
    if sorted(mapping) != list(range(len(mapping))):
        raise DatasetError(f"{where}: names' indices {sorted(mapping)} are not 0..{len(mapping) - 1}")
    return [mapping[k] for k in range(len(mapping))]


def parse_yaml_names(text: str, where: Path) -> list[str] | None:
    """The ``names:`` of an ultralytics data YAML without a YAML library: a flow list
    (``[a, b]``), a flow mapping (``{0: a, 1: b}``), a block list (``- a``) or a block mapping
    (``0: a``); None when the file has no top-level ``names``. ``DatasetError`` for another form."""
    lines = text.splitlines()
    for number, line in enumerate(lines):
        match = re.match(r"names\s*:(.*)$", line)
        if not match:
            continue
        rest = _strip_comment(match.group(1))
        if rest.startswith("[") and rest.endswith("]"):
            return [_scalar(item) for item in _flow_items(rest[1:-1])]
        if rest.startswith("{") and rest.endswith("}"):
            return _names_from_pairs([tuple(item.split(":", 1)) for item in _flow_items(rest[1:-1])  # type: ignore[misc]
                                      if ":" in item], where)
        if rest:
            break
        items, pairs = [], []
        for block in lines[number + 1:]:
            if not block.strip() or block.lstrip().startswith("#"):
                continue
            if not block[0].isspace():
                break
            entry = _strip_comment(block)
            if entry.startswith("- "):
                items.append(_scalar(entry[2:]))
            elif ":" in entry:
                pairs.append(tuple(entry.split(":", 1)))
            else:
                break
        if items and not pairs:
            return items
        if pairs and not items:
            return _names_from_pairs(pairs, where)  # type: ignore[arg-type]
        break
    else:
        return None
    raise DatasetError(f"{where}: cannot read its names: (expected a list or an index: name mapping); "
                       "write the class names to classes.txt instead, one per line")


def yolo_class_names(root: Path) -> list[str]:
    """The class names of the YOLO dataset at ``root``: ``data.yaml``'s (or another top-level
    ``*.yaml``'s) ``names``, else ``classes.txt`` (in ``root`` or ``root/labels``)."""
    yamls = sorted(root.glob("*.yaml")) + sorted(root.glob("*.yml"))
    yamls.sort(key=lambda p: p.stem != "data")
    for path in yamls:
        try:
            names = parse_yaml_names(path.read_text(encoding="utf-8"), path)
        except (OSError, UnicodeDecodeError) as exc:
            raise DatasetError(f"{path}: cannot read it as UTF-8 text ({exc})") from None
        if names is not None:
            return names
    for path in (root / "classes.txt", root / "labels" / "classes.txt"):
        if path.is_file():
            try:
                return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            except (OSError, UnicodeDecodeError) as exc:
                raise DatasetError(f"{path}: cannot read it as UTF-8 text ({exc})") from None
    raise DatasetError(f"{root}: no data.yaml with names: and no classes.txt; list the class names in one of them")


def _yolo_label_path(image: Path, root: Path) -> Path:
    """ultralytics' rule: the last ``images`` folder of the path becomes ``labels``, suffix ``.txt``."""
    parts = list(image.relative_to(root).parts)
    index = len(parts) - 1 - parts[::-1].index("images")
    parts[index] = "labels"
    return root.joinpath(*parts).with_suffix(".txt")


def _yolo_boxes(label_path: Path, classes: list[str], size: tuple[int, int]) -> tuple[list, list[str]]:
    """The pixel boxes and names of one label file (normalised cx, cy, w, h or a polygon)."""
    width, height = size
    boxes, names = [], []
    try:
        text = label_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return boxes, names
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{label_path}: cannot read it as UTF-8 text ({exc})") from None
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        try:
            values = [float(v) for v in fields]
        except ValueError:
            values = []
        if len(values) < 5 or (len(values) > 5 and len(values) % 2 == 0) or not all(map(math.isfinite, values)) \
                or values[0] != int(values[0]) or not 0 <= values[0] < len(classes):
            raise DatasetError(f"{label_path}:{number}: expected 'class cx cy w h' with class in "
                               f"0..{len(classes) - 1}, found {line.strip()!r}")
        if len(values) == 5:
            cx, cy, w, h = values[1:]
            box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
        else:
            xs, ys = values[1::2], values[2::2]
            box = [min(xs), min(ys), max(xs), max(ys)]
        boxes.append([box[0] * width, box[1] * height, box[2] * width, box[3] * height])
        names.append(classes[int(values[0])])
    return boxes, names


def read_yolo(root: str | os.PathLike, image_size: Callable[[Path], tuple[int, int]]) -> SourceDataset:
    """The images and boxes of an ultralytics YOLO dataset (module docstring); ``image_size``
    gives an image's (width, height), needed to turn normalised boxes into pixels."""
    root = Path(root)
    classes = yolo_class_names(root)
    if not classes:
        raise DatasetError(f"{root}: the class name list is empty")
    files = [p for p in _image_files(root) if "images" in p.relative_to(root).parts[:-1]]
    if not files:
        raise DatasetError(f"{root}: no images under an images/ folder; expected the ultralytics layout "
                           "images/ and labels/ (optionally with train/ and val/ inside)")
    found = []
    for path in files:
        folders = path.relative_to(root).parts[:-1]
        subset = next((SUBSETS[part.lower()] for part in folders if part.lower() in SUBSETS), None)
        size = image_size(path)
        boxes, names = _yolo_boxes(_yolo_label_path(path, root), classes, size)
        name = "/".join(part for part in Path(_relative_name(path, root)).parts if part != "images")
        found.append(_image(path, name, boxes, names, [False] * len(names), path, size=size, subset=subset))
    return SourceDataset(found)


# ---------------------------------------------------------------------------------------------
# labelme


def _labelme_box(shape: dict, where: Path) -> list[float] | None:
    """The bounding box of one labelme shape, or None for a shape type without an area."""
    kind = shape.get("shape_type") or "polygon"
    points = shape.get("points")
    if kind not in LABELME_BOX_SHAPES:
        return None
    try:
        array = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    except (TypeError, ValueError):
        array = np.zeros((0, 2))
    if len(array) < (1 if kind == "mask" else 2):
        raise DatasetError(f"{where}: {kind} shape {shape.get('label')!r} has points {points!r}; fix the file")
    if kind == "circle":
        radius = float(np.hypot(*(array[1] - array[0])))
        return [array[0, 0] - radius, array[0, 1] - radius, array[0, 0] + radius, array[0, 1] + radius]
    return [*array.min(axis=0), *array.max(axis=0)]


def read_labelme(root: str | os.PathLike) -> SourceDataset:
    """The images and boxes of a folder of labelme JSON files (module docstring)."""
    root = Path(root)
    files = _visible(root, "*.json")
    if not files:
        raise DatasetError(f"{root}: no labelme .json files found")
    found, skipped = [], {}
    for path in files:
        data = _read_json(path)
        if not isinstance(data, dict) or not isinstance(data.get("shapes"), list) \
                or not isinstance(data.get("imagePath"), str):
            raise DatasetError(f"{path}: not a labelme file (needs \"shapes\" and \"imagePath\")")
        boxes, names, difficult = [], [], []
        for shape in data["shapes"]:
            if not isinstance(shape, dict):
                raise DatasetError(f"{path}: shape {shape!r} is not an object")
            box = _labelme_box(shape, path)
            if box is None:
                reason = f"labelme {shape.get('shape_type')} shapes (no area)"
                skipped[reason] = skipped.get(reason, 0) + 1
                continue
            boxes.append(box)
            names.append(shape.get("label"))
            difficult.append(bool(shape.get("difficult", False)))
        size = None
        if isinstance(data.get("imageWidth"), int) and isinstance(data.get("imageHeight"), int):
            size = (data["imageWidth"], data["imageHeight"])
        image = path.parent / data["imagePath"].replace("\\", "/")
        found.append(_image(image, _relative_name(path, root), boxes, names, difficult, path, size=size))
    return SourceDataset(found, skipped)


# ---------------------------------------------------------------------------------------------
# VOC files side by side


def read_voc_flat(root: str | os.PathLike) -> SourceDataset:
    """The images and boxes of VOC XML files beside their images (module docstring). Boxes come
    through ``sppdet.data.voc.read_annotation`` (already clipped to the stated size)."""
    root = Path(root)
    xmls = _visible(root, "*.xml")
    if not xmls:
        raise DatasetError(f"{root}: no .xml annotations found")
    images = _image_files(root)
    by_stem = {(p.parent, p.stem): p for p in reversed(images)}  # the first suffix in sorted order wins
    found, used = [], set()
    for xml in xmls:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # clipped boxes are counted when the dataset is written
            annotation = read_annotation(xml)
        image = by_stem.get((xml.parent, xml.stem))
        if image is None and annotation.filename:
            image = xml.parent / Path(annotation.filename).name
        if image is None or not image.is_file():
            raise DatasetError(f"{xml}: no image {xml.stem}.* beside it"
                               f"{f' and no {annotation.filename}' if annotation.filename else ''}; "
                               "put the image next to its XML")
        used.add(image)
        found.append(_image(image, _relative_name(xml, root), annotation.boxes, list(annotation.names),
                            list(annotation.difficult), xml, size=(annotation.width, annotation.height)))
    unused = sum(1 for p in images if p not in used)
    return SourceDataset(found, {"images without an XML": unused} if unused else {})


def read_source(fmt: str, source: str | os.PathLike, image_size: Callable[[Path], tuple[int, int]],
                images_dir: str | os.PathLike | None = None) -> SourceDataset:
    """The images of ``source`` in format ``fmt`` (one of :data:`FORMATS`); ``DatasetError``
    naming ``source`` when it is not the file or folder the format needs."""
    source = Path(source).expanduser()
    if fmt not in FORMATS:
        raise DatasetError(f"format {fmt!r}: choose from {', '.join(FORMATS)}")
    if fmt == "coco":
        if not source.is_file():
            raise DatasetError(f"{source}: not a file; --format coco reads an instances JSON file")
        return read_coco(source, images_dir)
    if images_dir is not None:
        raise DatasetError(f"--images is for --format coco only; {fmt} finds images beside the annotations")
    if not source.is_dir():
        raise DatasetError(f"{source}: not a folder; --format {fmt} reads a folder")
    if fmt == "yolo":
        return read_yolo(source, image_size)
    if fmt == "labelme":
        return read_labelme(source)
    return read_voc_flat(source)
