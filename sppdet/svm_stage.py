"""The ``train-svm`` stage: per-class linear SVMs on fc7 (or pool5) features of the caches.

SPEC section 8 via ``sppdet.svm``. Two streaming passes over the split (``sppdet.window_source``):
the first pools only ground-truth boxes (the positives, R-CNN's first pass); the second pools every
proposal of each image for hard-negative mining. The feature scale (mean norm 20) is measured
R-CNN's way on random proposals of random images before mining.

``--layer fc7`` reads the head of the last ``sppdet finetune``; its file hash becomes part of the
model's feature hash, so SVMs trained on one head refuse to score another's features.
Output: ``svm-<hash>/svm.npz``. ``method`` ("spp" or "rcnn", ``sppdet.methods``) picks the window
features, the fine-tuned head and the ``config.json`` record (``train-svm`` or ``train-svm:rcnn``).
``levels`` (SPP only; default 1, 2, 3, 6) pools the windows with another pyramid, for the paper's
pyramid ablation with ``--layer pool5``; the record keeps them, so ``eval`` and ``detect`` pool the
same way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from sppdet.config import SvmConfig
from sppdet.errors import ConfigError, WorkdirError
from sppdet.finetune_stage import finetuned_head
from sppdet.head import fc7_features
from sppdet.methods import DEFAULT_METHOD, stage_key
from sppdet.parallel import Progress, no_progress
from sppdet.store import WorkDir
from sppdet.svm import SvmClassReport, SvmModel, train_svms
from sppdet.window_source import WindowSource, image_windows, sample_feature_scale
from sppdet.windows import collect_positives

STAGE = "train-svm"
MODEL_FILE = "svm.npz"
LAYERS = ("fc7", "pool5")


@dataclass
class SvmSummary:
    """What a train-svm run did; ``reports`` is empty when a finished model was reused."""

    folder: Path
    trained: bool
    reports: list[SvmClassReport]
    seconds: float


def layer_transform(workdir: WorkDir, source: WindowSource, layer: str):
    """(pooled -> features function or None, feature hash) for ``layer`` "fc7" or "pool5"."""
    if layer not in LAYERS:
        raise ConfigError(f"--layer {layer!r}: choose one of {', '.join(LAYERS)}")
    if layer == "pool5":
        return None, f"{source.feature_hash}:pool5"
    head, head_id = finetuned_head(workdir, source.feature_hash, source.dim, source.method)
    return (lambda pooled: fc7_features(head, pooled)), f"{source.feature_hash}:fc7:{head_id}"


def run_train_svm(workdir: WorkDir, split: str = "trainval", config: SvmConfig = SvmConfig(),
                  data_root=None, progress: Progress = no_progress,
                  method: str = DEFAULT_METHOD, levels=None) -> SvmSummary:
    """Train (or find already trained) the SVMs on ``split`` with ``method``'s window features
    pooled at pyramid ``levels`` (None: the default); record them in ``config.json``.
    ``progress`` advances once per image of each of the two passes."""
    start = time.perf_counter()
    source = WindowSource(workdir, split, data_root, levels=levels, method=method)
    transform, feature_hash = layer_transform(workdir, source, config.layer)
    folder = workdir.stage_dir("svm", config, inputs={**source.inputs, "features": feature_hash})
    path = folder / MODEL_FILE
    reports: list[SvmClassReport] = []
    if not path.is_file():
        empty = source.proposals(source.image_ids[0])[:0]

        def positives():
            for image_id in source.image_ids:
                progress(1)
                yield image_windows(source, image_id, transform, empty, config.use_difficult)

        pos_features, pos_labels = collect_positives(positives())
        scale = sample_feature_scale(source, config.target_norm, transform, seed=config.seed)

        def everything():
            for image_id in source.image_ids:
                yield image_windows(source, image_id, transform, None, config.use_difficult)

        model, reports = train_svms(pos_features, pos_labels, everything(), source.classes, config,
                                    feature_scale=scale, feature_hash=feature_hash, progress=progress)
        model.save(path)
    else:
        progress(2 * len(source.image_ids))
    workdir.record_stage(stage_key(STAGE, method), {"folder": folder.name,
                                                    "model": str(path.relative_to(workdir.root)),
                                                    "layer": config.layer, "feature_hash": feature_hash,
                                                    "levels": list(source.levels), "config": config})
    return SvmSummary(folder, bool(reports), reports, time.perf_counter() - start)


def trained_svms(workdir: WorkDir, feature_hash: str, method: str = DEFAULT_METHOD) -> SvmModel:
    """The SVMs of the last ``train-svm`` with ``method``, checked against ``feature_hash``."""
    record = workdir.config().get("stages", {}).get(stage_key(STAGE, method))
    if not record:
        flag = "" if method == DEFAULT_METHOD else f" --method {method}"
        raise WorkdirError(f"{workdir.root}: no trained SVMs; run sppdet train-svm{flag} first")
    return SvmModel.load(workdir.root / record["model"], feature_hash=feature_hash)
