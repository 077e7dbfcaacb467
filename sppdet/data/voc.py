"""Reading and writing datasets in Pascal VOC layout.

    ROOT/Annotations/<id>.xml          one XML per image (size, objects with bndbox)
    ROOT/JPEGImages/<id>.jpg           the image (<filename> in the XML wins; .png etc. accepted)
    ROOT/ImageSets/Main/<split>.txt    one image id per line

Boxes: VOC stores 1-based inclusive integer pixels ``(xmin, ymin, xmax, ymax)``. This module is
the only place they are converted to sppdet's continuous 0-based boxes
``(xmin - 1, ymin - 1, xmax, ymax)`` (see ``sppdet.structures.boxes``) and back again in the writer.

Classes: the 20 VOC classes (in the devkit's order) when every name found is a VOC class;
otherwise the sorted set of names in the ``trainval`` annotations (``train`` and ``val`` if there
is no trainval; all listed splits if there is neither), or an explicit list. Label index 0 is
background; class ``classes[k - 1]`` has label ``k``.
"""

from __future__ import annotations

import os
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from sppdet.data.identity import split_digest
from sppdet.data.images import IMAGE_SUFFIXES
from sppdet.errors import DatasetError, SppdetWarning

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)


class DatasetWarning(SppdetWarning):
    """Something in a dataset was repaired (e.g. boxes clipped or dropped)."""


@dataclass(frozen=True)
class Annotation:
    """One image's ground truth. ``boxes`` float32 ``[G, 4]`` (x1, y1, x2, y2), continuous
    0-based pixels; ``names`` the G class names; ``difficult`` bool ``[G]``."""

    image_id: str
    width: int
    height: int
    boxes: np.ndarray
    names: tuple[str, ...]
    difficult: np.ndarray
    filename: str | None = None

    def labels(self, classes: Sequence[str]) -> np.ndarray:
        """int64 ``[G]`` labels in 1..K for ``classes`` (0 is background); unknown names -> -1."""
        index = {name: k + 1 for k, name in enumerate(classes)}
        return np.array([index.get(name, -1) for name in self.names], dtype=np.int64)


def _text(node: ET.Element, tag: str, path: Path, required: bool = True) -> str | None:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        if required:
            raise DatasetError(f"{path}: missing <{tag}>; every VOC annotation needs it")
        return None
    return child.text.strip()


def _number(node: ET.Element, tag: str, path: Path) -> float:
    """The finite number in ``<tag>``; NaN, infinity or any other text is a ``DatasetError``
    (a NaN size or coordinate would otherwise pass every comparison and poison the boxes)."""
    text = _text(node, tag, path)
    try:
        value = float(text)
    except ValueError:
        raise DatasetError(f"{path}: <{tag}> is {text!r}, not a number; fix the annotation") from None
    if not np.isfinite(value):
        raise DatasetError(f"{path}: <{tag}> is {text!r}, not a finite number; fix the annotation")
    return value


def _parse_xml(path: Path) -> ET.Element:
    """The root element of the XML file ``path``; any way of failing to read, decode or parse it
    is one ``DatasetError`` naming the file."""
    try:
        return ET.parse(path).getroot()
    except FileNotFoundError:
        raise DatasetError(f"{path}: annotation file not found; check the split file and Annotations/") from None
    except ET.ParseError as exc:
        raise DatasetError(f"{path}: malformed XML ({exc}); fix or regenerate the annotation") from None
    except (UnicodeError, LookupError) as exc:  # undecodable bytes, or an unknown declared encoding
        raise DatasetError(f"{path}: cannot decode the XML ({exc}); save it as UTF-8") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read the annotation ({exc.strerror or exc})") from None


