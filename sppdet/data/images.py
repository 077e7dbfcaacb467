"""Reading images as 8-bit BGR, whatever their depth or channel count, within size bounds.

:func:`load_bgr` is the one place every stage reads an image. It refuses an image above
``sppdet.config.MAX_IMAGE_PIXELS`` (or ``$SPPDET_MAX_PIXELS``) or with an aspect ratio above
``MAX_ASPECT_RATIO`` (the reasons are in ``sppdet.config``) with one ``DatasetError``, from the
file's header (PNG and JPEG parsed here, other formats by Pillow, which matplotlib already
requires), before any pixel is decoded, so that a tiny compressed file of a huge image costs
nothing; formats neither can read are checked right after decoding.
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from sppdet.config import MAX_ASPECT_RATIO, MAX_IMAGE_PIXELS, MAX_PIXELS_ENV
from sppdet.errors import ConfigError, DatasetError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def to_bgr8(image: np.ndarray) -> np.ndarray:
    """``image`` ([H, W], [H, W, 1], [H, W, 3] BGR or [H, W, 4] BGRA; 8- or 16-bit or float in
    [0, 1]) as a contiguous uint8 BGR array ``[H, W, 3]``."""
    import cv2  # here, not at the top: reading annotations (sppdet.data.voc) needs no OpenCV

    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        image = np.clip(np.asarray(image, dtype=np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if image.ndim == 2 or image.shape[2] == 1:
        image = cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2BGR)
    elif image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return np.ascontiguousarray(image)


def max_pixels() -> int:
    """The largest image (width x height) sppdet reads: ``$SPPDET_MAX_PIXELS`` if set (seen by
    worker processes too), else ``MAX_IMAGE_PIXELS``."""
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not text:
        return MAX_IMAGE_PIXELS
    try:
        value = int(float(text))
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"${MAX_PIXELS_ENV}={text!r}: expected a positive number of pixels, e.g. 100000000")
    return value


#: JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic): they hold the size
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _png_size(head: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk (bytes 16-24), or None if ``head`` is no PNG."""
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR" or len(head) < 24:
        return None
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def _jpeg_size(handle) -> tuple[int, int] | None:
    """(width, height) from a JPEG's first start-of-frame segment, or None if there is none."""
    if handle.read(2) != b"\xff\xd8":
        return None
    while True:
        byte = handle.read(1)
        while byte and byte != b"\xff":  # skip to a marker
            byte = handle.read(1)
        marker = handle.read(1)
        while marker == b"\xff":  # fill bytes
            marker = handle.read(1)
        if not marker:
            return None
        code = marker[0]
        if code == 0x01 or 0xD0 <= code <= 0xD9:  # markers without a length
            continue
        length = handle.read(2)
        if len(length) < 2:
            return None
        if code in _JPEG_SOF:
            frame = handle.read(5)
            return (int.from_bytes(frame[3:5], "big"), int.from_bytes(frame[1:3], "big")) if len(frame) == 5 else None
        handle.seek(int.from_bytes(length, "big") - 2, os.SEEK_CUR)


def header_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """``(width, height)`` from the image file's header without decoding it: PNG and JPEG read
    here, other formats by Pillow; None when neither can tell (then :func:`load_bgr` checks the
    decoded size)."""
    try:
        with open(path, "rb") as handle:
            size = _png_size(handle.read(24))
            if size is None:
                handle.seek(0)
                size = _jpeg_size(handle)
    except OSError:
        return None
    return size if size is not None else _pillow_size(path)


def _pillow_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """(width, height) as Pillow reads it from the header, or None. An image beyond Pillow's
    own decompression-bomb limit (twice ``Image.MAX_IMAGE_PIXELS``, about 179 MP: far above the
    default limit here) is refused with ``DatasetError`` whatever ``$SPPDET_MAX_PIXELS`` says."""
    try:
        from PIL import Image
    except ImportError:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's DecompressionBombWarning: the check is ours
            with Image.open(path) as image:
                return tuple(image.size)
    except Image.DecompressionBombError:
        raise DatasetError(f"{path}: image has more than {2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6:.0f} "
                           "megapixels (Pillow's header check); downscale it") from None
    except Exception:  # noqa: BLE001 - any failure just means "size unknown before decoding"
        return None


def check_image_size(path: str | os.PathLike, width: int, height: int) -> None:
    """``DatasetError`` naming ``path`` when a ``width`` x ``height`` image is above the pixel
    limit (:func:`max_pixels`) or the aspect-ratio limit ``MAX_ASPECT_RATIO``."""
    limit = max_pixels()
    if width * height > limit:
        raise DatasetError(f"{path}: {width} x {height} image has {width * height / 1e6:.1f} megapixels, "
                           f"above the limit of {limit / 1e6:g}; downscale it (or raise the limit with "
                           f"{MAX_PIXELS_ENV}=PIXELS if this machine has the memory)")
    ratio = max(width, height) / max(min(width, height), 1)
    if ratio > MAX_ASPECT_RATIO:
        raise DatasetError(f"{path}: {width} x {height} image has an aspect ratio of {ratio:.0f}:1, above "
                           f"the limit of {MAX_ASPECT_RATIO:g}:1; crop it into pieces or leave it out")


def load_bgr(path: str | os.PathLike) -> np.ndarray:
    """The image at ``path`` as uint8 BGR ``[H, W, 3]``; ``DatasetError`` if it cannot be read or
    is out of bounds (:func:`check_image_size`, from the header before decoding when possible)."""
    import cv2

    size = header_size(path)
    if size is not None:
        check_image_size(path, *size)
    data = None
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read image ({exc.strerror or exc})") from None
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise DatasetError(f"{path}: not a readable image (expected JPEG, PNG, BMP, TIFF or WebP)")
    if size is None:
        check_image_size(path, image.shape[1], image.shape[0])
    return to_bgr8(image)
