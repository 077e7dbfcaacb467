"""One-pass conv features at one or more scales, and their cache file (docs/algorithm.md section 3).

Shape shorthand: S scales, C channels, (H, W) the original image, (H_s, W_s) the conv5 map at
scale s (about ceil(round(H * f_s) / 16) x ceil(round(W * f_s) / 16) for zf5).

Scales: scale ``s`` resizes the image so its shorter side is ``s``: factor ``f = s / min(H, W)``,
size ``round(W * f) x round(H * f)``, bilinear (``cv2.INTER_LINEAR``; the release turns
anti-aliasing off to match it). Boxes in original pixels map to scale ``s`` as ``box * f``; the
rounding of the resized size moves the far edge by less than half a pixel, which is ignored
(as in the release).

Cache file (one per image, every scale): an uncompressed ``.npz`` (``np.savez``, no pickle) with
    scale_factors  float32 [S]       f for each scale, in the order of the maps
    image_hw       int64   [2]       (H, W) of the original image
    map_0 .. map_{S-1}  float16 [C, H_s, W_s]
Members of an uncompressed zip are stored verbatim, so :func:`load_feature_file` memory-maps
them: it reads each member's offset from the zip's local headers and its ``.npy`` header, and
returns read-only views into one ``np.memmap`` of the file (nothing is read until used).
Consumers convert to float32 for pooling (``sppdet.ops.spp.pool_windows`` takes ``maps`` and
``scale_factors`` as they are).
"""

from __future__ import annotations

import contextlib
import os
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch

from sppdet.config import PRECISIONS
from sppdet.models.backbones import Backbone
from sppdet.ops.spp import scale_factors
from sppdet.errors import ConfigError, ModelError, WorkdirError
from sppdet.fileio import atomic_save_npz

# PRECISIONS and AUTO_PRECISION (sppdet.config): the arithmetic of the trunk in ``compute_features``.
# "bfloat16" (beyond the paper; ``extract --precision``): autocast, convolutions in bfloat16 (8-bit
# mantissa), maps still stored float16; faster on CPUs with bfloat16 units, and slower without
# (the measurements are in docs/decisions.md).
#: CPU flags (Linux /proc/cpuinfo) of units that run bfloat16 convolutions natively.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")

# zip local file header (30 bytes): signature, version, flags, method, time, date, crc,
# sizes, then the lengths of the name and of the extra field that precede the member's data.
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")


@dataclass(frozen=True)
class FeatureFile:
    """The cached conv5 maps of one image: ``maps`` S arrays float16 ``[C, H_s, W_s]``
    (memory-mapped, read-only), ``scale_factors`` float32 ``[S]``, ``image_hw`` int64 ``[2]``."""

    maps: list[np.ndarray]
    scale_factors: np.ndarray
    image_hw: np.ndarray


def resize_to_scale(bgr: np.ndarray, scale: int) -> tuple[np.ndarray, float]:
    """``bgr`` uint8 ``[H, W, 3]`` resized so its shorter side is ``scale``; returns it and ``f``."""
    height, width = bgr.shape[:2]
    factor = scale / min(height, width)
    size = (max(1, int(round(width * factor))), max(1, int(round(height * factor))))
    return cv2.resize(bgr, size, interpolation=cv2.INTER_LINEAR), factor


def check_precision(precision: str) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else ``ConfigError`` naming it."""
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision {precision}: choose from {', '.join(PRECISIONS)}")
    return precision


def auto_precision(device: torch.device | str = "cpu", cpuinfo: str = "/proc/cpuinfo") -> str:
    """"bfloat16" where ``device`` runs it natively (a CUDA GPU that supports it; a CPU with one
    of :data:`BF16_CPU_FLAGS`), else "float32": bfloat16 is faster only on such hardware, and
    slower where it is emulated. A hardware choice, not a data one."""
    device = torch.device(device)
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    try:
        flags = set(Path(cpuinfo).read_text(errors="replace").split())
    except OSError:
        return "float32"
    return "bfloat16" if flags & set(BF16_CPU_FLAGS) else "float32"


def trunk_precision(precision: str, device: torch.device | str):
    """The context a trunk runs in for ``precision`` ("float32", or "bfloat16": autocast on
    ``device``'s type); ``ConfigError`` for another name."""
    if check_precision(precision) == "float32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def compute_features(backbone: Backbone, bgr_image: np.ndarray, scales: Sequence[int],
                     device: torch.device | str = "cpu",
                     precision: str = "float32") -> tuple[list[np.ndarray], np.ndarray]:
    """Run ``backbone`` once per scale over uint8 BGR ``[H, W, 3]`` in ``precision``
    (:data:`PRECISIONS`).

    Returns the S maps float16 ``[C, H_s, W_s]`` and the scale factors float32 ``[S]``
    (``f = s / min(H, W)``). Raises ``ModelError`` if a map overflows float16 (weights badly scaled).
    """
    device = torch.device(device)
    # channels-last runs convs, pools and the LRN ~1.7x faster on CPU (oneDNN) than NCHW
    trunk = backbone.trunk.to(device, memory_format=torch.channels_last).eval()
    maps = []
    with torch.inference_mode(), trunk_precision(precision, device):
        for scale in scales:
            resized, _ = resize_to_scale(bgr_image, int(scale))
            image = backbone.preprocess(resized, device)[None]
            output = trunk(image)[0].float().half().contiguous()
            if not torch.isfinite(output).all():
                raise ModelError(f"{backbone.name} weights ({backbone.weights_source}) give conv5 values "
                                 f"that are not finite in float16 at scale {scale}; they are badly scaled")
            maps.append(output.cpu().numpy())
    return maps, scale_factors(bgr_image.shape[:2], scales)


