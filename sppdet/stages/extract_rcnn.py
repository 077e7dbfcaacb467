"""The ``extract --method rcnn`` stage: R-CNN window features of a split, cached per image.

Shape shorthand: G ground-truth boxes and P proposals of one image, N = G + P cached windows,
R requested windows, C conv5 channels, D = C * sum(n^2) the pooled length.

Each image's ground-truth boxes (every annotated object) and cached proposals (``sppdet propose``)
are warped and pooled by ``sppdet.models.crops.rcnn_pooled``; the vectors go to the work directory folder
``rcnn-features-<hash>``, whose hash covers an ``RcnnConfig`` (backbone, width, the weights file's
hash, crop size, context, pyramid levels, seed), the dataset root, the proposals folder's hash and
the format version. Like the SPP features the folder is shared by every split. Per image:

    <image_id>.boxes.npy   float32 [N, 4]   the windows (ground truth, then proposals)
    <image_id>.pooled.npy  float16 [N, D]   their pooled vectors, row for row

Unlike SPP's conv maps, these only cover the cached windows: a reader asks for boxes and gets their
rows (:func:`lookup_pooled`, an exact match of the float32 coordinates); any other box is an
error. ``pooled`` is written before ``boxes`` and both atomically, then ``<image_id>.source.json``
(the image's signature, ``sppdet.workdir.caches``), so an image counts as done only when both are
valid and agree, its cached windows are exactly its current ground truth and proposals, and its
image has not changed since: a changed image, annotation or proposals recomputes that image only.
Re-running skips done images; ``--shard i/n`` does every n-th image. While computing, a run holds
the folder's (or its shard's) lock (``sppdet.workdir.store.stage_lock``): a second run of the same
folder stops with one line instead of duplicating the work.
One process: the trunk already uses every core; ``executor="ray"`` instead warps the images to
do in batches as Ray tasks (``sppdet.executors``), the driver checking the caches and recording,
the tasks writing the same files through the same per-image code (:class:`RcnnWriter`).
Records ``config.json["stages"]["extract:rcnn"]`` (``sppdet.workdir.methods``) so later stages
find the folder via :func:`rcnn_features_dir`.

Default weights: as ``sppdet extract`` (``sppdet.workdir.records.resolve_weights``): the trunk of
``sppdet pretrain`` when backbone and width match, else random.
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from sppdet.workdir.caches import (INFO_FILE, RCNN_RECORD, RcnnInfo, rcnn_cache_paths, read_cached, record_source,
                                   source_is_current)
from sppdet.data.identity import image_signature
from sppdet.models.backbones import Backbone, build_backbone, resolve_device
from sppdet.config import RcnnConfig
from sppdet.data.images import load_bgr
from sppdet.data.voc import VocDataset
from sppdet.errors import ConfigError, ModelError
from sppdet.executors import DEFAULT_EXECUTOR, check_executor, map_batches
from sppdet.parallel import Progress, no_progress, parse_shard, select_shard
from sppdet.workdir.caches import ExtractSummary, load_proposals, proposals_dir
from sppdet.models.crops import check_crop, compute_rcnn_features
from sppdet.workdir.records import DEFAULT_BACKBONE, DEFAULT_WIDTH, resolve_weights, trained_trunk, trunk_has_lrn
from sppdet.ops.spp import LEVELS, pooled_dim
from sppdet.fileio import atomic_save_npy, atomic_write_json
from sppdet.workdir.store import WorkDir, lazy_stage_lock

STAGE = RCNN_RECORD
FOLDER_STAGE = "rcnn-features"


@dataclass
class RcnnJob:
    """A resolved ``extract --method rcnn`` run."""

    workdir: WorkDir
    dataset: VocDataset
    image_ids: list[str]
    backbone: Backbone
    config: RcnnConfig
    folder: Path
    proposals_folder: Path
    batch: int
    device: torch.device
    shard: tuple[int, int] = (1, 1)  # (i, n) of --shard i/n; (1, 1) when not sharded


@dataclass(frozen=True)
class RcnnSummary(ExtractSummary):
    """``ExtractSummary`` plus the windows warped in this run."""

    windows: int = 0


def normalise_levels(levels: Sequence[int]) -> tuple[int, ...]:
    """Pyramid levels as a tuple of positive ints, in the given order (it fixes the vector layout)."""
    try:
        values = tuple(int(n) for n in levels)
    except (TypeError, ValueError):
        raise ConfigError(f"--levels {levels!r}: expected whole numbers, e.g. 1,2,3,6") from None
    if not values or min(values) < 1:
        raise ConfigError(f"--levels {levels!r}: need at least one level, all >= 1")
    return values


def prepare_rcnn_extract(workdir: str | os.PathLike | WorkDir | None = None, split: str = "trainval",
                         backbone: str | None = None, width: float | None = None,
                         weights: str | os.PathLike | None = None, crop_size: int = 224,
                         context: int = 16, levels: Sequence[int] = LEVELS, seed: int = 0,
                         batch: int = 128, device: str = "auto",
                         data_root: str | os.PathLike | None = None,
                         shard: str | None = None) -> RcnnJob:
    """Resolve an ``extract --method rcnn`` run: check the crop settings, build the trunk, open
    the split and the proposals, pick this shard's images and the cache folder. ``backbone`` and
    ``width`` left as None follow the trunk sppdet trained (``sppdet.workdir.records``; zf5 1.0 without one)."""
    work = workdir if isinstance(workdir, WorkDir) else WorkDir(workdir)
    trunk = trained_trunk(work) if weights is None else None
    backbone = backbone or (trunk.backbone if trunk else DEFAULT_BACKBONE)
    width = float(width if width is not None else (trunk.width if trunk else DEFAULT_WIDTH))
    check_crop(int(crop_size), int(context))
    if batch < 1:
        raise ConfigError(f"--batch {batch}: need at least one crop per forward pass")
    levels = normalise_levels(levels)
    shard_index, shard_count = parse_shard(shard)
    torch_device = resolve_device(device)
    root = work.data_root(data_root)
    dataset = VocDataset(root, split, classes=(), split_dir=work.split_dir(root))
    if data_root is not None and not work.config().get("data_root"):
        work.set_data_root(root)
    proposals = proposals_dir(work)
    chosen = resolve_weights(work, weights, backbone, width)
    net = build_backbone(backbone, width, chosen, seed, lrn=trunk_has_lrn(work, chosen))
    config = RcnnConfig(backbone=backbone, width=float(width), weights=net.weights_id,
                        crop_size=int(crop_size), context=int(context), levels=levels, seed=int(seed),
                        lrn=net.lrn)
    folder = work.stage_dir(FOLDER_STAGE, config, inputs={
        "data_root": str(root), "proposals": work.stage_hash(proposals)})
    if not (folder / INFO_FILE).is_file():
        atomic_write_json(folder / INFO_FILE, RcnnInfo(config, net.stride, net.offset, net.channels))
    return RcnnJob(work, dataset, select_shard(dataset.image_ids, shard_index, shard_count), net,
                   config, folder, proposals, int(batch), torch_device, (shard_index, shard_count))


def _windows(job: RcnnJob, image_id: str) -> np.ndarray:
    """float32 [N, 4]: the windows an image's cache holds, its ground truth then its proposals."""
    return np.concatenate([job.dataset.annotation(image_id).boxes, load_proposals(job.proposals_folder, image_id)])


