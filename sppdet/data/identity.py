"""What a dataset file is, cheaply: the signature of an image file, compared with a recorded one.

Every per-image cache (proposals, conv features, R-CNN vectors, object copies) records the
signature of the image file it was computed from, and is recomputed when the image's current
signature differs (``sppdet.workdir.caches``). A signature is a JSON object::

    {"size": bytes, "mtime_ns": modification time, "fast_hash": 32 hex digits}

``fast_hash`` is BLAKE2b (16 bytes) of the file size, its first 64 KiB and its last 64 KiB
(the whole file when it is at most 128 KiB). Why not a hash of every byte: a cached re-run
checks every image of the split, and a full hash reads the whole dataset (5,000 VOC images are
~500 MB) each time; the head holds the header (dimensions, colour type) and the tail the end of
the compressed stream, which changes with any re-encoding, so an image regenerated in place is
caught, while reading at most 128 KiB per image. Why not size + mtime alone: copying a dataset
(``cp`` without ``-p``, ``git checkout``, an unpacked archive) changes every mtime and nothing
else, and would recompute hours of features.

So the content (``size`` and ``fast_hash``) decides, and ``mtime_ns`` is only a shortcut: when
size and mtime equal the recorded ones the file is taken as unchanged without being read (as
``git status`` and ``make`` do); otherwise the fast hash is compared. What this misses, stated:
an edit that keeps the size, the first and last 64 KiB, and is made to a file larger than
128 KiB (an uncompressed BMP/TIFF edited in the middle), or one that also restores the mtime.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

#: Bytes read from each end of a file by :func:`fast_hash`.
EDGE_BYTES = 64 * 1024


def fast_hash(path: str | os.PathLike, size: int | None = None) -> str:
    """32 hex digits: BLAKE2b-128 of ``size`` (8 bytes, little-endian), the first and the last
    :data:`EDGE_BYTES` of the file (module docstring); ``size`` defaults to the file's."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size if size is None else size
        digest.update(int(size).to_bytes(8, "little"))
        digest.update(handle.read(EDGE_BYTES))
        if size > EDGE_BYTES:
            handle.seek(max(EDGE_BYTES, size - EDGE_BYTES))
            digest.update(handle.read(EDGE_BYTES))
    return digest.hexdigest()


def image_signature(path: str | os.PathLike) -> dict[str, Any]:
    """The signature ``{"size", "mtime_ns", "fast_hash"}`` of the file ``path`` (module docstring).

    Take it *before* reading the image: if the file changes meanwhile, the recorded signature is
    the old one and the next run recomputes (never the reverse)."""
    stat = os.stat(path)
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "fast_hash": fast_hash(path, stat.st_size)}


def content_of(signature: dict[str, Any]) -> dict[str, Any]:
    """The content part of a signature (size and fast hash, no mtime): what a digest of several
    files should cover, so touching a file changes no identity."""
    return {"size": signature.get("size"), "fast_hash": signature.get("fast_hash")}


def same_image(recorded: dict[str, Any] | None, path: str | os.PathLike) -> bool:
    """Whether the file ``path`` still has the content of signature ``recorded``: same size and
    either the same mtime (not read) or the same fast hash. False for a missing file or a
    malformed record."""
    try:
        stat = os.stat(path)
        if not isinstance(recorded, dict) or recorded.get("size") != stat.st_size:
            return False
        if recorded.get("mtime_ns") == stat.st_mtime_ns:
            return True
        return recorded.get("fast_hash") == fast_hash(path, stat.st_size)
    except OSError:
        return False


def split_digest(ids: list[str], classes: tuple[str, ...], annotation_files: list[Path],
                 image_files: list[Path | None]) -> str:
    """64 hex digits of SHA-256 over a split's identity: its id list in order, the class list, every
    annotation file's bytes and every image's content signature (:func:`content_of`; a missing
    image counts as such). Reads each annotation and at most 128 KiB of each image."""
    digest = hashlib.sha256()
    for text in (*ids, "\0classes", *classes, "\0files"):
        digest.update(text.encode("utf-8", "surrogatepass") + b"\0")
    for xml, image in zip(annotation_files, image_files):
        data = Path(xml).read_bytes()
        digest.update(len(data).to_bytes(8, "little") + data)
        if image is None:
            digest.update(b"no image\0")
        else:
            size = os.stat(image).st_size
            digest.update(f"{size}:{fast_hash(image, size)}\0".encode())
    return digest.hexdigest()
