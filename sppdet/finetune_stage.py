"""The ``finetune`` stage: fc6 -> fc7 -> fc8 trained on cached pooled features, conv frozen.

SPEC section 7 (see ``sppdet.head`` for the recipe). Windows are streamed from the caches image
by image (``sppdet.window_source``): each pass visits the split's images in a seeded random
order, labels the image's ground-truth boxes and proposals (foreground IoU >= 0.5, background
[0.1, 0.5)), samples ``windows_per_image`` of them with a 25% foreground share, pools just those,
and feeds mini-batches of ``batch_size`` windows to SGD. Memory holds one batch, never the split.

Initialisation: the head trained by ``sppdet pretrain`` when its recorded pooled dimension, hidden
sizes and class count match (the paper starts from ImageNet fc6/fc7), else seeded random.
Output: ``finetune-<hash>/head.pt``; the hash covers the config, the features, the proposals and
the initial head, so changing any of them trains a new head. ``epochs = 0`` saves the pretrained
head untouched (the paper's "fc7" rows: SVMs on fc7 without fine-tuning); it needs one to start
from. ``method`` ("spp" or "rcnn",
``sppdet.methods``) picks the window features and the ``config.json`` record (``finetune`` or
``finetune:rcnn``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sppdet.config import FinetuneConfig
from sppdet.errors import ConfigError, ModelError, WorkdirError
from sppdet.head import FcHead, iterate_minibatches, label_windows, load_head, sample_windows, save_head, train_head
from sppdet.methods import DEFAULT_METHOD, stage_key
from sppdet.parallel import Progress, no_progress
from sppdet.store import WorkDir, file_hash
from sppdet.window_source import WindowSource

STAGE = "finetune"
HEAD_FILE = "head.pt"


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
    if (arch["in_dim"], tuple(arch["hidden"]), arch["num_classes"]) != (
            source.dim, tuple(config.hidden), len(source.classes)):
        return None, "random"
    return path, file_hash(path)


def window_batches(source: WindowSource, config: FinetuneConfig, epoch: int, progress: Progress):
    """Mini-batches (pooled [B, D] float32, labels [B] int64) of one pass over the split."""
    rng = np.random.default_rng((config.seed, epoch))

    def per_image():
        for image_id in rng.permutation(source.image_ids):
            gt_boxes, gt_labels, _ = source.ground_truth(image_id)
            known = gt_labels > 0
            boxes = np.concatenate([gt_boxes[known], source.proposals(image_id)])
            labels = label_windows(boxes, gt_boxes[known], gt_labels[known], config.fg_iou,
                                   (config.bg_iou_low, config.fg_iou))
            chosen = sample_windows(labels, config.windows_per_image, config.fg_fraction, rng)
            progress(1)
            if len(chosen):
                yield source.pool(image_id, boxes[chosen]), labels[chosen]

    return iterate_minibatches(per_image(), config.batch_size)


def run_finetune(workdir: WorkDir, split: str = "trainval", config: FinetuneConfig = FinetuneConfig(),
                 data_root=None, progress: Progress = no_progress,
                 method: str = DEFAULT_METHOD) -> FinetuneSummary:
    """Train (or find already trained) the fc head on ``split`` with ``method``'s window features;
    record it in ``config.json``."""
    source = WindowSource(workdir, split, data_root, method=method)
    init_path, init_id = _pretrained_head(workdir, source, config)
    folder = workdir.stage_dir(STAGE, config, inputs={**source.inputs, "init": init_id})
    head_path = folder / HEAD_FILE
    start = time.perf_counter()
    trained = not head_path.is_file()
    if config.epochs == 0 and init_path is None:
        raise ConfigError(f"--epochs 0 keeps the head of `sppdet pretrain`, but {workdir.root} has "
                          f"none for {source.dim}-d features, hidden {tuple(config.hidden)} and "
                          f"{len(source.classes)} classes; run sppdet pretrain or use --epochs >= 1")
    if trained:
        torch.manual_seed(config.seed)
        head = FcHead(source.dim, config.hidden, len(source.classes), config.dropout)
        if init_path is not None:
            head.load_state_dict(load_head(init_path)[0].state_dict())
        history = train_head(head, lambda epoch: window_batches(source, config, epoch, progress),
                             config.epochs, config.lr, config.momentum, config.weight_decay,
                             config.seed, progress)
        if config.epochs and (not history or history[-1].seen == 0):
            raise WorkdirError(f"{source.dataset.root}: split {split!r} gave no training windows; "
                               "check its annotations and proposals")
        stats = ({"final_loss": history[-1].mean_loss, "final_accuracy": history[-1].accuracy}
                 if history else {"final_loss": float("nan"), "final_accuracy": float("nan")})
        save_head(head_path, head, {"feature_hash": source.feature_hash, "classes": list(source.classes),
                                    "config": config, **stats})
    else:
        progress(config.epochs * len(source.image_ids))
    _, meta = load_head(head_path)
    workdir.record_stage(stage_key(STAGE, method), {"folder": folder.name,
                                                    "head": str(head_path.relative_to(workdir.root)),
                                 "split": split, "config": config})
    return FinetuneSummary(folder, trained, "pretrain" if init_path else "random", config.epochs,
                           meta["final_loss"], meta["final_accuracy"], time.perf_counter() - start)


def finetuned_head(workdir: WorkDir, feature_hash: str, in_dim: int,
                   method: str = DEFAULT_METHOD) -> tuple[FcHead, str]:
    """The head recorded by the last ``finetune`` with ``method`` and its file hash;
    ``WorkdirError`` if there is none, ``ModelError`` if it was trained on other features than
    ``feature_hash``."""
    record = workdir.config().get("stages", {}).get(stage_key(STAGE, method))
    if not record or not (workdir.root / record["head"]).is_file():
        flag = "" if method == DEFAULT_METHOD else f" --method {method}"
        raise WorkdirError(f"{workdir.root}: no fine-tuned fc head; run sppdet finetune{flag} first "
                           "(or use --layer pool5)")
    path = workdir.root / record["head"]
    head, meta = load_head(path, expected_in_dim=in_dim)
    if meta.get("feature_hash") != feature_hash:
        raise ModelError(f"{path}: trained on features {meta.get('feature_hash')}, these are "
                         f"{feature_hash}; re-run `sppdet finetune`")
    return head, file_hash(path)
