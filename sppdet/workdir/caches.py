"""Where each stage's cached files live in a work directory, and how they are read back.

The stages write these caches (``sppdet.stages.propose``, ``extract``, ``extract_rcnn``); every
reader (the window source, the detector, the stages that follow) finds them through here, so no
reader imports the stage that wrote them. A missing or invalid file is a ``WorkdirError`` naming
the command that makes it.

Sources: beside each image's cache file(s) a stage writes ``<image_id>.source.json``, the
signature of the image file they were computed from (``sppdet.data.identity``: size, mtime and
a fast hash), *after* the cache file itself. A cache whose recorded source differs from the
image's current signature (the image was regenerated in place) is recomputed, that image only.
Per-image files keep every cache write atomic and shards independent (no shared index).
A valid cache file without a source file (written before sources existed) is trusted once: the
image's current signature is recorded for it (:func:`source_is_current`), so any later change of
the image recomputes it; a dataset regenerated before that first check is not detected.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sppdet.config import ExtractConfig, RcnnConfig
from sppdet.errors import WorkdirError
from sppdet.data.identity import image_signature, same_image
from sppdet.fileio import atomic_save_npy, atomic_write_json, read_json
from sppdet.models.backbones import Backbone
from sppdet.models.crops import compute_rcnn_features
from sppdet.models.features import FeatureFile, load_feature_file
from sppdet.ops.spp import pooled_dim
from sppdet.structures.boxes import as_boxes
from sppdet.workdir.methods import stage_key
from sppdet.workdir.records import EXTRACT_RECORD, PROPOSE_RECORD
from sppdet.workdir.store import WorkDir

#: The file beside the cached features that holds their config and the trunk's geometry.
INFO_FILE = "features.json"
RCNN_RECORD = stage_key(EXTRACT_RECORD, "rcnn")


#: The file beside an image's cache files that records the image it was computed from.
SOURCE_SUFFIX = ".source.json"


def source_path(folder: str | os.PathLike, image_id: str) -> Path:
    """``<folder>/<image_id>.source.json``: the recorded source of one image's caches in ``folder``."""
    return Path(folder) / f"{image_id}{SOURCE_SUFFIX}"


def record_source(folder: str | os.PathLike, image_id: str, signature: dict) -> None:
    """Record ``signature`` (``sppdet.data.identity.image_signature``, taken before the image was
    read) as the source of ``image_id``'s caches in ``folder``, atomically. Call it after the
    cache files are written: a run killed in between leaves the old (differing) source or none."""
    atomic_write_json(source_path(folder, image_id), signature)


