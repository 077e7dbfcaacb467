"""``sppdet data check``: what a VOC-layout dataset holds and what is wrong with it (no rendering).

The images checked are those listed in any ``ImageSets/Main/*.txt`` (or every
``Annotations/*.xml`` when there is no split file). Per class (:class:`ClassReport`): objects,
images holding one, the 10th/50th/90th percentile of the object side ``sqrt(w * h)`` (px, boxes
clipped to the image as ``sppdet.data.voc`` reads them), tiny objects (side under
:data:`TINY_SIDE` px), truncated and difficult ones. Over the dataset (:class:`DatasetReport`):

- errors (:attr:`DatasetReport.errors`): split files or annotations that cannot be read, listed
  images without annotation or image file, images that cannot be decoded (``sppdet.data.images.
  load_bgr``), an image whose size differs from its annotation's, boxes reaching outside the image
  (the reader clips them), boxes with no area (the reader drops them);
- notes: images with identical bytes (SHA-256; a duplicate across splits leaks test images into
  training), images without objects.
"""

from __future__ import annotations

import hashlib
import os
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from sppdet.data.images import load_bgr
from sppdet.data.voc import VOC_CLASSES, find_image, read_annotation, read_split
from sppdet.errors import DatasetError

TINY_SIDE = 16.0


@dataclass(frozen=True)
class ClassReport:
    """One class: ``objects``, ``images`` holding one, object side percentiles ``side_p10``,
    ``side_p50``, ``side_p90`` (px), and how many objects are ``tiny``, ``truncated``, ``difficult``."""

    name: str
    objects: int
    images: int
    side_p10: float
    side_p50: float
    side_p90: float
    tiny: int
    truncated: int
    difficult: int


@dataclass(frozen=True)
class Problem:
    """Something wrong with one image (or file): its id (or file name) and what."""

    image_id: str
    message: str


@dataclass
class DatasetReport:
    """The whole check (module docstring). ``splits``: images per split file; ``images``: images
    checked; ``duplicates``: groups of image ids with identical image bytes."""

    root: Path
    splits: dict[str, int]
    images: int
    classes: list[ClassReport] = field(default_factory=list)
    unreadable_files: list[Problem] = field(default_factory=list)
    missing: list[Problem] = field(default_factory=list)
    corrupt: list[Problem] = field(default_factory=list)
    size_mismatch: list[Problem] = field(default_factory=list)
    outside: list[Problem] = field(default_factory=list)
    empty_boxes: list[Problem] = field(default_factory=list)
    duplicates: list[list[str]] = field(default_factory=list)
    without_objects: list[str] = field(default_factory=list)

    @property
    def errors(self) -> int:
        """How many error entries there are (duplicates and images without objects are notes)."""
        return sum(len(problems) for problems in (self.unreadable_files, self.missing, self.corrupt,
                                                  self.size_mismatch, self.outside, self.empty_boxes))


@dataclass(frozen=True)
class _Objects:
    """The objects of one annotation as written: raw continuous boxes float64 ``[G, 4]`` (before
    clipping), names, difficult and truncated flags ``[G]``."""

    boxes: np.ndarray
    names: tuple[str, ...]
    difficult: np.ndarray
    truncated: np.ndarray


def _flag(node: ET.Element, tag: str) -> bool:
    child = node.find(tag)
    return child is not None and child.text is not None and child.text.strip() not in ("", "0", "false", "False")


def _raw_objects(path: Path) -> _Objects:
    """The objects of a VOC XML that ``read_annotation`` accepted, unclipped (same 1-based ->
    continuous conversion as ``sppdet.data.voc``), with their truncated flags."""
    boxes, names, difficult, truncated = [], [], [], []
    for obj in ET.parse(path).getroot().iter("object"):
        bndbox = obj.find("bndbox")
        xmin, ymin, xmax, ymax = (float(bndbox.find(tag).text) for tag in ("xmin", "ymin", "xmax", "ymax"))
        boxes.append((xmin - 1.0, ymin - 1.0, xmax, ymax))
        names.append(obj.find("name").text.strip())
        difficult.append(_flag(obj, "difficult"))
        truncated.append(_flag(obj, "truncated"))
    return _Objects(np.array(boxes, np.float64).reshape(-1, 4), tuple(names), np.array(difficult, bool),
                    np.array(truncated, bool))


