"""The ``train-svm`` stage: per-class linear SVMs on fc7 (or pool5) features of the caches.

docs/algorithm.md section 8 via ``sppdet.models.svm``. Two streaming passes over the split
(``sppdet.workdir.window_source``): the first pools only ground-truth boxes (the positives, R-CNN's
first pass); the second pools every proposal of each image for hard-negative mining. The feature
scale (mean norm 20) is measured R-CNN's way on random proposals of random images before mining.

``--layer fc7`` reads the head of the last ``sppdet finetune``; its file hash becomes part of the
model's feature hash, so SVMs trained on one head refuse to score another's features.
``--layer pool5+fc7`` (beyond the paper, in the spirit of its model combination, docs/algorithm.md
section 12): each window's pool5 vector and its fc7 vector side by side, fc7 multiplied by the
ratio of their mean norms (measured on random proposals, saved with the model) so neither part
dominates. On the demo it scored above pool5 or fc7 alone (docs/decisions.md).
Output: ``svm-<hash>/svm.npz``. ``method`` ("spp" or "rcnn", ``sppdet.workdir.methods``) picks the window
features, the fine-tuned head and the ``config.json`` record (``train-svm`` or ``train-svm:rcnn``).
``extra_positives`` (beyond R-CNN, whose positives are the ground-truth boxes only): up to that
many proposals per object with IoU >= ``extra_positive_iou`` join the positives, drawn per image
from ``default_rng([seed, image index])`` (``sppdet.structures.image_windows.extra_positive_boxes``). Why: with
~150 objects per class and 3,200-dimensional pool5 vectors the SVMs overfit (on the demo the test
split's ground-truth boxes of the rotated classes score far below trainval's). The gain measured
on the demo was small (docs/decisions.md), so the default stays 0 (R-CNN).
``augment_positives`` (beyond R-CNN; SPP only; default none): each positive object (ground truth,
difficult ones only with ``use_difficult``) also gives the pooled vectors of its flipped,
quarter-turned or recoloured copies (``sppdet.models.object_copies``: a chip of the image at the
object's scale through the features' trunk, so no whole-image features are recomputed), channel
orders drawn from ``default_rng([seed, image index, 1])``. On the demo "flip,rot90" raised the
mAP more than the extra positives did and made them unnecessary (docs/decisions.md). The copies
cost one small conv pass per object and transform.
``levels`` (SPP only; default 1, 2, 3, 6) pools the windows with another pyramid, for the paper's
pyramid ablation with ``--layer pool5``; the record keeps them, so ``eval`` and ``detect`` pool the
same way.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from sppdet.models.svm import LAYERS, svm_feature_id, svm_features
from sppdet.models.object_copies import augmented_windows, check_augmentations
from sppdet.config import SvmConfig
from sppdet.data.images import load_bgr
from sppdet.errors import ConfigError, ModelError
from sppdet.workdir.trained import rebuild_trunk
from sppdet.workdir.trained import finetuned_head
from sppdet.models.head import fc7_features
from sppdet.models.model_file import model_file_problem, reusable
from sppdet.workdir.methods import DEFAULT_METHOD, stage_key
from sppdet.parallel import Progress, no_progress
from sppdet.fileio import atomic_save_npz
from sppdet.workdir.records import SVM_RECORD
from sppdet.workdir.store import WorkDir, stage_lock
from sppdet.workdir.caches import record_source, source_is_current
from sppdet.data.identity import image_signature
from sppdet.models.svm import HardNegativeMiner, SvmClassReport, finish_svms
from sppdet.workdir.window_source import PooledMemo, WindowSource, image_windows, sample_feature_scale
from sppdet.structures.image_windows import collect_positives, extra_positive_boxes, make_image_windows

STAGE = SVM_RECORD
MODEL_FILE = "svm.npz"
#: Windows whose vector norms balance the two parts of "pool5+fc7" (as R-CNN measures its scale).
BALANCE_IMAGES, BALANCE_WINDOWS = 50, 200


@dataclass
class SvmSummary:
    """What a train-svm run did; ``reports`` is empty when a finished model was reused."""

    folder: Path
    trained: bool
    reports: list[SvmClassReport]
    seconds: float
    feature_hash: str = ""  # what the SVMs read (features, layer and head), checked when loaded


def _balance_weight(source: WindowSource, head, seed: int, fc7_of=None) -> float:
    """mean |pool5| / mean |fc7| over random proposals of random images (seeded), so that both
    parts of "pool5+fc7" have the same mean norm before the common R-CNN scaling (``fc7_of``:
    computes fc7 of ``head`` in its place, ``WindowSource.fc7_function``)."""
    fc7_of = fc7_of or partial(fc7_features, head)
    rng = np.random.default_rng(seed)
    norms = np.zeros(2)
    for image_id in rng.permutation(source.image_ids)[:BALANCE_IMAGES]:
        proposals = source.proposals(image_id)
        pooled = source.pool(image_id, proposals[rng.permutation(len(proposals))[:BALANCE_WINDOWS]])
        norms += [np.linalg.norm(pooled, axis=1).sum(), np.linalg.norm(fc7_of(pooled), axis=1).sum()]
    if not norms[1] > 0:
        raise ModelError("fc7 features are all zero; check the finetune stage (or use --layer pool5)")
    return float(norms[0] / norms[1])


def layer_head(workdir: WorkDir, source: WindowSource, layer: str):
    """(the fine-tuned head ``layer`` reads, None for pool5; the SVMs' feature hash)."""
    if layer not in LAYERS:
        raise ConfigError(f"--layer {layer!r}: choose one of {', '.join(LAYERS)}")
    if layer == "pool5":
        return None, svm_feature_id(source.feature_hash, "pool5")
    head, head_id = finetuned_head(workdir, source.feature_hash, source.dim, source.method)
    return head, svm_feature_id(source.feature_hash, layer, head_id)


#: SvmConfig fields that only the hard-negative miner and the solver read: configs that differ in
#: nothing else see the same windows, so :func:`train_svm_variants` mines them in one pass.
MINER_FIELDS = ("C", "positive_weight", "hard_threshold", "evict_threshold", "retrain_every",
                "negative_nms", "tol", "max_iter")


def run_train_svm(workdir: WorkDir, split: str = "trainval", config: SvmConfig = SvmConfig(),
                  data_root=None, progress: Progress = no_progress,
                  method: str = DEFAULT_METHOD, levels=None, memo: PooledMemo | None = None) -> SvmSummary:
    """Train (or find already trained) the SVMs on ``split`` with ``method``'s window features
    pooled at pyramid ``levels`` (None: the default); record them in ``config.json``.
    ``progress`` advances once per image of each of the two passes; ``memo`` keeps pooled
    windows for later runs in this process (``sppdet train``)."""
    start = time.perf_counter()
    source = WindowSource(workdir, split, data_root, levels=levels, method=method, memo=memo)
    (summary,) = train_svm_variants(workdir, source, [config], progress)
    path = summary.folder / MODEL_FILE
    workdir.record_stage(stage_key(STAGE, method), {"folder": summary.folder.name,
                                                    "model": str(path.relative_to(workdir.root)),
                                                    "layer": config.layer, "feature_hash": summary.feature_hash,
                                                    "levels": list(source.levels), "config": config})
    return SvmSummary(summary.folder, summary.trained, summary.reports, time.perf_counter() - start,
                      summary.feature_hash)


def train_svm_variants(workdir: WorkDir, source: WindowSource, configs: list[SvmConfig],
                       progress: Progress = no_progress) -> list[SvmSummary]:
    """Train the SVMs of each config not trained yet, all in one pass over ``source``: the configs
    may differ only in :data:`MINER_FIELDS` (e.g. several C values), so each image is pooled once
    and fed to one miner per config. Each model is saved in the folder and bytes a separate
    :func:`run_train_svm` would give it; nothing is recorded. ``progress`` advances once per image
    of each of the two passes (all at once when every model exists)."""
    start = time.perf_counter()
    first = configs[0]
    shared = {f: v for f, v in first.__dict__.items() if f not in MINER_FIELDS}
    for config in configs[1:]:
        if {f: v for f, v in config.__dict__.items() if f not in MINER_FIELDS} != shared:
            raise ConfigError("SVM variants trained together may differ only in " + ", ".join(MINER_FIELDS))
    head, feature_hash = layer_head(workdir, source, first.layer)
    augmenting = _check_augmentation(source, first)
    folders = [workdir.stage_dir("svm", config, inputs={**source.inputs, "features": feature_hash})
               for config in configs]
    todo = [i for i, folder in enumerate(folders) if not _model_reusable(folder)]
    absent = {i for i in todo if not (folders[i] / MODEL_FILE).exists()}
    reports: dict[int, list[SvmClassReport]] = {}
    with contextlib.ExitStack() as locks:
        for i in todo:  # one process trains a folder at a time (WorkdirError naming the other)
            locks.enter_context(stage_lock(folders[i]))
        todo = [i for i in todo if i not in absent or not _model_reusable(folders[i])]  # done meanwhile?
        if todo:
            _train_todo(workdir, source, configs, folders, todo, head, feature_hash, augmenting, reports, progress)
        else:
            progress(2 * len(source.image_ids))
    seconds = time.perf_counter() - start
    return [SvmSummary(folder, i in reports, reports.get(i, []), seconds, feature_hash)
            for i, folder in enumerate(folders)]


def _model_reusable(folder: Path) -> bool:
    """Whether ``folder`` holds a finished SVM model (a corrupt one is warned about, ``reusable``)."""
    return reusable(folder / MODEL_FILE, partial(model_file_problem, kind="svm"))


def _train_todo(workdir: WorkDir, source: WindowSource, configs: list[SvmConfig], folders: list[Path],
                todo: list[int], head, feature_hash: str, augmenting: bool,
                reports: dict[int, list[SvmClassReport]], progress: Progress) -> None:
    """Train and save the SVMs of ``configs[i]`` into ``folders[i]`` for each ``i`` in ``todo``, in
    one pass over ``source`` (:func:`train_svm_variants`); fills ``reports[i]``."""
    first = configs[0]
    fc7_weight, fc7_of = 1.0, source.fc7_function(head)
    if first.layer == "pool5+fc7":
        fc7_weight = _balance_weight(source, head, first.seed, fc7_of) * first.fc7_scale
    transform = None if head is None else partial(svm_features, first.layer, head=head, fc7_weight=fc7_weight,
                                                  fc7_of=fc7_of)
    trunk = rebuild_trunk(workdir, source.features_folder, source.info) if augmenting else None
    copies = _copies_folder(workdir, source, first) if augmenting else None

    def positives():
        for index, image_id in enumerate(source.image_ids):
            progress(1)
            yield _positive_windows(source, image_id, index, transform, first, trunk, copies)

    pos_features, pos_labels = collect_positives(positives())
    scale = sample_feature_scale(source, first.target_norm, transform, seed=first.seed)
    miners = [HardNegativeMiner(pos_features, pos_labels, len(source.classes), configs[i], scale)
              for i in todo]
    for image_id in source.image_ids:
        windows = image_windows(source, image_id, transform, None, first.use_difficult)
        for miner in miners:
            miner.add_image(windows)
        progress(1)
    for i, miner in zip(todo, miners):
        model, reports[i] = finish_svms(miner, source.classes, configs[i], feature_hash,
                                        {"fc7_weight": fc7_weight})
        model.save(folders[i] / MODEL_FILE)


def _check_augmentation(source: WindowSource, config: SvmConfig) -> bool:
    """Whether ``config`` augments the positives; ``ConfigError`` for unknown augmentations or
    the R-CNN method (its cache holds vectors, not the maps the copies are pooled like)."""
    if not check_augmentations(config.augment_positives):
        return False
    if source.method != DEFAULT_METHOD:
        raise ConfigError("--augment-positives needs the SPP features of sppdet extract, not --method rcnn")
    return True


def _copies_folder(workdir: WorkDir, source: WindowSource, config: SvmConfig) -> Path | None:
    """The folder caching each image's pooled object copies (``copies-<hash>/<image id>.npz``),
    or None when the copies are drawn at random ("channels": their channel orders depend on the
    image's index in the split). Geometric copies depend only on the image, its objects, the
    trunk, scales and pyramid (the features' hash) and the transforms, so SVMs trained on other
    splits or with another C reuse them (e.g. ``sppdet train``'s final refit)."""
    if "channels" in config.augment_positives:
        return None
    settings = {"augment": list(config.augment_positives), "use_difficult": config.use_difficult}
    return workdir.stage_dir("copies", settings, inputs={"features": source.feature_hash,
                                                         "data": str(source.dataset.root)})


def _object_copies(trunk, bgr_path, boxes, source: WindowSource, config: SvmConfig, index: int,
                   cache: Path | None, image_id: str) -> tuple[np.ndarray, np.ndarray]:
    """Pooled copies float32 [N, D] and their object index int64 [N] (``augmented_windows``),
    read from / written to ``cache`` when it is given. A cached file is used only when it holds
    copies of exactly these object ``boxes`` [M, 4] of the current image content (its source,
    ``sppdet.workdir.caches``); an unreadable, older or stale one is recomputed."""
    path = cache / f"{image_id}.npz" if cache is not None else None
    if path is not None and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as stored:
                pooled, of, cached_boxes = stored["pooled"], stored["of"], stored["boxes"]
            if (pooled.ndim == 2 and len(pooled) == len(of) and np.array_equal(cached_boxes, boxes)
                    and source_is_current(cache, image_id, bgr_path)):
                return pooled, of
        except (OSError, ValueError, KeyError):
            pass
    signature = image_signature(bgr_path)
    pooled, of = augmented_windows(trunk, load_bgr(bgr_path), boxes, source.info.config.scales,
                                   config.augment_positives, np.random.default_rng([config.seed, index, 1]),
                                   source.info.config.target, source.levels,
                                   precision=source.info.config.precision)
    if path is not None:
        atomic_save_npz(path, pooled=pooled, of=of, boxes=np.asarray(boxes, np.float32))
        record_source(cache, image_id, signature)
    return pooled, of


def _positive_windows(source: WindowSource, image_id: str, index: int, transform, config: SvmConfig,
                      trunk=None, copies_cache: Path | None = None):
    """The ground-truth rows of one image plus its extra positives (if any) and, with ``trunk``,
    the transformed copies of its positive objects (``sppdet.models.object_copies``), the latter two
    posing as ground-truth rows of their object's class; this pass pools no other proposals."""
    gt_boxes, gt_labels, difficult = source.ground_truth(image_id)
    boxes, labels = np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
    if config.extra_positives:
        boxes, labels = extra_positive_boxes(gt_boxes, gt_labels, difficult, source.proposals(image_id),
                                             config.extra_positive_iou, config.extra_positives,
                                             np.random.default_rng([config.seed, index]))
    all_boxes = np.concatenate([gt_boxes, boxes])
    pooled = source.pool(image_id, all_boxes)
    all_labels = np.concatenate([gt_labels, labels])
    all_difficult = np.concatenate([difficult, np.zeros(len(boxes), bool)])
    objects = np.flatnonzero((gt_labels > 0) & (config.use_difficult | ~difficult))
    if trunk is not None and len(objects):
        copies, of = _object_copies(trunk, source.dataset.image_path(image_id), gt_boxes[objects], source, config,
                                    index, copies_cache, image_id)
        pooled = np.concatenate([pooled, copies])
        all_boxes = np.concatenate([all_boxes, gt_boxes[objects][of]])
        all_labels = np.concatenate([all_labels, gt_labels[objects][of]])
        all_difficult = np.concatenate([all_difficult, difficult[objects][of]])
    features = transform(pooled) if transform is not None else pooled
    return make_image_windows(features, all_boxes, all_labels, boxes[:0], len(source.classes), all_difficult,
                              config.use_difficult)