def save_feature_file(path: str | os.PathLike, maps: Sequence[np.ndarray], scale_factors,
                      image_hw) -> None:
    """Write one image's maps (S arrays ``[C, H_s, W_s]``, stored float16), scale factors ``[S]``
    and original ``(H, W)`` to ``path`` (``.npz``, uncompressed, atomic)."""
    arrays = {f"map_{i}": np.ascontiguousarray(m, dtype=np.float16) for i, m in enumerate(maps)}
    atomic_save_npz(path, scale_factors=np.asarray(scale_factors, dtype=np.float32),
                    image_hw=np.asarray(image_hw, dtype=np.int64), **arrays)


def _invalid(path: Path, reason: str) -> WorkdirError:
    return WorkdirError(f"{path}: not a valid feature file ({reason}); delete it and re-run sppdet extract")


def _npy_header(handle, path: Path, name: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
        header = np.lib.format.read_array_header_1_0(handle)
    elif version == (2, 0):
        header = np.lib.format.read_array_header_2_0(handle)
    else:
        raise _invalid(path, f"{name}: unsupported .npy version {version}")
    if header[2].hasobject:
        raise _invalid(path, f"{name}: object arrays are not allowed")
    return header


def _mmap_members(path: Path) -> dict[str, np.ndarray]:
    """Every ``.npy`` member of an uncompressed ``.npz`` as a read-only view into one memmap."""
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
    if any(info.compress_type != zipfile.ZIP_STORED for info in infos):
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    members = {}
    with open(path, "rb") as handle:
        for info in infos:
            handle.seek(info.header_offset)
            fields = _LOCAL_HEADER.unpack(handle.read(_LOCAL_HEADER.size))
            if fields[0] != b"PK\x03\x04":
                raise _invalid(path, f"bad zip local header for {info.filename}")
            handle.seek(info.header_offset + _LOCAL_HEADER.size + fields[-2] + fields[-1])
            name = info.filename.removesuffix(".npy")
            shape, fortran_order, dtype = _npy_header(handle, path, name)
            start = handle.tell()
            count = int(np.prod(shape, dtype=np.int64))
            if start + count * dtype.itemsize > raw.size:
                raise _invalid(path, f"{name} is truncated")
            members[name] = np.ndarray(shape, dtype=dtype, buffer=raw, offset=start,
                                       order="F" if fortran_order else "C")
    return members


def load_feature_file(path: str | os.PathLike) -> FeatureFile:
    """Read a cache file written by :func:`save_feature_file`, memory-mapping the maps.

    Compressed members (not written by sppdet) are loaded into memory instead. A missing,
    truncated or malformed file raises ``WorkdirError`` naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise WorkdirError(f"{path}: feature file not found; run sppdet extract for this image's split")
    try:
        members = _mmap_members(path)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, struct.error) as exc:
        raise _invalid(path, str(exc) or type(exc).__name__) from None
    for required in ("scale_factors", "image_hw", "map_0"):
        if required not in members:
            raise _invalid(path, f"no {required}")
    scale_factors = np.array(members["scale_factors"], dtype=np.float32).reshape(-1)
    maps = [members.get(f"map_{i}") for i in range(len(scale_factors))]
    if any(m is None or m.ndim != 3 or m.dtype != np.float16 for m in maps):
        raise _invalid(path, f"expected {len(scale_factors)} float16 maps [C, H, W]")
    if len({m.shape[0] for m in maps}) != 1:
        raise _invalid(path, "maps disagree on the channel count")
    return FeatureFile(maps=maps, scale_factors=scale_factors,
                       image_hw=np.array(members["image_hw"], dtype=np.int64).reshape(2))


#: With a trunk from ``sppdet pretrain``, the default scale-choice target is this times its
#: main crop side (:func:`target_for_crop_sizes`).
TARGET_PER_CROP_SIDE = 1.5


def target_for_crop_sizes(sizes: Sequence[int]) -> int:
    """The default scale-choice target (px) for a trunk pretrained on warped crops of ``sizes``
    (``PretrainConfig.sizes``, main size first): ``TARGET_PER_CROP_SIDE`` times ``sizes[0]``.

    Why the first size and not the largest: the first is the trunk's main input size, the others
    the extra sizes of multi-size training (paper section 2.3: 224, with 180 added), and on the
    demo's val split 1.5 x the main side was the best target for every trunk tried: 96 px for
    crops (64, 52) (of 64 / 80 / 96 / 128) and for (64, 96) (of 96 / 128 / 144); 1.5 x the largest
    side would have given 144 for the latter (docs/decisions.md). Above the crop side because a
    window's conv5 cells also see beyond it (their receptive fields)."""
    return int(round(TARGET_PER_CROP_SIDE * int(sizes[0])))
