"""The ``finetune`` stage: fc6 -> fc7 -> fc8 trained on cached pooled features, conv frozen;
or, with ``train_conv``, trunk and head trained end to end (``sppdet.training.finetune_conv``).

docs/algorithm.md section 7 (see ``sppdet.models.head`` for the recipe). Windows are streamed from the caches image
by image (``sppdet.workdir.window_source``): each pass visits the split's images in a seeded random
order, labels the image's ground-truth boxes and proposals (foreground IoU >= 0.5, background
[0.1, 0.5)), samples ``windows_per_image`` of them with a 25% foreground share, pools just those,
and feeds mini-batches of ``batch_size`` windows to SGD. Memory holds one batch, never the split.

Initialisation: the head trained by ``sppdet pretrain`` when its recorded pooled dimension, hidden
sizes and class names match (the paper starts from ImageNet fc6/fc7), else seeded random.
Output: ``finetune-<hash>/head.pt``; the hash covers the config, the features, the proposals and
the initial head, so changing any of them trains a new head. ``epochs = 0`` saves the pretrained
head untouched (the paper's "fc7" rows: SVMs on fc7 without fine-tuning); it needs one to start
from. ``method`` ("spp" or "rcnn",
``sppdet.workdir.methods``) picks the window features and the ``config.json`` record (``finetune`` or
``finetune:rcnn``).

``train_conv`` (beyond the paper; spp only, epochs >= 1): the trunk starts from the weights of
the recorded ``extract`` features (backbone, width, scales and seed from their ``features.json``,
the weights file from the extract record), the head as above; both train on whole images
(``sppdet.training.finetune_conv``). The trained trunk is saved as ``finetune-<hash>/trunk.pt`` (a plain
state dict, as ``pretrain``'s), then the split's features are recomputed with it by the extract
stage: the new weights hash gives a new ``features-<hash>`` folder, recorded as the current
``extract``, so nothing reads the old cache any more. ``head.pt`` names the new features, so
``train-svm``, ``train-bbox``, ``detect`` and ``eval`` accept it; other splits need
``sppdet extract --split NAME``, which uses the fine-tuned trunk by default:
``config.json["stages"]["trunk"]`` records it (``sppdet.workdir.records.resolve_weights``), with the
features it started from. When the recorded features are the ones a ``train_conv`` run computed,
a later ``train_conv`` run starts from that run's starting features instead, so re-running a
command finds its cache (nothing is trained or recomputed) and different settings are compared
from the same start. ``head.pt`` is written after ``trunk.pt`` and before the recomputation, so
an interrupted recomputation resumes on the next run.

Training is checkpointed after each epoch to ``finetune-<hash>/checkpoint.pt``
(``sppdet.training.checkpoint``): a killed run continues from the last finished epoch, to the
weights an uninterrupted run gives; the file is deleted once ``head.pt`` is saved.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from sppdet.models.backbones import resolve_device
from sppdet.config import FinetuneConfig
from sppdet.data.images import load_bgr
from sppdet.errors import ConfigError, WorkdirError
from sppdet.stages.extract import STAGE as EXTRACT_STAGE, TRUNK_RECORD, ExtractJob, prepare_extract_like, run_extract
from sppdet.workdir.trained import feature_trunk
from sppdet.workdir.caches import features_dir, features_info
from sppdet.training.checkpoint import CHECKPOINT_FILE, EpochCheckpoint
from sppdet.training.finetune_conv import TrainingImage, sampled_windows, train_end_to_end
from sppdet.models.head import FcHead, iterate_minibatches, load_head, save_head, train_head
from sppdet.models.model_file import reusable, save_torch_file, torch_file_problem
from sppdet.workdir.methods import DEFAULT_METHOD, stage_key
from sppdet.parallel import Progress, no_progress
from sppdet.fileio import file_hash
from sppdet.workdir.records import FINETUNE_RECORD
from sppdet.workdir.store import WorkDir
from sppdet.workdir.window_source import WindowSource, pooled_feature_hash

STAGE = FINETUNE_RECORD
HEAD_FILE = "head.pt"
TRUNK_FILE = "trunk.pt"


@dataclass
class FinetuneSummary:
    """What a finetune run did."""

    folder: Path
    trained: bool  # False when a finished head with these settings already existed
    init: str  # "pretrain" or "random"
    epochs: int
    final_loss: float
    final_accuracy: float
    seconds: float
    trunk: Path | None = None  # train_conv: the fine-tuned trunk.pt
    features: Path | None = None  # train_conv: the features recomputed with it
    computed: int = 0  # train_conv: images whose features were computed by this run
    resumed_from: int = 0  # epochs a killed earlier run had finished (its checkpoint); 0: none


def _pretrained_head(work: WorkDir, source: WindowSource, config: FinetuneConfig) -> tuple[Path | None, str]:
    record = work.config().get("stages", {}).get("pretrain", {})
    path = record.get("head")
    if not path:
        return None, "random"
    path = Path(path) if Path(path).is_absolute() else work.root / path
    if not path.is_file():
        return None, "random"
    _, meta = load_head(path)
    arch = meta["architecture"]
    if (arch["in_dim"], tuple(arch["hidden"]), tuple(meta.get("classes", ()))) != (
            source.dim, tuple(config.hidden), tuple(source.classes)):
        return None, "random"
    return path, file_hash(path)


def window_batches(source: WindowSource, config: FinetuneConfig, epoch: int, progress: Progress):
    """Mini-batches (pooled [B, D] float32, labels [B] int64) of one pass over the split."""

    def per_image():
        for image_id, boxes, labels in sampled_windows(source, config, epoch):
            progress(1)
            if len(labels):
                yield source.pool(image_id, boxes), labels

    return iterate_minibatches(per_image(), config.batch_size)


def check_config(config: FinetuneConfig, method: str = DEFAULT_METHOD) -> None:
    """``ConfigError`` for ``train_conv`` settings that cannot run (rcnn, no epochs, ...)."""
    if not config.train_conv:
        return
    if method != DEFAULT_METHOD:
        raise ConfigError(f"--train-conv with --method {method}: not supported (R-CNN runs the trunk "
                          "on every window's crop); drop one of the two")
    if config.epochs < 1 or config.images_per_batch < 1 or not config.conv_lr_mult >= 0:
        raise ConfigError(f"--train-conv needs --epochs >= 1 (got {config.epochs}), images per "
                          f"batch >= 1 (got {config.images_per_batch}) and a conv lr multiplier >= 0")


def _conv_start(work: WorkDir) -> tuple[Path, str]:
    """The features folder ``train_conv`` starts from and its trunk's weights source (module
    docstring): the recorded extract features, or the start of the train_conv run that made them."""
    stages = work.config().get("stages", {})
    current, tuned = features_dir(work), stages.get(TRUNK_RECORD, {})
    base = tuned.get("base_features")
    if tuned.get("features") == current.name and base and (work.root / base).is_dir():
        return work.root / base, work.recorded_path(tuned.get("base_weights_source", ""))
    return current, work.recorded_path(stages.get(EXTRACT_STAGE, {}).get("weights_source", ""))


def _train_conv(source: WindowSource, head: FcHead, start: Path, weights_source: str,
                config: FinetuneConfig, trunk_path: Path, device: torch.device, progress: Progress,
                resume: dict | None, checkpoint: EpochCheckpoint):
    """Train trunk and head end to end (from ``resume`` when given, saving ``checkpoint`` each
    epoch), save the plain trunk to ``trunk_path``; the history."""
    backbone = feature_trunk(start, features_info(start), weights_source, "re-run sppdet extract")

    def images(epoch):
        for image_id, boxes, labels in sampled_windows(source, config, epoch):
            bgr = load_bgr(source.dataset.image_path(image_id)) if len(labels) else None
            yield TrainingImage(bgr, boxes, labels)

    features = features_info(start).config
    state, history = train_end_to_end(backbone, head, images, features.scales, config, device,
                                      source.levels, progress, target=features.target,
                                      resume=resume, save_epoch=checkpoint.save)
    save_torch_file(trunk_path, state)
    return history


def _recompute_job(workdir: WorkDir, start: Path, trunk_path: Path, split: str, data_root,
                   device: str) -> ExtractJob:
    """The extract job recomputing ``split``'s features with the fine-tuned trunk, with the
    backbone, width, scales, seed, scale-choice target and precision of the features training
    started from."""
    return prepare_extract_like(workdir, split, features_info(start).config, trunk_path, device, data_root)


def run_finetune(workdir: WorkDir, split: str = "trainval", config: FinetuneConfig = FinetuneConfig(),
                 data_root=None, progress: Progress = no_progress,
                 method: str = DEFAULT_METHOD, device: str = "auto") -> FinetuneSummary:
    """Train (or find already trained) the fc head on ``split`` with ``method``'s window features;
    record it in ``config.json``. With ``config.train_conv`` (module docstring) also the trunk on
    ``device``, then recompute the split's features with it; ``progress(1)`` is then called
    ``epochs + 1`` times per image (training, then the recomputation), else ``epochs`` times."""
    check_config(config, method)
    source = WindowSource(workdir, split, data_root, method=method)
    start, weights_source = _conv_start(workdir) if config.train_conv else (None, "")
    feature_hash = (pooled_feature_hash(workdir.stage_hash(start), source.levels) if start
                    else source.feature_hash)
    init_path, init_id = _pretrained_head(workdir, source, config)
    folder = workdir.stage_dir(STAGE, config, inputs={**source.inputs, "features": feature_hash,
                                                      "init": init_id})
    head_path, trunk_path = folder / HEAD_FILE, folder / TRUNK_FILE
    checkpoint = EpochCheckpoint(folder / CHECKPOINT_FILE)
    began, resumed_from = time.perf_counter(), 0
    trained = not (reusable(head_path, torch_file_problem)
                   and (not config.train_conv or reusable(trunk_path, torch_file_problem)))
    if config.epochs == 0 and init_path is None:
        raise ConfigError(f"--epochs 0 keeps the head of `sppdet pretrain`, but {workdir.root} has "
                          f"none for {source.dim}-d features, hidden {tuple(config.hidden)} and "
                          f"{len(source.classes)} classes; run sppdet pretrain or use --epochs >= 1")
    if trained:
        torch.manual_seed(config.seed)
        head = FcHead(source.dim, config.hidden, len(source.classes), config.dropout)
        if init_path is not None:
            head.load_state_dict(load_head(init_path)[0].state_dict())
        resume = checkpoint.load()
        resumed_from = int(resume["epoch"]) if resume else 0
        if resumed_from:
            progress(resumed_from * len(source.image_ids))
        if config.train_conv:
            history = _train_conv(source, head, start, weights_source, config, trunk_path,
                                  resolve_device(device), progress, resume, checkpoint)
        else:
            history = train_head(head, lambda epoch: window_batches(source, config, epoch, progress),
                                 config.epochs, config.lr, config.momentum, config.weight_decay,
                                 config.seed, progress, resume, checkpoint.save)
        if config.epochs and (not history or history[-1].seen == 0):
            raise WorkdirError(f"{source.dataset.root}: split {split!r} gave no training windows; "
                               "check its annotations and proposals")
    else:
        progress(config.epochs * len(source.image_ids))
    job = _recompute_job(workdir, start, trunk_path, split, data_root, device) if config.train_conv else None
    if trained:
        stats = ({"final_loss": history[-1].mean_loss, "final_accuracy": history[-1].accuracy}
                 if history else {"final_loss": float("nan"), "final_accuracy": float("nan")})
        trained_on = (pooled_feature_hash(workdir.stage_hash(job.folder), source.levels) if job
                      else source.feature_hash)
        save_head(head_path, head, {"feature_hash": trained_on, "classes": list(source.classes),
                                    "config": config, **stats})
    checkpoint.discard()  # also one left by a run killed between head.pt and its deletion
    record = {"folder": folder.name, "head": str(head_path.relative_to(workdir.root)),
              "split": split, "config": config}
    computed = 0
    if job is not None:
        computed = run_extract(job, progress).computed
        weights = str(trunk_path.relative_to(workdir.root))
        record.update(weights=weights, features=job.folder.name)
        stages = workdir.config().get("stages", {})
        workdir.record_stage(TRUNK_RECORD, {
            "weights": weights, "backbone": job.config.backbone, "width": job.config.width,
            "lrn": job.config.lrn, "folder": folder.name, "features": job.folder.name, "base_features": start.name,
            "base_weights_source": workdir.portable_path(weights_source),
            "after_pretrain": stages.get("pretrain", {}).get("weights")})
    _, meta = load_head(head_path)
    workdir.record_stage(stage_key(STAGE, method), record)
    return FinetuneSummary(folder, trained, "pretrain" if init_path else "random", config.epochs,
                           meta["final_loss"], meta["final_accuracy"], time.perf_counter() - began,
                           trunk_path if job else None, job.folder if job else None, computed,
                           resumed_from)


