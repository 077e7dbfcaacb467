"""``sppdet data import``: a dataset of another format (``sppdet.data.importers``) written in
Pascal VOC layout, all or nothing.

    OUT/JPEGImages/<id>.<ext>         hard link to (or copy of) the source image
    OUT/Annotations/<id>.xml          VOC XML (``sppdet.data.voc.write_annotation``)
    OUT/ImageSets/Main/<split>.txt    train, val, test and trainval (= train + val); empty ones left out
    OUT/import.json                   what was imported from where, and the split rule

Rules:

- **Image ids** come from the source file names (:func:`image_ids`): the file stem made safe by
  ``sppdet.fileio.safe_file_stem`` (only letters, digits, ``-`` and ``_``; a hash is appended when
  anything changed), so no name from a dataset can place a file outside OUT. Stems shared by
  several images (``train/a.jpg``, ``val/a.jpg``) use the whole relative path instead, and a clash
  left after that (also ignoring case) gets ``-2``, ``-3``, ... in the order of the source names.
- **Images** keep their format when ``sppdet.data.voc`` reads it (``IMAGE_SUFFIXES``; the suffix
  is written in lower case); others are decoded and written as JPEG. The image size is read from
  the file's header; a source stating another size is an error (its boxes would be off).
- **Boxes** are clipped to the image; a box empty once rounded to VOC's whole pixels is dropped.
  Both are counted in the summary.
- **Splits**: a source that ships one (every image in a train, val or test folder, and some in
  train: ``sppdet.data.importers.SUBSETS``) keeps it unless ``ratios`` are given or ``resplit``;
  otherwise ``sppdet.data.stratify.stratified_split`` with the ratios (default 0.6, 0.2, 0.2).
- **All or nothing**: the sources are read and checked first, then everything is written into
  ``OUT.partial-<random>`` beside OUT, which is renamed to OUT at the end and removed on any
  failure. OUT must not exist or be an empty folder.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from sppdet.data.images import IMAGE_SUFFIXES, check_image_size, header_size, load_bgr
from sppdet.data.importers import SourceImage, read_source
from sppdet.data.stratify import DEFAULT_RATIOS, SPLIT_NAMES, stratified_split
from sppdet.data.voc import Annotation, write_annotation, write_split
from sppdet.errors import DatasetError
from sppdet.fileio import atomic_write_bytes, atomic_write_json, safe_file_stem

IMPORT_RECORD = "import.json"


@dataclass
class ImportSummary:
    """What ``import_dataset`` wrote: counts per class (``objects``, ``difficult``), images without
    objects (``negatives``), boxes clipped to the image and dropped as empty, images converted to
    JPEG, copied (the rest hard-linked), skipped source items by reason, images per split and the
    split rule in words."""

    root: Path
    format: str
    images: int
    objects: dict[str, int]
    difficult: dict[str, int]
    negatives: int
    clipped: int
    dropped: int
    converted: int
    copied: int
    skipped: dict[str, int] = field(default_factory=dict)
    splits: dict[str, int] = field(default_factory=dict)
    split_rule: str = ""


def check_output(out: str | os.PathLike) -> Path:
    """``out`` resolved, if it is new or an empty folder; else ``DatasetError`` naming it."""
    root = Path(out).expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise DatasetError(f"{root}: exists and is not a folder; choose a new output folder")
    if root.is_dir() and any(root.iterdir()):
        raise DatasetError(f"{root}: folder is not empty; choose a new or empty output folder "
                           "(sppdet data import never overwrites)")
    return root


def image_ids(names: Sequence[str]) -> list[str]:
    """Unique, file-name-safe image ids for the source ``names`` (relative paths without suffix,
    ``/``-separated), by the rule of the module docstring; same order as ``names``."""
    stems = [safe_file_stem(name.rsplit("/", 1)[-1]) for name in names]
    shared = Counter(stem.casefold() for stem in stems)
    wanted = [stem if shared[stem.casefold()] == 1 else safe_file_stem(name.replace("/", "_"))
              for name, stem in zip(names, stems)]
    counts = Counter(w.casefold() for w in wanted)
    ids: list[str | None] = [w if counts[w.casefold()] == 1 else None for w in wanted]
    taken = {i.casefold() for i in ids if i is not None}
    for index, base in enumerate(wanted):
        if ids[index] is None:
            candidate, number = base, 2
            while candidate.casefold() in taken:
                candidate, number = f"{base}-{number}", number + 1
            ids[index] = candidate
            taken.add(candidate.casefold())
    return ids  # type: ignore[return-value]


class ImageSizes:
    """``(width, height)`` of image files from their headers (decoded when the header says
    nothing), each read once; ``DatasetError`` naming a missing, unreadable or oversized image."""

    def __init__(self) -> None:
        self._sizes: dict[Path, tuple[int, int]] = {}

    def __call__(self, path: Path) -> tuple[int, int]:
        if path not in self._sizes:
            if not path.is_file():
                raise DatasetError(f"{path}: image not found; check the annotation's image path")
            size = header_size(path)
            if size is None or min(size) <= 0:
                image = load_bgr(path)
                size = (image.shape[1], image.shape[0])
            check_image_size(path, *size)
            self._sizes[path] = (int(size[0]), int(size[1]))
        return self._sizes[path]


@dataclass(frozen=True)
class _Planned:
    """One image to write: its id, source, output file name and annotation; counts of its boxes
    clipped and dropped."""

    image_id: str
    source: Path
    filename: str
    annotation: Annotation
    subset: str | None
    clipped: int
    dropped: int


def _plan(image: SourceImage, image_id: str, sizes: ImageSizes) -> _Planned:
    """The image's boxes clipped to its real size, empty ones dropped (module docstring)."""
    width, height = sizes(image.path)
    if image.size is not None and tuple(image.size) != (width, height):
        raise DatasetError(f"{image.path}: the annotation says {image.size[0]} x {image.size[1]} but the image "
                           f"is {width} x {height}; fix the annotation's size (its boxes would be off)")
    boxes = image.boxes.copy()
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, width)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, height)
    moved = (np.abs(boxes - image.boxes) > 1e-6).any(axis=1)
    rounded = np.round(boxes)
    keep = (rounded[:, 2] > rounded[:, 0]) & (rounded[:, 3] > rounded[:, 1])
    suffix = image.path.suffix.lower()
    filename = image_id + (suffix if suffix in IMAGE_SUFFIXES else ".jpg")
    annotation = Annotation(image_id=image_id, width=width, height=height, boxes=boxes[keep].astype(np.float32),
                            names=tuple(n for n, k in zip(image.names, keep) if k), difficult=image.difficult[keep],
                            filename=filename)
    return _Planned(image_id, image.path, filename, annotation, image.subset,
                    int((moved & keep).sum()), int((~keep).sum()))