def _is_done(job: RcnnJob, image_id: str, image_file, boxes: np.ndarray, dim: int) -> bool:
    """Whether ``image_id``'s cache is valid, holds exactly ``boxes`` and was computed from the
    current content of ``image_file``."""
    cached = read_cached(job.folder, image_id, dim)
    return (cached is not None and np.array_equal(cached[0], boxes)
            and source_is_current(job.folder, image_id, image_file))


@dataclass(frozen=True)
class RcnnWriter:
    """What warping, running and caching one image's windows needs, picklable (a Ray task gets
    one): the trunk, the crop settings (``config``), crops per forward pass, device and folder."""

    backbone: Backbone
    config: RcnnConfig
    batch: int
    device: torch.device
    folder: Path

    def write(self, image_id: str, image_file: str | os.PathLike, boxes: np.ndarray) -> None:
        """Compute and save the pooled vectors of ``boxes`` (float32 [N, 4]) of one image, then the
        boxes, then its source (the image's signature, taken before reading it)."""
        signature = image_signature(image_file)
        try:
            pooled = compute_rcnn_features(self.backbone, load_bgr(image_file), boxes, self.config,
                                           self.batch, self.device)
        except ModelError as exc:
            raise ModelError(f"{image_file}: {exc}") from None
        boxes_path, pooled_path = rcnn_cache_paths(self.folder, image_id)
        atomic_save_npy(pooled_path, pooled)
        atomic_save_npy(boxes_path, boxes)
        record_source(self.folder, image_id, signature)


