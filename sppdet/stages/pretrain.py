"""The ``pretrain`` stage: train the trunk of ``sppdet.training.pretrain`` on a split, save it, record it.

Output: folder ``pretrain-<hash>`` (the hash covers the ``PretrainConfig``, the proposals folder
unless ``windows`` is "random", the dataset root and the split) holding
    trunk.pt       the trunk's own state dict (keys of ``build_backbone(...).trunk``, training aids
                   folded in; ``sppdet.models.backbones.load_trunk_weights`` reads it), ``torch.save``
    head.pt        the fc6/fc7/fc8 head (``sppdet.models.head.save_head``; metadata: classes, backbone,
                   width, levels, config) for ``finetune`` to start from
    pretrain.json  classes, image count, seconds, device and per-epoch history; written last, so
                   its presence means the model is complete and a re-run skips training.
    checkpoint.pt  while training: the state after the last finished epoch
                   (``sppdet.training.checkpoint``); a killed run continues from it, to the
                   weights an uninterrupted one gives. Deleted once pretrain.json is written.
``config.json["stages"]["pretrain"]`` records ``weights`` and ``head`` (paths relative to the work
directory), ``backbone``, ``width``, ``split``, ``classes`` and the config:
``sppdet.workdir.records.resolve_weights`` then uses the trunk by default for the same backbone and
width, and ``finetune`` starts from the head when its sizes match.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch

from sppdet.models.backbones import Backbone, build_backbone, resolve_device
from sppdet.config import PretrainConfig
from sppdet.data.voc import VocDataset
from sppdet.errors import WorkdirError
from sppdet.models.head import load_head, save_head
from sppdet.models.model_file import reusable, save_torch_file, torch_file_problem
from sppdet.parallel import Progress, no_progress
from sppdet.training.pretrain import (CropClassifier, EpochStats, check_config, new_classifier, seconds_per_epoch,
                                      train_classifier)
from sppdet.workdir.caches import load_proposals, proposals_dir
from sppdet.training.random_windows import random_window_source
from sppdet.training.checkpoint import CHECKPOINT_FILE, EpochCheckpoint
from sppdet.ops.spp import LEVELS, pooled_dim
from sppdet.fileio import atomic_write_json, read_json, to_jsonable
from sppdet.workdir.records import pretrained_with_lrn
from sppdet.workdir.store import WorkDir

STAGE = "pretrain"
TRUNK_FILE, HEAD_FILE, INFO_FILE = "trunk.pt", "head.pt", "pretrain.json"


@dataclass
class PretrainJob:
    """A resolved ``pretrain`` run: settings, dataset, proposals and output folder."""

    workdir: WorkDir
    config: PretrainConfig
    dataset: VocDataset
    proposal_folder: Path | None  # None with windows "random"
    folder: Path
    device: torch.device

    @property
    def done(self) -> bool:
        """A finished model for exactly these settings and inputs is already in ``folder``:
        ``pretrain.json`` (written last) is there and ``trunk.pt`` and ``head.pt`` load. An
        unreadable one (e.g. a zero-byte trunk.pt) is warned about and trained again."""
        return (self.folder / INFO_FILE).is_file() and all(
            reusable(self.folder / name, torch_file_problem) for name in (TRUNK_FILE, HEAD_FILE))

    @property
    def steps(self) -> int:
        """Progress calls of a training run: epochs x images."""
        return self.config.epochs * len(self.dataset)


@dataclass(frozen=True)
class PretrainSummary:
    """A finished (``skipped``: found already trained) ``pretrain`` run."""

    folder: Path
    weights: Path
    head: Path
    classes: tuple[str, ...]
    images: int
    history: list[EpochStats]
    seconds: float
    skipped: bool
    device: str
    resumed_from: int = 0  # epochs a killed earlier run had finished (its checkpoint); 0: none


def prepare_pretrain(workdir: str | os.PathLike | None = None,
                     config: PretrainConfig = PretrainConfig(), split: str = "trainval",
                     data_root: str | os.PathLike | None = None, device: str = "auto") -> PretrainJob:
    """Resolve a ``pretrain`` run: check the settings, open the split (the recorded dataset root
    unless ``data_root`` is given), find the proposals of ``sppdet propose`` (``WorkdirError`` if
    there are none; not needed with ``config.windows == "random"``) and the output folder. Nothing
    is trained."""
    check_config(config)
    work = WorkDir(workdir)
    torch_device = resolve_device(device)
    root = work.data_root(data_root)
    dataset = VocDataset(root, split, split_dir=work.split_dir(root))
    if data_root is not None and not work.config().get("data_root"):
        work.set_data_root(root)
    # the split's annotations and images (sppdet.data.identity): a changed one trains a new trunk
    inputs = {"data": str(root), "split": split, "content": dataset.content_digest()}
    proposal_folder = None
    if config.windows == "proposals":
        proposal_folder = proposals_dir(work)
        inputs["proposals"] = work.stage_hash(proposal_folder)
    folder = work.stage_dir(STAGE, config, inputs=inputs)
    return PretrainJob(work, config, dataset, proposal_folder, folder, torch_device)


def estimate_epoch_seconds(job: PretrainJob) -> float:
    """Seconds one epoch of ``job`` should take here (``sppdet.training.pretrain.seconds_per_epoch``: a
    short probe on a throwaway model)."""
    model, backbone = new_classifier(job.config, len(job.dataset.classes))
    if job.proposal_folder is None:
        windows = random_window_source(job.dataset, job.config.seed, job.config.parts_per_object)
    else:
        windows = partial(load_proposals, job.proposal_folder)
    return seconds_per_epoch(model, backbone, job.dataset, windows, job.config, job.device)


def run_pretrain(job: PretrainJob, progress: Progress = no_progress) -> PretrainSummary:
    """Train and save the trunk and head of ``job``, or find them already trained (``job.done``);
    record ``config.json["stages"]["pretrain"]`` either way. ``progress(1, loss=..., acc=...)``
    after each image of each epoch (``job.steps`` calls; none when skipped; the epochs of a
    checkpoint at once). A missing proposals file raises ``WorkdirError`` naming it."""
    config, dataset, folder = job.config, job.dataset, job.folder
    checkpoint = EpochCheckpoint(folder / CHECKPOINT_FILE)
    if job.done:
        checkpoint.discard()  # left by a run killed between pretrain.json and its deletion
        info = read_json(folder / INFO_FILE)
        _record(job.workdir, folder, config, dataset.split, info["classes"])
        return _summary(folder, info, skipped=True)

    model, backbone = new_classifier(config, len(dataset.classes))
    resume = checkpoint.load()
    resumed_from = int(resume["epoch"]) if resume else 0
    if resumed_from:
        progress(resumed_from * len(dataset))
    start = time.perf_counter()
    if job.proposal_folder is None:
        windows = random_window_source(dataset, config.seed, config.parts_per_object)
    else:
        windows = partial(load_proposals, job.proposal_folder)
    history = train_classifier(model, backbone, dataset, windows, config, job.device, progress,
                               resume, checkpoint.save)
    seconds = time.perf_counter() - start
    save_torch_file(folder / TRUNK_FILE, model.trunk_state())
    save_head(folder / HEAD_FILE, model.head.cpu(), {
        "stage": STAGE, "classes": list(dataset.classes), "backbone": config.backbone,
        "width": config.width, "levels": list(LEVELS), "config": to_jsonable(config)})
    info = {"classes": list(dataset.classes), "images": len(dataset), "seconds": seconds,
            "device": str(job.device), "history": [asdict(epoch) for epoch in history]}
    atomic_write_json(folder / INFO_FILE, info)
    checkpoint.discard()
    _record(job.workdir, folder, config, dataset.split, dataset.classes)
    return _summary(folder, info, skipped=False, resumed_from=resumed_from)


def _summary(folder: Path, info: dict, skipped: bool, resumed_from: int = 0) -> PretrainSummary:
    return PretrainSummary(folder=folder, weights=folder / TRUNK_FILE, head=folder / HEAD_FILE,
                           classes=tuple(info["classes"]), images=int(info["images"]),
                           history=[EpochStats(**epoch) for epoch in info["history"]],
                           seconds=float(info["seconds"]), skipped=skipped, device=info["device"],
                           resumed_from=resumed_from)


def _record(work: WorkDir, folder: Path, config: PretrainConfig, split: str, classes) -> None:
    work.record_stage(STAGE, {"folder": folder.name, "weights": f"{folder.name}/{TRUNK_FILE}",
                              "head": f"{folder.name}/{HEAD_FILE}", "backbone": config.backbone,
                              "width": config.width, "split": split, "classes": list(classes),
                              "lrn": not config.batch_norm, "config": config})


def load_pretrained(workdir: str | os.PathLike | WorkDir | None = None
                    ) -> tuple[CropClassifier, Backbone, dict]:
    """The classifier that ``sppdet pretrain`` last recorded in this work directory (the saved
    plain trunk, batch norm folded; eval mode, on the CPU), its backbone, and its ``config.json``
    record; ``WorkdirError`` if there is none."""
    work = workdir if isinstance(workdir, WorkDir) else WorkDir(workdir)
    record = work.config().get("stages", {}).get(STAGE)
    if not record or not (work.root / record["weights"]).is_file():
        raise WorkdirError(f"{work.root}: no pretrained trunk; run sppdet pretrain first")
    backbone = build_backbone(record["backbone"], float(record["width"]), work.root / record["weights"],
                              lrn=pretrained_with_lrn(record))
    head, _ = load_head(work.root / record["head"], expected_in_dim=pooled_dim(backbone.channels))
    return CropClassifier(backbone, head, batch_norm=False).eval(), backbone, record
