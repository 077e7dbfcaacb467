"""``sppdet train``: the whole training chain in one command, every choice made on a validation split.

    splits -> propose (train, val) -> pretrain (train) -> extract (train, val) -> finetune (train)
           -> train-bbox (train) -> choose SVM layer, C, copies and views on val
           -> train-svm + train-bbox on train+val with the choices

With ``[finetune] train_conv = true`` the fine-tuning also trains the trunk (and recomputes the
training split's features with it); the val split's features are then recomputed with the new
trunk before anything is scored on them.

Each step calls the same library function as the stage's own command, so every step is cached
by its settings exactly as there: a second run finds everything and only checks the caches, and
a run killed half-way continues where it stopped (files are written atomically). The test split
is never opened. Settings and their sources: ``sppdet.training.settings``; splits: ``sppdet.training.splits``;
the choices: ``sppdet.pipelines.selection``.

What it leaves behind: the usual stage records in ``config.json`` (so ``eval``, ``detect`` and
``status`` work as after the single commands), the choices as ``config.json["stages"]
["selection"]`` (views included, which ``eval`` and ``detect`` then use by default), and
``WORKDIR/train-summary.json`` (settings with sources, splits, stage times, trials, val mAP).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from sppdet.stages.train_bbox import run_train_bbox
from sppdet.data.voc import VocDataset
from sppdet.stages.extract import prepare_extract, run_extract
from sppdet.stages.finetune import run_finetune
from sppdet.parallel import ProgressFactory, no_progress_bar
from sppdet.data.fit import MIN_PRETRAIN_EPOCHS
from sppdet.stages.pretrain import estimate_epoch_seconds, prepare_pretrain, run_pretrain
from sppdet.stages.propose import prepare_propose, run_propose
from sppdet.workdir.records import SELECTION_RECORD
from sppdet.pipelines.selection import POOLED_MEMO_BYTES, Selection, ValScorer, select_settings, split_size
from sppdet.training.splits import VAL_FRACTION, TrainingSplits, resolve_training_splits
from sppdet.fileio import atomic_write_json, content_hash, read_json, to_jsonable
from sppdet.errors import WorkdirError
from sppdet.workdir.store import WorkDir
from sppdet.stages.train_svm import run_train_svm
from sppdet.workdir.window_source import PooledMemo, memory_budget
from sppdet.training.settings import TrainSettings, read_config_file, resolve_train_settings

SUMMARY_FILE = "train-summary.json"
BUDGET_FILE = "pretrain-budget.json"


@dataclass
class TrainPlan:
    """A resolved ``sppdet train``: the work directory, splits and settings; nothing run yet."""

    work: WorkDir
    splits: TrainingSplits
    settings: TrainSettings
    device: str


@dataclass(frozen=True)
class StageTime:
    """One step of the chain: its name, seconds, and a short note of what it did."""

    name: str
    seconds: float
    note: str


@dataclass(frozen=True)
class TrainResult:
    """A finished ``sppdet train``: the plan, the choices, each step's time, the total."""

    plan: TrainPlan
    selection: Selection
    times: list[StageTime]
    seconds: float
    summary: Path


def prepare_train(workdir: str | os.PathLike | WorkDir | None, data_root: str | os.PathLike | None,
                  config_file: str | os.PathLike | None = None, augment: tuple[str, ...] | None = None,
                  val_fraction: float | None = None, device: str = "auto",
                  pretrain_minutes: float | None = None) -> TrainPlan:
    """Resolve a run: read the config file, record the dataset, resolve (and write) the splits,
    and the settings with their sources. Reads only the training split's annotations."""
    work = workdir if isinstance(workdir, WorkDir) else WorkDir(workdir)
    file_values = read_config_file(config_file) if config_file else {}
    root = work.data_root(data_root)
    fraction = val_fraction if val_fraction is not None else file_values.get("val_fraction", VAL_FRACTION)
    splits = resolve_training_splits(work, root, float(fraction))
    if data_root is not None:
        work.set_data_root(root)
    train_dataset = VocDataset(root, splits.train, check_images=False, split_dir=work.split_dir(root))
    settings = resolve_train_settings(root, train_dataset, splits, file_values, str(config_file or ""),
                                      augment, val_fraction, pretrain_minutes)
    return TrainPlan(work, splits, settings, device)


