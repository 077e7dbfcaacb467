"""The ``train-bbox`` stage: per-class ridge box regressors on pooled conv5 features.

docs/algorithm.md section 9 via ``sppdet.models.bbox_reg``. One streaming pass over the split: per
image, only the proposals whose best IoU with a ground-truth box exceeds ``min_overlap`` (plus the ground-truth
boxes) are pooled, since no other window is a training example. Features are scaled to mean
norm 20, measured R-CNN's way on random proposals of random images. Output: ``bbox-<hash>/bbox.npz``.
``method`` ("spp" or "rcnn", ``sppdet.workdir.methods``) picks the window features and the ``config.json``
record (``train-bbox`` or ``train-bbox:rcnn``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from sppdet.models.bbox_reg import BboxClassReport, train_bbox_regressors
from sppdet.models.model_file import model_file_problem, reusable
from sppdet.models.svm import svm_feature_id
from sppdet.structures.boxes import iou_matrix
from sppdet.config import BboxRegConfig
from sppdet.workdir.methods import DEFAULT_METHOD, stage_key
from sppdet.parallel import Progress, no_progress
from sppdet.workdir.records import BBOX_RECORD
from sppdet.workdir.store import WorkDir, stage_lock
from sppdet.workdir.window_source import PooledMemo, WindowSource, image_windows, sample_feature_scale

STAGE = BBOX_RECORD
MODEL_FILE = "bbox.npz"


@dataclass
class BboxSummary:
    """What a train-bbox run did; ``reports`` is empty when a finished model was reused."""

    folder: Path
    trained: bool
    reports: list[BboxClassReport]
    seconds: float


def run_train_bbox(workdir: WorkDir, split: str = "trainval", config: BboxRegConfig = BboxRegConfig(),
                   data_root=None, progress: Progress = no_progress,
                   method: str = DEFAULT_METHOD, memo: PooledMemo | None = None) -> BboxSummary:
    """Train (or find already trained) the box regressors on ``split`` with ``method``'s window
    features; record them. ``memo``: pooled windows kept across runs (``sppdet train``)."""
    start = time.perf_counter()
    source = WindowSource(workdir, split, data_root, method=method, memo=memo)
    feature_hash = svm_feature_id(source.feature_hash, "pool5")
    folder = workdir.stage_dir("bbox", config, inputs=source.inputs)
    path = folder / MODEL_FILE
    reports: list[BboxClassReport] = []
    absent = not path.exists()
    if not _model_reusable(path):
        with stage_lock(folder):  # one process trains a folder at a time (WorkdirError naming the other)
            if absent and _model_reusable(path):  # another process finished it meanwhile
                progress(len(source.image_ids))
            else:
                reports = _train(source, config, feature_hash, path, progress)
    else:
        progress(len(source.image_ids))
    workdir.record_stage(stage_key(STAGE, method), {"folder": folder.name,
                                                    "model": str(path.relative_to(workdir.root)),
                                                    "feature_hash": feature_hash, "config": config})
    return BboxSummary(folder, bool(reports), reports, time.perf_counter() - start)


def _model_reusable(path: Path) -> bool:
    """Whether ``path`` is a finished box regression model (a corrupt one is warned about)."""
    return reusable(path, partial(model_file_problem, kind="bbox_reg"))


def _train(source: WindowSource, config: BboxRegConfig, feature_hash: str, path: Path,
           progress: Progress) -> list[BboxClassReport]:
    """Train the regressors on ``source``'s windows near a ground-truth box, save them to
    ``path`` and return their reports (module docstring)."""
    scale = sample_feature_scale(source, config.target_norm, seed=config.seed)

    def examples():
        for image_id in source.image_ids:
            gt_boxes, gt_labels, _ = source.ground_truth(image_id)
            proposals = source.proposals(image_id)
            best = iou_matrix(proposals, gt_boxes[gt_labels > 0]).max(axis=1, initial=0.0)
            near = best > config.min_overlap
            yield image_windows(source, image_id, None, proposals[near], config.use_difficult)

    model, reports = train_bbox_regressors(examples(), source.classes, config, feature_scale=scale,
                                           feature_hash=feature_hash, progress=progress)
    model.save(path)
    return reports