def read_annotation(path: str | os.PathLike) -> Annotation:
    """Parse one VOC XML file; boxes are clipped to the image and empty ones dropped (warned)."""
    path = Path(path)
    root = _parse_xml(path)
    size = root.find("size")
    if size is None:
        raise DatasetError(f"{path}: missing <size>; every VOC annotation needs it")
    width, height = int(_number(size, "width", path)), int(_number(size, "height", path))
    if width <= 0 or height <= 0:
        raise DatasetError(f"{path}: image size {width}x{height} is not positive")

    boxes, names, difficult = [], [], []
    for obj in root.iter("object"):
        name = _text(obj, "name", path)
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise DatasetError(f"{path}: object {name!r} has no <bndbox>")
        xmin, ymin, xmax, ymax = (_number(bndbox, tag, path) for tag in ("xmin", "ymin", "xmax", "ymax"))
        boxes.append((xmin - 1.0, ymin - 1.0, xmax, ymax))  # 1-based inclusive -> continuous
        names.append(name)
        flag = _text(obj, "difficult", path, required=False)
        difficult.append(flag is not None and flag not in ("0", "false", "False"))

    array = np.array(boxes, dtype=np.float32).reshape(-1, 4)
    array[:, 0::2] = np.clip(array[:, 0::2], 0, width)
    array[:, 1::2] = np.clip(array[:, 1::2], 0, height)
    keep = (array[:, 2] > array[:, 0]) & (array[:, 3] > array[:, 1])
    if not keep.all():
        warnings.warn(f"{path}: dropped {int((~keep).sum())} box(es) empty after clipping to the image",
                      DatasetWarning, stacklevel=2)
    return Annotation(
        image_id=path.stem, width=width, height=height, boxes=array[keep],
        names=tuple(n for n, k in zip(names, keep) if k),
        difficult=np.array(difficult, dtype=bool)[keep],
        filename=_text(root, "filename", path, required=False),
    )