def _splits(planned: list[_Planned], ratios: Sequence[float] | None, seed: int,
            resplit: bool) -> tuple[dict[str, list[str]], str]:
    """Image ids per split and the rule used (module docstring); trainval is train + val."""
    subsets = {p.image_id: p.subset for p in planned}
    shipped = not resplit and ratios is None and None not in subsets.values() and "train" in subsets.values()
    if shipped:
        splits = {name: sorted(i for i, s in subsets.items() if s == name) for name in SPLIT_NAMES}
        rule = "the source's own train/val/test folders"
    else:
        ratios = tuple(ratios or DEFAULT_RATIOS)
        splits = stratified_split({p.image_id: p.annotation.names for p in planned}, ratios, seed)
        rule = (f"stratified by class, train/val/test {ratios[0]:g}/{ratios[1]:g}/{ratios[2]:g}, seed {seed}")
    splits["trainval"] = sorted(splits["train"] + splits["val"])
    return {name: ids for name, ids in splits.items() if ids}, rule


def _place_image(item: _Planned, folder: Path, copy: bool) -> tuple[bool, bool]:
    """Put ``item``'s image into ``folder``: hard link (a copy across file systems or with
    ``copy``), or a JPEG re-encoding for a format VOC readers do not take; (copied, converted)."""
    target = folder / item.filename
    if item.source.suffix.lower() not in IMAGE_SUFFIXES:
        import cv2

        image = load_bgr(item.source)
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
        if not ok:
            raise DatasetError(f"{item.source}: OpenCV cannot re-encode it as JPEG")
        atomic_write_bytes(target, data.tobytes())
        return True, True
    if not copy:
        try:
            os.link(item.source, target)
            return False, False
        except OSError:
            pass  # another file system, or links not allowed: copy instead
    shutil.copyfile(item.source, target)
    return True, False


def import_dataset(fmt: str, source: str | os.PathLike, out: str | os.PathLike, ratios: Sequence[float] | None = None,
                   seed: int = 0, copy: bool = False, images_dir: str | os.PathLike | None = None,
                   resplit: bool = False, progress: Callable[..., None] | None = None) -> ImportSummary:
    """Read ``source`` in format ``fmt`` and write it to ``out`` in VOC layout (module docstring);
    ``progress(n)`` is called as images are written. ``DatasetError`` naming the file for bad
    input, with nothing written."""
    root = check_output(out)
    sizes = ImageSizes()
    found = read_source(fmt, source, sizes, images_dir)
    if not found.images:
        raise DatasetError(f"{source}: no images found to import")
    ids = image_ids([image.name for image in found.images])
    planned = [_plan(image, image_id, sizes) for image, image_id in zip(found.images, ids)]
    planned.sort(key=lambda p: p.image_id)
    splits, rule = _splits(planned, ratios, seed, resplit)
    objects, difficult = Counter(), Counter()
    for item in planned:
        objects.update(item.annotation.names)
        difficult.update(n for n, d in zip(item.annotation.names, item.annotation.difficult) if d)
    summary = ImportSummary(
        root=root, format=fmt, images=len(planned), objects=dict(sorted(objects.items())),
        difficult=dict(sorted(difficult.items())), negatives=sum(1 for p in planned if not p.annotation.names),
        clipped=sum(p.clipped for p in planned), dropped=sum(p.dropped for p in planned), converted=0, copied=0,
        skipped=dict(found.skipped), splits={name: len(ids) for name, ids in splits.items()}, split_rule=rule)

    root.parent.mkdir(parents=True, exist_ok=True)
    partial = root.parent / f"{root.name}.partial-{secrets.token_hex(4)}"
    try:
        (partial / "JPEGImages").mkdir(parents=True)
        for item in planned:
            copied, converted = _place_image(item, partial / "JPEGImages", copy)
            summary.copied += copied
            summary.converted += converted
            write_annotation(partial / "Annotations" / f"{item.image_id}.xml", item.annotation)
            if progress is not None:
                progress(1)
        for name, split_ids in splits.items():
            write_split(partial, name, split_ids)
        atomic_write_json(partial / IMPORT_RECORD, {**asdict(summary), "root": str(root),
                                                    "source": str(Path(source).expanduser().resolve())})
        if root.is_dir():
            root.rmdir()  # the empty folder check_output accepted
        os.rename(partial, root)
    except OSError as exc:
        shutil.rmtree(partial, ignore_errors=True)
        where = str(exc.filename or "")
        if where.startswith(str(partial)):  # name the file the user asked for, not the removed folder
            raise OSError(exc.errno, exc.strerror, str(root) + where[len(str(partial)):]) from None
        raise
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return summary