def _listed_ids(root: Path, report: DatasetReport) -> list[str]:
    """Ids of every split file (first-seen order), or of every annotation when there is none."""
    split_files = sorted((root / "ImageSets" / "Main").glob("*.txt"))
    if not split_files:
        return sorted(p.stem for p in (root / "Annotations").glob("*.xml"))
    ids: dict[str, None] = {}
    for path in split_files:
        try:
            listed = read_split(root, path.stem)
        except DatasetError as exc:
            report.unreadable_files.append(Problem(path.name, str(exc)))
            continue
        report.splits[path.stem] = len(listed)
        ids.update(dict.fromkeys(listed))
    return list(ids)


def _class_order(names: set[str]) -> list[str]:
    """VOC's order when every name is a VOC class, else sorted (as ``sppdet.data.voc`` lists them)."""
    if names <= set(VOC_CLASSES):
        return [name for name in VOC_CLASSES if name in names]
    return sorted(names)


def _image_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_dataset(root: str | os.PathLike, progress: Callable[..., None] | None = None) -> DatasetReport:
    """Check the VOC-layout dataset at ``root`` (module docstring); ``progress(n)`` is called per
    image. Reads every annotation and decodes every image; raises only when ``root`` is no folder."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder; give the root of a VOC-layout dataset")
    report = DatasetReport(root=root, splits={}, images=0)
    ids = _listed_ids(root, report)
    if not ids:
        raise DatasetError(f"{root}: no split files and no Annotations/*.xml; is this a VOC-layout dataset?")
    report.images = len(ids)
    per_class: dict[str, list] = {}
    hashes: dict[str, list[str]] = {}
    for image_id in ids:
        _check_image(root, image_id, report, per_class, hashes)
        if progress is not None:
            progress(1)
    report.duplicates = [group for group in hashes.values() if len(group) > 1]
    for name in _class_order(set(per_class)):
        rows = per_class[name]
        sides = np.array([row[1] for row in rows])
        p10, p50, p90 = (float(v) for v in np.percentile(sides, [10, 50, 90]))
        report.classes.append(ClassReport(
            name=name, objects=len(rows), images=len({row[0] for row in rows}), side_p10=p10, side_p50=p50,
            side_p90=p90, tiny=int((sides < TINY_SIDE).sum()), truncated=sum(row[2] for row in rows),
            difficult=sum(row[3] for row in rows)))
    return report


def _check_image(root: Path, image_id: str, report: DatasetReport, per_class: dict[str, list],
                 hashes: dict[str, list[str]]) -> None:
    """Check one listed image, adding its problems to ``report``, its objects to ``per_class``
    (name -> [(image id, side, truncated, difficult)]) and its content hash to ``hashes``."""
    xml = root / "Annotations" / f"{image_id}.xml"
    if not xml.is_file():
        report.missing.append(Problem(image_id, f"{xml}: no annotation"))
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # clipped and dropped boxes are reported below
            annotation = read_annotation(xml)
    except DatasetError as exc:
        report.unreadable_files.append(Problem(image_id, str(exc)))
        return
    objects = _raw_objects(xml)
    width, height = annotation.width, annotation.height
    clipped = objects.boxes.copy()
    clipped[:, 0::2] = np.clip(clipped[:, 0::2], 0, width)
    clipped[:, 1::2] = np.clip(clipped[:, 1::2], 0, height)
    keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    outside = (np.abs(clipped - objects.boxes) > 1e-6).any(axis=1) & keep
    if outside.any():
        report.outside.append(Problem(image_id, f"{xml}: {int(outside.sum())} box(es) reach outside the "
                                                f"{width} x {height} image"))
    if not keep.all():
        report.empty_boxes.append(Problem(image_id, f"{xml}: {int((~keep).sum())} box(es) with no area "
                                                    "inside the image (the reader drops them)"))
    sides = np.sqrt((clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1]))
    for k in np.flatnonzero(keep):
        per_class.setdefault(objects.names[k], []).append(
            (image_id, float(sides[k]), bool(objects.truncated[k]), bool(objects.difficult[k])))
    if not keep.any():
        report.without_objects.append(image_id)
    image = find_image(root, image_id, annotation.filename)
    if image is None:
        report.missing.append(Problem(image_id, f"{root / 'JPEGImages' / image_id}.*: no image"))
        return
    hashes.setdefault(_image_hash(image), []).append(image_id)
    try:
        pixels = load_bgr(image)
    except DatasetError as exc:
        report.corrupt.append(Problem(image_id, str(exc)))
        return
    if pixels.shape[:2] != (height, width):
        report.size_mismatch.append(Problem(image_id, f"{image}: image is {pixels.shape[1]} x {pixels.shape[0]}, "
                                                      f"its annotation says {width} x {height}"))