def run_train(plan: TrainPlan, progress_bar: ProgressFactory = no_progress_bar,
              log: Callable[[str], None] = lambda line: None) -> TrainResult:
    """Run the chain of the module docstring; ``log`` receives one line per finished step (and
    per scored candidate), ``progress_bar`` shows each step's progress."""
    work, splits, settings = plan.work, plan.splits, plan.settings
    times: list[StageTime] = []
    began = time.perf_counter()

    def step(name: str, action: Callable[[], str]) -> None:
        start = time.perf_counter()
        note = action()
        times.append(StageTime(name, time.perf_counter() - start, note))
        log(f"{name}: {note} ({times[-1].seconds:.1f} s)")

    def propose(split: str) -> str:
        job = prepare_propose(work, settings.propose, split)
        with progress_bar(len(job.todo), f"propose {split}") as advance:
            summary = run_propose(job, progress=advance)
        return (f"{summary.computed} of {summary.images_in_split} images searched, "
                f"recall@0.5 {summary.recall['0.5']:.3f}")

    def pretrain() -> str:
        job = prepare_pretrain(work, settings.pretrain, split=splits.train, device=plan.device)
        if settings.pretrain_minutes and not job.done:
            epochs = budget_epochs(work, job, settings.pretrain_minutes)
            if epochs < job.config.epochs:
                log(f"  pretraining budget {settings.pretrain_minutes:g} min: {epochs} epochs instead of "
                    f"{job.config.epochs}")
                job = prepare_pretrain(work, dataclasses.replace(settings.pretrain, epochs=epochs),
                                       split=splits.train, device=plan.device)
        with progress_bar(0 if job.done else job.steps, f"pretrain {splits.train}") as advance:
            summary = run_pretrain(job, progress=advance)
        last = summary.history[-1]
        return (("cached" if summary.skipped else f"{len(summary.history)} epochs")
                + _resumed(summary.resumed_from) + f", crop accuracy {last.accuracy:.3f}")

    views = tuple(sorted({view for view_set in settings.candidates["tta"] for view in view_set}))

    def extract(split: str, with_views: tuple[str, ...]) -> str:
        job = prepare_extract(work, split, scales=settings.extract["scales"], target=settings.extract["target"],
                              precision=settings.extract["precision"], views=with_views, device=plan.device)
        with progress_bar(len(job.image_ids), f"extract {split}") as advance:
            summary = run_extract(job, progress=advance)
        scales = ",".join(str(s) for s in job.config.scales)
        return f"{summary.computed} images computed, scales {scales}, {job.config.precision}"

    def finetune() -> str:
        with progress_bar(settings.finetune.epochs * split_size(work, splits.train), "finetune") as advance:
            summary = run_finetune(work, splits.train, settings.finetune, progress=advance, device=plan.device)
        return ("cached" if not summary.trained else
                f"accuracy {summary.final_accuracy:.3f}{_resumed(summary.resumed_from)}")

    def bbox(split: str) -> str:
        with progress_bar(split_size(work, split), f"train-bbox {split}") as advance:
            summary = run_train_bbox(work, split, settings.bbox, progress=advance, memo=memo)
        return "cached" if not summary.trained else f"{len(summary.reports)} classes"

    selection: list[Selection] = []
    memo = PooledMemo(memory_budget(POOLED_MEMO_BYTES))  # windows pooled once for every SVM and val score

    def select() -> str:
        scorer = ValScorer(work, splits.val, progress_bar, memo)
        selection.append(select_settings(work, splits.train, settings.svm, settings.candidates, scorer,
                                         progress_bar, log=lambda line: log(f"  {line}"), memo=memo))
        return f"{selection[0].describe()}: val mAP {selection[0].val_map:.4f}"

    def final_svm() -> str:
        with progress_bar(2 * split_size(work, splits.final), f"train-svm {splits.final}") as advance:
            summary = run_train_svm(work, splits.final, selection[0].svm, progress=advance, memo=memo)
        return "cached" if not summary.trained else f"{len(summary.reports)} classes"

    step(f"propose {splits.train}", lambda: propose(splits.train))
    step(f"propose {splits.val}", lambda: propose(splits.val))
    step("pretrain", pretrain)
    step(f"extract {splits.train}", lambda: extract(splits.train, ()))
    step(f"extract {splits.val}", lambda: extract(splits.val, views))
    step("finetune", finetune)
    if settings.finetune.train_conv:  # a new trunk: the val split's features are recomputed with it too
        step(f"extract {splits.val} (trained trunk)", lambda: extract(splits.val, views))
    step(f"train-bbox {splits.train}", lambda: bbox(splits.train))
    step("select on val", select)
    step(f"train-svm {splits.final}", final_svm)
    step(f"train-bbox {splits.final}", lambda: bbox(splits.final))
    chosen = selection[0]
    work.record_stage(SELECTION_RECORD, {
        "chosen": {"layer": chosen.svm.layer, "C": chosen.svm.C, "fc7_scale": chosen.svm.fc7_scale,
                   "augment_positives": list(chosen.svm.augment_positives), "tta": list(chosen.tta)},
        "val_map": chosen.val_map, "val_split": splits.val, "train_split": splits.train,
        "final_split": splits.final, "trials": [dataclasses.asdict(t) for t in chosen.trials]})
    seconds = time.perf_counter() - began
    path = work.root / SUMMARY_FILE
    write_summary(path, {
        "data_root": str(settings.data_root), "splits": dataclasses.asdict(splits),
        "settings": [{"setting": k, "value": v, "source": s} for k, v, s in settings.rows()],
        "times": [dataclasses.asdict(t) for t in times], "seconds": seconds,
        "selection": to_jsonable(chosen), "val_map": chosen.val_map})
    return TrainResult(plan, chosen, times, seconds, path)


