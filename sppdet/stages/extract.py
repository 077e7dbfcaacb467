"""The ``extract`` stage: conv5 features of every image of a split, cached (docs/algorithm.md section 3).

One file per image (``<image_id>.npz``, see ``sppdet.models.features`` for the format) in the work
directory folder ``features-<hash>``, where the hash covers the dataset root, an ``ExtractConfig`` (backbone, width,
the weights file's hash or "none", scales, seed) and the format version, so features from other
settings are never reused. Features do not depend on the split, so every split shares the folder.
Re-running skips images whose file is already valid and was computed from the image's current
content (``<image_id>.source.json`` beside it, ``sppdet.workdir.caches``): an image regenerated
in place recomputes that image only. Files are written atomically, so an interrupted run resumes
where it stopped. ``--shard i/n`` does every n-th image (shards may run at the same time); while
computing, a run holds the folder's (or its shard's) lock, so a second run of the same folder
stops with one line instead of duplicating the work (``sppdet.workdir.store.stage_lock``).
One process: torch already spreads a conv over every core, and on a GPU the
trunk is the only work; nothing runs in Python per window. ``executor="ray"`` instead computes the
images to do in batches as Ray tasks, each with one torch thread and the trunk shipped once per
task (``sppdet.executors``); the driver checks the caches, holds the lock and records the stage,
and the tasks write the same files through the same per-image code (:class:`FeatureWriter`).

``views`` (``sppdet extract --tta hflip,...``, for ``eval`` / ``detect --tta``, ``sppdet.ops.views``)
also caches the features of each image's mirrored or half-turned views, in the same format, under
``<view>/<image_id>.npz`` of the same folder: the same trunk and scales, so the SVMs trained on
the folder's features score them too.

The stage does not need proposals. It records ``config.json["stages"]["extract"]`` (the folder
and its geometry) so later stages find the features via :func:`features_dir`, and writes
``features.json`` (backbone geometry: stride, offset, channels) into the folder itself.

Default weights: when ``weights`` is None, the first of these whose recorded backbone and width
match (paths absolute or relative to the work directory):
    1. the trunk of ``sppdet finetune --train-conv``, ``config.json["stages"]["trunk"]["weights"]``,
       as long as the ``pretrain`` record is still the one it followed (its ``after_pretrain``):
       a later ``sppdet pretrain`` that trains a new trunk takes precedence again;
    2. the trunk of ``sppdet pretrain``, ``config.json["stages"]["pretrain"]["weights"]``;
otherwise random weights ("none"). A trunk sppdet trained with batch norm runs without zf5's LRN
layers, as it was trained (``ExtractConfig.lrn``, ``sppdet.workdir.records.trunk_has_lrn``).

Scale-choice target (``ExtractConfig.target``, recorded in ``features.json`` so every stage that
pools these features routes windows alike): the paper pools each window at the scale where it is
closest to 224 x 224 px, the side of its ImageNet training crops, so windows look as large as the
objects the trunk learned from. A trunk from ``sppdet pretrain`` learned from much smaller crops
(``--sizes``, 64 and 96 px by default), so with such a trunk the default target is
``TARGET_PER_CROP_SIDE`` (1.5) times its main (first) crop side: 96 px for the default crops, the
best of the targets tried on the demo's val split
(``sppdet.models.features.target_for_crop_sizes``, docs/decisions.md). A window's conv5 cells
also see context beyond it (their receptive fields), which is why the best target is above the
crop side. Other weights
(random, ImageNet, a file) keep the paper's 224.
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from sppdet.workdir.caches import (INFO_FILE, FeaturesInfo, feature_path, features_info, record_source,
                                   source_is_current)
from sppdet.data.identity import image_signature
from sppdet.models.features import target_for_crop_sizes
from sppdet.models.backbones import Backbone, build_backbone, resolve_device
from sppdet.config import ExtractConfig
from sppdet.data.fit import fit_scales, object_sizes
from sppdet.data.images import load_bgr
from sppdet.data.voc import VocDataset
from sppdet.errors import ConfigError, ModelError, WorkdirError
from sppdet.executors import DEFAULT_EXECUTOR, check_executor, map_batches
from sppdet.config import AUTO_PRECISION
from sppdet.models.features import (auto_precision, check_precision, compute_features, load_feature_file,
                                     save_feature_file)
from sppdet.parallel import Progress, no_progress, parse_shard, select_shard
from sppdet.workdir.records import (DEFAULT_BACKBONE, DEFAULT_WIDTH, TUNED_TRUNK_RECORD, extract_record,
                                    trained_trunk, trunk_has_lrn, trunk_of_weights)
from sppdet.ops.spp import TARGET
from sppdet.fileio import atomic_write_json
from sppdet.workdir.caches import ExtractSummary
from sppdet.workdir.records import EXTRACT_RECORD
from sppdet.workdir.store import WorkDir, lazy_stage_lock
from sppdet.ops.views import check_views, view_image

STAGE = EXTRACT_RECORD
#: config.json record of the trunk fine-tuned by ``finetune --train-conv`` (sppdet.stages.finetune)
TRUNK_RECORD = TUNED_TRUNK_RECORD
FOLDER_STAGE = "features"


@dataclass
class ExtractJob:
    """A resolved ``extract`` run: the trunk, the dataset, the images of this shard, the folder."""

    workdir: WorkDir
    dataset: VocDataset
    image_ids: list[str]
    backbone: Backbone
    config: ExtractConfig
    folder: Path
    device: torch.device
    views: tuple[str, ...] = ()  # also these views' features (sppdet.ops.views; module docstring)
    settings: "ExtractSettings | None" = None  # how each setting was chosen (flag, recorded, data)
    shard: tuple[int, int] = (1, 1)  # (i, n) of --shard i/n; (1, 1) when not sharded


def resolve_target(workdir: WorkDir, weights: str, target: int | None) -> int:
    """``target`` if given; else, when ``weights`` (as ``sppdet.workdir.records.resolve_weights``
    resolves them) is the trunk of ``sppdet pretrain`` or one fine-tuned from it,
    ``target_for_crop_sizes`` of the crop sides it was trained on; else the paper's 224
    (``sppdet.ops.spp.TARGET``)."""
    if target is not None:
        if int(target) < 1:
            raise ConfigError(f"--target {target}: must be a positive number of pixels")
        return int(target)
    trunk = trunk_of_weights(workdir, weights)
    if trunk is not None and trunk.crop_sizes:
        return target_for_crop_sizes(trunk.crop_sizes)
    return TARGET


@dataclass(frozen=True)
class ExtractSettings:
    """The resolved settings of an ``extract`` run and where each came from: ``sources`` maps
    backbone, width, weights, scales, target and precision to "flag", "default", "recorded (...)"
    or "data (...)"; ``warnings`` are lines the user must see (e.g. random weights)."""

    backbone: str
    width: float
    weights: str
    scales: tuple[int, ...]
    target: int
    precision: str
    sources: dict
    warnings: tuple[str, ...]
    lrn: bool = True  # zf5's LRN layers (``sppdet.workdir.records.trunk_has_lrn``)


def resolve_extract_settings(work: WorkDir, dataset: VocDataset, backbone: str | None = None,
                             width: float | None = None, weights: str | os.PathLike | None = None,
                             scales: Sequence[int] | None = None, target: int | None = None,
                             precision: str | None = None, device: str = "cpu") -> ExtractSettings:
    """Fill each setting left as None from what the work directory records (module docstring,
    "Settings"): the trained trunk gives backbone, width and weights; an earlier extract with the
    same trunk gives scales, target and precision; else scales follow the trunk's training split's
    objects (``sppdet.data.fit.fit_scales``) and precision is float32. A ``backbone`` or ``width``
    that contradicts the recorded trunk (without ``weights``) is a ``ConfigError``: extracting
    with a random trunk by accident gives features no SVM can use."""
    sources, warnings = {}, []
    trunk = trained_trunk(work) if weights is None else None
    if trunk is not None:
        for name, given, recorded in (("backbone", backbone, trunk.backbone), ("width", width, trunk.width)):
            if given is not None and given != recorded:
                raise ConfigError(
                    f"--{name} {given}: the trunk trained in {work.root} ({trunk.made_by}, {trunk.backbone} "
                    f"width {trunk.width:g}) has another shape; leave out --{name} to use it, or pass "
                    "--weights none (random) / imagenet / PATH to extract with other weights")
        backbone, width, chosen = trunk.backbone, trunk.width, str(trunk.weights)
        sources.update(backbone=f"recorded ({trunk.made_by})", width=f"recorded ({trunk.made_by})",
                       weights=f"recorded ({trunk.made_by})")
    else:
        sources.update(backbone="flag" if backbone is not None else "default",
                       width="flag" if width is not None else "default",
                       weights="flag" if weights is not None else "default")
        backbone = backbone if backbone is not None else DEFAULT_BACKBONE
        width = float(width) if width is not None else DEFAULT_WIDTH
        chosen = str(weights) if weights is not None else "none"
        if weights is None:
            warnings.append(f"{work.root}: no trained trunk, so the features come from RANDOM weights "
                            f"({backbone} width {width:g}); run sppdet pretrain first, or pass --weights "
                            "imagenet (downloads ImageNet weights) or --weights none to mean it")
    prior = extract_record(work)
    prior_config = prior.get("config", {}) if prior else {}
    same_weights = prior_config.get("weights") == "none" if chosen == "none" else \
        bool(prior) and work.portable_path(prior.get("weights_source") or "") == work.portable_path(chosen)
    same_trunk = same_weights and prior_config.get("backbone") == backbone and \
        float(prior_config.get("width", -1)) == float(width)
    if target is None and same_trunk:
        target, sources["target"] = int(prior_config["target"]), "recorded (extract)"
    else:
        sources["target"] = "flag" if target is not None else (
            "trunk's crop sides" if trunk is not None and trunk.crop_sizes else "default (paper)")
        target = resolve_target(work, chosen, target)
    if scales is None and same_trunk:
        scales, sources["scales"] = tuple(prior_config["scales"]), "recorded (extract)"
    elif scales is None:
        split = trunk.split if trunk is not None and trunk.split else dataset.split
        fitted = dataset if split == dataset.split else VocDataset(dataset.root, split, classes=(),
                                                                   check_images=False,
                                                                   split_dir=work.split_dir(dataset.root))
        scales, sources["scales"] = fit_scales(object_sizes(fitted), target), f"data (objects of {split})"
    else:
        sources["scales"] = "flag"
    if precision is None and same_trunk and prior_config.get("precision"):
        precision, sources["precision"] = prior_config["precision"], "recorded (extract)"
    elif precision is None:
        precision, sources["precision"] = "float32", "default"
    else:
        sources["precision"] = "flag"
    if precision == AUTO_PRECISION:
        precision, sources["precision"] = auto_precision(device), f"{sources['precision']}: auto for {device}"
    return ExtractSettings(backbone=backbone, width=float(width), weights=chosen,
                           scales=normalise_scales(scales), target=int(target),
                           precision=check_precision(precision), sources=sources, warnings=tuple(warnings),
                           lrn=trunk_has_lrn(work, chosen))


def normalise_scales(scales: Sequence[int]) -> tuple[int, ...]:
    """Scales as sorted, distinct positive ints (so equal sets give the same cache folder)."""
    try:
        values = tuple(sorted({int(s) for s in scales}))
    except (TypeError, ValueError):
        raise ConfigError(f"--scales {scales!r}: expected whole numbers, e.g. 688 or 480,576,688") from None
    if not values or values[0] <= 0:
        raise ConfigError(f"--scales {scales!r}: need at least one scale, all > 0")
    return values


def prepare_extract(workdir: str | os.PathLike | WorkDir | None = None, split: str = "trainval",
                    backbone: str | None = None, width: float | None = None,
                    weights: str | os.PathLike | None = None, scales: Sequence[int] | None = None,
                    seed: int = 0, device: str = "auto", data_root: str | os.PathLike | None = None,
                    shard: str | None = None, target: int | None = None,
                    views: Sequence[str] = (), precision: str | None = None,
                    lrn: bool | None = None) -> ExtractJob:
    """Resolve an ``extract`` run: settings left as None follow the work directory's records
    (:func:`resolve_extract_settings`; ``lrn`` the trunk's record), then build the trunk
    (``sppdet.models.backbones.build_backbone``), open the split, pick this shard's images and the
    cache folder. Nothing is computed yet."""
    work = workdir if isinstance(workdir, WorkDir) else WorkDir(workdir)
    if scales is not None:
        scales = normalise_scales(scales)
    views = check_views(views)
    if precision not in (None, AUTO_PRECISION):
        check_precision(precision)
    shard_index, shard_count = parse_shard(shard)
    torch_device = resolve_device(device)
    root = work.data_root(data_root)
    dataset = VocDataset(root, split, classes=(), split_dir=work.split_dir(root))  # no class list needed
    if data_root is not None and not work.config().get("data_root"):
        work.set_data_root(root)
    settings = resolve_extract_settings(work, dataset, backbone, width, weights, scales, target, precision,
                                        str(torch_device))
    net = build_backbone(settings.backbone, settings.width, settings.weights, seed,
                         lrn=settings.lrn if lrn is None else bool(lrn))
    config = ExtractConfig(backbone=settings.backbone, width=settings.width, weights=net.weights_id,
                           scales=settings.scales, seed=int(seed), target=settings.target,
                           precision=settings.precision, lrn=net.lrn)
    folder = work.stage_dir(FOLDER_STAGE, config, inputs={"data_root": str(root)})
    if not (folder / INFO_FILE).is_file():
        atomic_write_json(folder / INFO_FILE, FeaturesInfo(config, net.stride, net.offset, net.channels))
    return ExtractJob(workdir=work, dataset=dataset,
                      image_ids=select_shard(dataset.image_ids, shard_index, shard_count),
                      backbone=net, config=config, folder=folder, device=torch_device, views=views,
                      settings=settings, shard=(shard_index, shard_count))


def prepare_extract_like(workdir: WorkDir, split: str, config: ExtractConfig, weights: str | os.PathLike,
                         device: str = "auto", data_root: str | os.PathLike | None = None,
                         views: Sequence[str] = ()) -> ExtractJob:
    """An extract job computing ``split``'s features exactly as ``config`` (a features folder's:
    backbone, width, scales, seed, target, precision, LRN or not), with the trunk in ``weights``."""
    return prepare_extract(workdir, split, config.backbone, config.width, weights, config.scales, config.seed,
                           device, data_root, target=config.target, views=views, precision=config.precision,
                           lrn=config.lrn)


def _is_cached(path: Path, job: ExtractJob, image_id: str, image_file: Path) -> bool:
    """Whether ``path`` holds valid features of this job's scales and trunk, computed from the
    current content of ``image_file`` (``sppdet.workdir.caches.source_is_current``)."""
    if not path.is_file():
        return False
    try:
        cached = load_feature_file(path)
    except WorkdirError:
        return False
    return (len(cached.maps) == len(job.config.scales) and cached.maps[0].shape[0] == job.backbone.channels
            and source_is_current(path.parent, image_id, image_file))


def _missing_views(job: ExtractJob, image_id: str, image_file: Path) -> list[str | None]:
    """The views of ``image_id`` (None: the image itself) whose features are not cached and current."""
    return [view for view in (None, *job.views)
            if not _is_cached(feature_path(job.folder, image_id, view), job, image_id, image_file)]


@dataclass(frozen=True)
class FeatureWriter:
    """What computing and caching one image's features needs, picklable (a Ray task gets one):
    the trunk, the scales and precision (``config``), the device and the features folder."""

    backbone: Backbone
    config: ExtractConfig
    device: torch.device
    folder: Path

    def write(self, image_id: str, image_file: str | os.PathLike, views: list[str | None]) -> None:
        """Compute and save the features of ``views`` (None: the image itself) of one image, each
        followed by its source (the image's signature, taken before reading it)."""
        signature = image_signature(image_file)
        bgr = load_bgr(image_file)
        for view in views:
            image = view_image(bgr, view) if view else bgr
            try:
                maps, factors = compute_features(self.backbone, image, self.config.scales, self.device,
                                                 self.config.precision)
            except ModelError as exc:
                raise ModelError(f"{image_file}: {exc}") from None
            path = feature_path(self.folder, image_id, view)
            save_feature_file(path, maps, factors, bgr.shape[:2])
            record_source(path.parent, image_id, signature)


def _write_batch(writer: FeatureWriter, todo: list[tuple[str, str, list[str | None]]]) -> list[str]:
    """A Ray task: :meth:`FeatureWriter.write` of each ``(image id, image file, views)``; the ids."""
    for image_id, image_file, views in todo:
        writer.write(image_id, image_file, views)
    return [image_id for image_id, _, _ in todo]


def _todo_image(item: tuple[str, str, list[str | None]]) -> str:
    """The image file of a ``_write_batch`` item (what a dead task's error names)."""
    return item[1]


def run_extract(job: ExtractJob, progress: Progress | None = None, executor: str = DEFAULT_EXECUTOR,
                ray_address: str | None = None) -> ExtractSummary:
    """Compute and cache the features of every image of ``job`` not cached yet (or computed from
    an image that has changed since), here or, with ``executor="ray"``, as Ray tasks
    (``sppdet.executors.map_batches`` on the cluster at ``ray_address``).

    ``progress(n)`` is called as images are done (cached ones included; on Ray a batch at a
    time). The folder's lock (``stage_lock``) is taken at the first image to compute, and the
    image is checked again under it (``WorkdirError`` if another process computes the same
    folder or shard). Records the stage in ``config.json`` when done.
    """
    progress = progress or no_progress
    check_executor(executor)
    start = time.perf_counter()
    computed = 0
    writer = FeatureWriter(job.backbone, job.config, job.device, job.folder)
    todo = []
    with lazy_stage_lock(job.folder, job.shard, shardable=True) as take_lock:
        for image_id in job.image_ids:
            image_file = job.dataset.image_path(image_id)
            missing = _missing_views(job, image_id, image_file)
            if missing and take_lock():
                missing = _missing_views(job, image_id, image_file)  # another run may have done it
            if missing and executor == "ray":
                todo.append((image_id, str(image_file), missing))
                continue
            if missing:
                writer.write(image_id, image_file, missing)
                computed += 1
            progress(1)
        for done in map_batches(functools.partial(_write_batch, writer), todo, address=ray_address,
                                num_gpus=int(job.device.type == "cuda"), describe=_todo_image):
            computed += len(done)
            progress(len(done))
    info = features_info(job.folder)
    job.workdir.record_stage(STAGE, {"folder": job.folder.name, "config": job.config,
                                     "stride": info.stride, "offset": info.offset,
                                     "channels": info.channels,
                                     "weights_source": job.workdir.portable_path(job.backbone.weights_source)})
    return ExtractSummary(
        folder=job.folder, images=len(job.image_ids), computed=computed,
        skipped=len(job.image_ids) - computed, seconds=time.perf_counter() - start,
        cache_bytes=sum(p.stat().st_size for p in job.folder.glob("**/*.npz")),
        weights=job.backbone.weights_source, device=str(job.device))