def _write_batch(writer: RcnnWriter, todo: list[tuple[str, str, np.ndarray]]) -> list[int]:
    """A Ray task: :meth:`RcnnWriter.write` of each ``(image id, image file, boxes)``; the window counts."""
    for image_id, image_file, boxes in todo:
        writer.write(image_id, image_file, boxes)
    return [len(boxes) for _, _, boxes in todo]


def _todo_image(item: tuple[str, str, np.ndarray]) -> str:
    """The image file of a ``_write_batch`` item (what a dead task's error names)."""
    return item[1]


def run_rcnn_extract(job: RcnnJob, progress: Progress | None = None, executor: str = DEFAULT_EXECUTOR,
                     ray_address: str | None = None) -> RcnnSummary:
    """Warp, run and pool the ground-truth boxes and proposals of every image of ``job`` not
    cached yet (or whose image or windows changed), here or, with ``executor="ray"``, as Ray
    tasks (``sppdet.executors.map_batches`` on the cluster at ``ray_address``). ``progress(n)``
    as images are done (cached ones included; on Ray a batch at a time); the folder's lock is
    taken at the first image to compute (``WorkdirError`` if another process computes the same
    folder or shard); records the stage."""
    progress = progress or no_progress
    check_executor(executor)
    start = time.perf_counter()
    computed = windows = 0
    dim = pooled_dim(job.backbone.channels, job.config.levels)
    writer = RcnnWriter(job.backbone, job.config, job.batch, job.device, job.folder)
    todo = []
    with lazy_stage_lock(job.folder, job.shard, shardable=True) as take_lock:
        for image_id in job.image_ids:
            image_file = job.dataset.image_path(image_id)
            boxes = _windows(job, image_id)
            done = _is_done(job, image_id, image_file, boxes, dim)
            if not done and take_lock():
                done = _is_done(job, image_id, image_file, boxes, dim)  # another run may have done it
            if not done and executor == "ray":
                todo.append((image_id, str(image_file), boxes))
                continue
            if not done:
                writer.write(image_id, image_file, boxes)
                computed += 1
                windows += len(boxes)
            progress(1)
        for counts in map_batches(functools.partial(_write_batch, writer), todo, address=ray_address,
                                  num_gpus=int(job.device.type == "cuda"), describe=_todo_image):
            computed += len(counts)
            windows += sum(counts)
            progress(len(counts))
    job.workdir.record_stage(STAGE, {"folder": job.folder.name, "config": job.config,
                                     "stride": job.backbone.stride, "offset": job.backbone.offset,
                                     "channels": job.backbone.channels,
                                     "weights_source": job.workdir.portable_path(job.backbone.weights_source)})
    return RcnnSummary(
        folder=job.folder, images=len(job.image_ids), computed=computed,
        skipped=len(job.image_ids) - computed, seconds=time.perf_counter() - start,
        cache_bytes=sum(p.stat().st_size for p in job.folder.glob("*.npy")),
        weights=job.backbone.weights_source, device=str(job.device), windows=windows)