def write_annotation(path: str | os.PathLike, annotation: Annotation, folder: str = "sppdet") -> None:
    """Write ``annotation`` as VOC XML (continuous boxes -> 1-based inclusive, rounded), atomically."""
    from sppdet.fileio import atomic_write_bytes

    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = folder
    ET.SubElement(root, "filename").text = annotation.filename or f"{annotation.image_id}.jpg"
    size = ET.SubElement(root, "size")
    for tag, value in (("width", annotation.width), ("height", annotation.height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    ET.SubElement(root, "segmented").text = "0"
    for box, name, hard in zip(annotation.boxes, annotation.names, annotation.difficult):
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = name
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = str(int(bool(hard)))
        bndbox = ET.SubElement(obj, "bndbox")
        x1, y1, x2, y2 = (int(round(float(v))) for v in box)
        for tag, value in (("xmin", x1 + 1), ("ymin", y1 + 1), ("xmax", x2), ("ymax", y2)):
            ET.SubElement(bndbox, tag).text = str(value)
    ET.indent(root)
    atomic_write_bytes(path, ET.tostring(root, encoding="utf-8") + b"\n")


def split_path(root: str | os.PathLike, split: str, split_dir: str | os.PathLike | None = None) -> Path:
    """The file listing ``split``: ``<split_dir>/<split>.txt`` when ``split_dir`` (a work
    directory's own splits, e.g. a validation split carved by ``sppdet train``) has it, else
    ``ROOT/ImageSets/Main/<split>.txt``."""
    if split_dir is not None and (Path(split_dir) / f"{split}.txt").is_file():
        return Path(split_dir) / f"{split}.txt"
    return Path(root) / "ImageSets" / "Main" / f"{split}.txt"


def _read_text(path: Path) -> str:
    """The UTF-8 text of the split file ``path``; undecodable bytes or a read error are one
    ``DatasetError`` naming it."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.object[exc.start:exc.start + 2]!r}); "
                           "a split file must be UTF-8 text, one image id per line") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read the split file ({exc.strerror or exc})") from None


def read_split(root: str | os.PathLike, split: str, split_dir: str | os.PathLike | None = None) -> list[str]:
    """The image ids listed in a split file (:func:`split_path`), in file order."""
    path = split_path(root, split, split_dir)
    if not path.is_file():
        available = sorted(p.stem for p in path.parent.glob("*.txt")) if path.parent.is_dir() else []
        hint = f"available: {', '.join(available)}" if available else "is the dataset root right?"
        raise DatasetError(f"{path}: split file not found ({hint})")
    ids = [line.split()[0] for line in _read_text(path).splitlines() if line.strip()]
    if not ids:
        raise DatasetError(f"{path}: split file lists no images")
    return ids


def write_split(root: str | os.PathLike, split: str, image_ids: Sequence[str]) -> None:
    """Write a split file atomically, one id per line."""
    from sppdet.fileio import atomic_write_text

    atomic_write_text(split_path(root, split), "".join(f"{i}\n" for i in image_ids))


def discover_classes(root: str | os.PathLike) -> tuple[str, ...]:
    """The class list of a dataset (see the module docstring for the rule)."""
    root = Path(root)
    listed = sorted(p.stem for p in (root / "ImageSets" / "Main").glob("*.txt"))
    training = [name for name in ("trainval", "train", "val") if name in listed]
    splits = training[:1] if training[:1] == ["trainval"] else training or listed
    names: set[str] = set()
    for split in splits:
        for image_id in read_split(root, split):
            names.update(read_annotation(root / "Annotations" / f"{image_id}.xml").names)
    if not names:
        raise DatasetError(f"{root}: no objects in the trainval annotations; cannot infer classes")
    if names <= set(VOC_CLASSES):
        return VOC_CLASSES
    return tuple(sorted(names))


class VocDataset:
    """One split of a VOC-layout dataset. Checks up front that every listed image has its
    annotation and (unless ``check_images=False``, for evaluation-only use) its image file;
    annotations are parsed on first use and kept."""

    def __init__(self, root: str | os.PathLike, split: str, classes: Sequence[str] | None = None,
                 check_images: bool = True, split_dir: str | os.PathLike | None = None):
        self.root = Path(root).expanduser().resolve()
        self.split = split
        self.split_file = split_path(self.root, split, split_dir)
        self.image_ids = read_split(self.root, split, split_dir)
        self.classes = tuple(classes) if classes is not None else discover_classes(self.root)
        self._annotations: dict[str, Annotation] = {}
        self._digest: str | None = None
        image_folder = self.root / "JPEGImages"
        image_stems = {p.stem for p in image_folder.iterdir()} if image_folder.is_dir() else set()
        for image_id in self.image_ids:
            xml = self.annotation_path(image_id)
            if not xml.is_file():
                raise DatasetError(f"{xml}: annotation for image {image_id!r} of split "
                                   f"{split!r} not found; fix {self.split_file}")
            if check_images and image_id not in image_stems:
                raise DatasetError(f"{image_folder / image_id}.jpg: image for {image_id!r} of split "
                                   f"{split!r} not found; fix {self.split_file}")

    def __len__(self) -> int:
        return len(self.image_ids)

    def annotation_path(self, image_id: str) -> Path:
        return self.root / "Annotations" / f"{image_id}.xml"

    def annotation(self, image_id: str) -> Annotation:
        """The parsed (and cached) annotation of one image."""
        if image_id not in self._annotations:
            self._annotations[image_id] = read_annotation(self.annotation_path(image_id))
        return self._annotations[image_id]

    def annotations(self) -> Iterator[Annotation]:
        for image_id in self.image_ids:
            yield self.annotation(image_id)

    def content_digest(self) -> str:
        """64 hex digits identifying what this split holds: its id list, the class list, every
        annotation file's bytes and every image's content (``sppdet.data.identity.split_digest``;
        an image that cannot be found counts as missing). Computed once per instance, so a stage
        opening the split computes it once; a stage that reads annotations puts it in its folder
        hash, so a changed annotation or image trains again instead of reusing the old model."""
        if self._digest is None:
            images = []
            for image_id in self.image_ids:
                try:
                    images.append(self.image_path(image_id))
                except DatasetError:
                    images.append(None)
            self._digest = split_digest(self.image_ids, self.classes,
                                        [self.annotation_path(i) for i in self.image_ids], images)
        return self._digest

    def image_path(self, image_id: str) -> Path:
        """The image file: ``<filename>`` from the XML if present, else ``<id>`` + a known suffix."""
        filename = self.annotation(image_id).filename
        found = find_image(self.root, image_id, filename)
        if found is None:
            folder = self.root / "JPEGImages"
            first = folder / (filename or f"{image_id}{IMAGE_SUFFIXES[0]}")
            raise DatasetError(f"{first}: image for {image_id!r} not found in {folder}")
        return found


def find_image(root: str | os.PathLike, image_id: str, filename: str | None = None) -> Path | None:
    """The image file of ``image_id`` in ``root/JPEGImages``: the annotation's ``<filename>`` if it
    names one that exists, else ``<id>`` + the first known suffix that exists; None if neither."""
    folder = Path(root) / "JPEGImages"
    candidates = ([folder / filename] if filename else []) + [folder / f"{image_id}{s}" for s in IMAGE_SUFFIXES]
    return next((c for c in candidates if c.is_file()), None)