def _read_source(path: Path) -> dict | None:
    """The JSON object in a source file, or None if it cannot be read or is not an object."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def source_is_current(folder: str | os.PathLike, image_id: str, image_file: str | os.PathLike) -> bool:
    """Whether ``image_id``'s (valid) cache files in ``folder`` were computed from the current
    content of ``image_file`` (``sppdet.data.identity.same_image``). No source file: an older cache,
    trusted once (module docstring) and given the image's current signature (nothing is written
    where the folder is read-only)."""
    path = source_path(folder, image_id)
    if not path.exists():
        with contextlib.suppress(OSError):
            record_source(folder, image_id, image_signature(image_file))
        return True
    return same_image(_read_source(path), image_file)


def proposal_path(folder: str | os.PathLike, image_id: str) -> Path:
    """The cache file of one image in a proposals folder."""
    return Path(folder) / f"{image_id}.npy"


def read_valid(path: str | os.PathLike) -> np.ndarray | None:
    """The float32 ``[N, 4]`` boxes cached at ``path``, or None if the file is missing or is not
    a finite float32 ``[N, 4]`` array with x1 < x2, y1 < y2."""
    try:
        boxes = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if (not isinstance(boxes, np.ndarray) or boxes.dtype != np.float32 or boxes.ndim != 2
            or boxes.shape[1] != 4 or not np.isfinite(boxes).all()
            or not ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).all()):
        return None
    return boxes


def _recorded_folder(workdir: str | os.PathLike | WorkDir | None, record_name: str, missing: str) -> Path:
    """The folder the ``record_name`` record names; ``WorkdirError`` "<root>: ``missing``" if
    there is no such record or folder."""
    work = workdir if isinstance(workdir, WorkDir) else WorkDir(workdir)
    record = work.config().get("stages", {}).get(record_name)
    folder = work.root / record["folder"] if record else None
    if folder is None or not folder.is_dir():
        raise WorkdirError(f"{work.root}: {missing}")
    return folder


def _info_file(folder: str | os.PathLike, remedy: str) -> tuple[dict, dict]:
    """(the info file's JSON, its "config" with lists as tuples) of a features folder;
    ``WorkdirError`` ending in ``remedy`` if the file is missing."""
    path = Path(folder) / INFO_FILE
    if not path.is_file():
        raise WorkdirError(f"{path}: not found; {remedy}")
    data = read_json(path)
    return data, {k: tuple(v) if isinstance(v, list) else v for k, v in data["config"].items()}


def proposals_dir(workdir: str | os.PathLike | WorkDir | None = None) -> Path:
    """The proposals folder of the last ``sppdet propose`` in this work directory
    (``WorkdirError`` if there is none)."""
    return _recorded_folder(workdir, PROPOSE_RECORD, "no proposals; run sppdet propose first")


def load_proposals(source: str | os.PathLike | WorkDir | None, image_id: str) -> np.ndarray:
    """The cached proposals float32 ``[N, 4]`` (x1, y1, x2, y2) of ``image_id``.

    ``source``: a proposals folder (``proposals-<hash>``), or a work directory (``WorkDir`` or
    path) whose recorded proposals folder is used. ``WorkdirError`` if the file is missing
    ("run sppdet propose first") or invalid.
    """
    if isinstance(source, WorkDir) or source is None or not (Path(source) / "stage.json").is_file():
        folder = proposals_dir(source)
    else:
        folder = Path(source)
    path = proposal_path(folder, image_id)
    boxes = read_valid(path)
    if boxes is None:
        if not path.is_file():
            raise WorkdirError(f"{path}: no proposals for image {image_id!r}; run sppdet propose first "
                               "(with --split covering this image)")
        raise WorkdirError(f"{path}: not a valid float32 [N, 4] proposals file; re-run sppdet "
                           "propose (it recomputes invalid files)")
    return boxes


@dataclass(frozen=True)
class FeaturesInfo:
    """What a features folder holds: its config and the trunk's geometry (``sppdet.models.backbones``)."""

    config: ExtractConfig
    stride: int
    offset: float
    channels: int


def feature_path(folder: Path, image_id: str, view: str | None = None) -> Path:
    """The cache file of one image (or of its ``view``, ``sppdet.ops.views``) in a features folder."""
    return (Path(folder) / view if view else Path(folder)) / f"{image_id}.npz"


def features_dir(workdir: str | os.PathLike | WorkDir | None = None) -> Path:
    """The features folder of the last ``sppdet extract`` in this work directory
    (``WorkdirError`` if there is none)."""
    return _recorded_folder(workdir, EXTRACT_RECORD, "no conv features; run sppdet extract first")


def features_info(folder: str | os.PathLike) -> FeaturesInfo:
    """The config and geometry (stride, offset, channels) of a features folder."""
    data, config = _info_file(folder, "run sppdet extract first")
    return FeaturesInfo(config=ExtractConfig(**config), stride=int(data["stride"]),
                        offset=float(data["offset"]), channels=int(data["channels"]))


def load_features(folder: str | os.PathLike, image_id: str, view: str | None = None) -> FeatureFile:
    """The cached maps of ``image_id`` (memory-mapped float16 ``[C, H_s, W_s]`` per scale, plus
    scale factors ``[S]``), or of its ``view``; ``WorkdirError`` saying which ``sppdet extract``
    to run if it is missing."""
    path = feature_path(Path(folder), image_id, view)
    if not path.is_file():
        if view:
            raise WorkdirError(f"{path}: no {view} features for image {image_id!r}; run sppdet "
                               f"extract --tta {view} (with --split covering this image)")
        raise WorkdirError(f"{path}: no features for image {image_id!r}; run sppdet extract first "
                           "(with --split covering this image)")
    return load_feature_file(path)


@dataclass(frozen=True)
class RcnnInfo:
    """What an R-CNN features folder holds: its config and the trunk's geometry and channels
    (the fields ``sppdet.workdir.trained.rebuild_trunk`` checks, as ``FeaturesInfo``)."""

    config: RcnnConfig
    stride: int
    offset: float
    channels: int

    @property
    def dim(self) -> int:
        """D, the length of one pooled window."""
        return pooled_dim(self.channels, self.config.levels)


def rcnn_cache_paths(folder: Path, image_id: str) -> tuple[Path, Path]:
    """(boxes file, pooled vectors file) of one image in an R-CNN features folder."""
    return Path(folder) / f"{image_id}.boxes.npy", Path(folder) / f"{image_id}.pooled.npy"


def read_cached(folder: str | os.PathLike, image_id: str, dim: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(boxes float32 [N, 4], pooled float16 [N, D] memory-mapped) of one image, or None when
    either file is missing, malformed or they disagree."""
    boxes_path, pooled_path = rcnn_cache_paths(Path(folder), image_id)
    try:
        boxes = np.load(boxes_path, allow_pickle=False)
        pooled = np.load(pooled_path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if (boxes.dtype != np.float32 or boxes.ndim != 2 or boxes.shape[1] != 4
            or pooled.dtype != np.float16 or pooled.shape != (len(boxes), dim)):
        return None
    return boxes, pooled


def rcnn_features_dir(workdir: str | os.PathLike | WorkDir | None = None) -> Path:
    """The folder of the last ``sppdet extract --method rcnn`` (``WorkdirError`` if none)."""
    return _recorded_folder(workdir, RCNN_RECORD, "no R-CNN window features; run sppdet extract --method rcnn first")


def rcnn_info(folder: str | os.PathLike) -> RcnnInfo:
    """The config and trunk geometry of an R-CNN features folder."""
    data, config = _info_file(folder, "run sppdet extract --method rcnn first")
    return RcnnInfo(config=RcnnConfig(**config), stride=int(data["stride"]),
                    offset=float(data["offset"]), channels=int(data["channels"]))


def _keys(boxes: np.ndarray) -> np.ndarray:
    """One 16-byte key per float32 box [N, 4] (+0.0 turns -0.0 into 0.0, so equal boxes match)."""
    return np.ascontiguousarray(boxes + np.float32(0)).view(np.dtype((np.void, 16))).reshape(-1)


def box_rows(cached: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """int64 [R]: the first row of ``cached`` [N, 4] equal to each box of ``wanted`` [R, 4]
    (exact float32 coordinates), or -1 where there is none. One sort, no loop over boxes."""
    cached, wanted = as_boxes(cached), as_boxes(wanted)
    _, first, inverse = np.unique(_keys(np.concatenate([cached, wanted])), return_index=True,
                                  return_inverse=True)
    rows = first[inverse.reshape(-1)[len(cached):]].astype(np.int64)
    rows[rows >= len(cached)] = -1
    return rows


def lookup_pooled(folder: str | os.PathLike, image_id: str, boxes, dim: int) -> np.ndarray:
    """The cached R-CNN vectors float32 [R, D] of ``boxes`` float32 [R, 4] of ``image_id``.

    ``WorkdirError`` if the image is not cached ("run sppdet extract --method rcnn") or if a box
    is neither one of its ground-truth boxes nor one of its cached proposals.
    """
    cached = read_cached(folder, image_id, dim)
    if cached is None:
        raise WorkdirError(f"{rcnn_cache_paths(Path(folder), image_id)[1]}: no valid R-CNN features for image "
                           f"{image_id!r}; run sppdet extract --method rcnn (with --split covering it)")
    rows = box_rows(cached[0], boxes)
    missing = int((rows < 0).sum())
    if missing:
        raise WorkdirError(f"{folder}: {missing} of {len(rows)} windows of image {image_id!r} are not "
                           "cached; --method rcnn has features only for ground-truth boxes and "
                           "proposals (re-run sppdet extract --method rcnn after sppdet propose)")
    return np.asarray(cached[1][rows], dtype=np.float32)


@dataclass(frozen=True)
class ExtractSummary:
    """What an ``extract`` run did (either method): images of the shard, how many were computed
    or already cached, the time, and the size of the whole cache folder in bytes."""

    folder: Path
    images: int
    computed: int
    skipped: int
    seconds: float
    cache_bytes: int
    weights: str
    device: str


def cached_rcnn_features(path: str | os.PathLike, backbone: Backbone, bgr: np.ndarray, boxes,
                         config: RcnnConfig, device: torch.device | str = "cpu") -> tuple[np.ndarray, bool]:
    """(float32 ``[R, D]`` vectors of ``boxes`` [R, 4], whether they were computed): read from
    ``path`` (a float16 ``[R, D]`` ``.npy``) when it holds R rows of the right length, else
    computed by :func:`compute_rcnn_features` and saved there atomically."""
    dim = pooled_dim(backbone.channels, config.levels)
    try:
        cached = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        cached = None
    if cached is not None and cached.dtype == np.float16 and cached.shape == (len(boxes), dim):
        return cached.astype(np.float32), False
    pooled = compute_rcnn_features(backbone, bgr, boxes, config, device=device)
    atomic_save_npy(path, pooled)
    return pooled.astype(np.float32), True
