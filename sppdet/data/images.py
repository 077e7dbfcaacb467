"""Reading images as 8-bit BGR, whatever their depth or channel count."""

from __future__ import annotations

import os

import numpy as np

from sppdet.errors import DatasetError

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


def load_bgr(path: str | os.PathLike) -> np.ndarray:
    """The image at ``path`` as uint8 BGR ``[H, W, 3]``; ``DatasetError`` if it cannot be read."""
    import cv2

    data = None
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read image ({exc.strerror or exc})") from None
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise DatasetError(f"{path}: not a readable image (expected JPEG, PNG, BMP, TIFF or WebP)")
    return to_bgr8(image)