#: Summary entries that describe the run itself, not what it trained: a fully cached re-run
#: differs from the run that trained in these only.
RUN_ENTRIES = ("times", "seconds")


def write_summary(path: Path, summary: dict) -> None:
    """Write ``summary`` as ``path`` unless the existing summary says the same apart from
    :data:`RUN_ENTRIES`: a fully cached re-run keeps the summary (and times) of the run that
    trained, and writes nothing, so it works in a read-only work directory."""
    if path.is_file():
        try:
            old = read_json(path)
        except WorkdirError:
            old = None  # unreadable: written again
        if isinstance(old, dict) and _without_run_entries(old) == _without_run_entries(to_jsonable(summary)):
            return
    atomic_write_json(path, summary)


def _without_run_entries(summary: dict) -> str:
    """``summary`` less :data:`RUN_ENTRIES`, as canonical JSON (tuples and lists alike)."""
    return json.dumps(to_jsonable({k: v for k, v in summary.items() if k not in RUN_ENTRIES}), sort_keys=True)


def _resumed(epochs: int) -> str:
    """The step note's mention of a resumed run (a checkpoint of a killed one), else nothing."""
    return f" (resumed from epoch {epochs})" if epochs else ""


def budget_epochs(work: WorkDir, job, minutes: float) -> int:
    """Epochs of ``job`` (a ``PretrainJob``) that fit in ``minutes``, from a short timing probe
    (``sppdet.stages.pretrain.estimate_epoch_seconds``), at least ``MIN_PRETRAIN_EPOCHS`` and at
    most the planned epochs. The answer is kept in ``WORKDIR/pretrain-budget.json`` under the
    settings and budget it was made for, so a re-run reuses the trunk instead of probing again."""
    key = content_hash({"config": job.config, "split": job.dataset.split, "minutes": minutes,
                        "data": str(job.dataset.root)})
    path = work.root / BUDGET_FILE
    decisions = read_json(path) if path.is_file() else {}
    if key not in decisions:
        per_epoch = estimate_epoch_seconds(job)
        fitting = int(minutes * 60 // max(per_epoch, 1e-6))
        decisions[key] = {"epochs": max(MIN_PRETRAIN_EPOCHS, min(job.config.epochs, fitting)),
                          "seconds_per_epoch": per_epoch, "minutes": minutes}
        atomic_write_json(path, decisions)
    return int(decisions[key]["epochs"])
