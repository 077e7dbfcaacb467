"""Per-class linear SVMs with R-CNN hard-negative mining (docs/algorithm.md section 8).

Shape shorthand: R windows in one image, G ground-truth boxes, P positives, N cached negatives,
K classes (labels 1..K; 0 is background), D feature length (fc7 width, or C * 50 for pool5).
Boxes follow ``sppdet.structures.boxes``: float32 ``[n, 4]`` (x1, y1, x2, y2), continuous 0-based pixels.

The recipe is rbgirshick/rcnn ``rcnn_train.m``, run over a stream of :class:`ImageWindows` (one
image at a time, so memory holds the positives and the kept negatives, never the dataset):

- Positives: every ground-truth box of the class, all gathered before mining starts (R-CNN's
  first pass; :func:`collect_positives`). Difficult boxes are positives as in R-CNN
  (``use_difficult``); they always count when deciding what is a negative.
- Negatives: proposals (not ground-truth rows, as docs/algorithm.md section 8 says; R-CNN also
  used other classes' ground-truth boxes) whose IoU with every box of the class is < 0.3.
- Features are multiplied by ``feature_scale = 20 / mean L2 norm``. R-CNN measures the mean norm
  on 200 random windows of 200 random images; pass such a sample's :func:`estimate_feature_scale`,
  or leave ``feature_scale=None`` to measure it on every window of the first image streamed.
- One pass: the first image adds all its negatives; later images add those scoring > -1.0001.
  A class retrains when it has added more than ``retrain_every`` negatives since its last
  training, after the first image, and at the end (unless nothing was added since). After every
  retrain, cached negatives scoring < -1.2 are evicted. K miners share the one image stream.
- The paper's "remove a negative that overlaps another negative by > 0.7" is applied per image
  and class to the negatives being added: greedy NMS at 0.7 in decreasing current score (ties in
  row order), so the hardest of overlapping negatives is kept. NMS before or after the > -1.0001
  filter gives the same set, because a box is only ever suppressed by a higher-scored one.
- Solver: scikit-learn ``LinearSVC`` (liblinear's L2-regularised L1-loss dual solver, R-CNN's
  ``-s 3``) with ``class_weight={+1: 2}`` (``-w1 2``) and ``intercept_scaling=10`` (``-B 10``).
  liblinear appends the constant 10 to every vector and regularises its weight like any other,
  so the objective is ``0.5 |w|^2 + 0.5 (b / 10)^2 + C (2 sum_pos hinge + sum_neg hinge)``
  (:func:`svm_objective`), exactly R-CNN's. Stopping tolerance 1e-2 (R-CNN's liblinear: 0.1;
  1e-3 often ran into the iteration cap for the same choices on val, ``docs/decisions.md``).
  liblinear copies the training set in float64, so a retrain briefly needs ~3x its size.
- :class:`sppdet.structures.image_windows.ImageWindows` (also the input of ``sppdet.models.bbox_reg``)
  is built per image and per feature layer by ``sppdet.structures.image_windows``.
- A class without positives never mines and gets ``w = 0, b = -1`` (the SVM optimum with only
  negatives); a class that never saw a negative gets the same.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.svm import LinearSVC

from sppdet.models.head import fc7_features
from sppdet.structures.boxes import nms
from sppdet.config import SVM_LAYERS, SvmConfig
from sppdet.errors import ModelError
from sppdet.models.model_file import read_model_file, write_model_file
from sppdet.parallel import Progress, no_progress
from sppdet.structures.image_windows import ImageWindows, estimate_feature_scale


@dataclass(frozen=True)
class SvmObjective:
    """R-CNN's training objective split into its terms (total = pos + neg + reg)."""

    pos: float
    neg: float
    reg: float
    total: float


def svm_objective(w, b: float, pos, neg, config: SvmConfig) -> SvmObjective:
    """The primal objective liblinear minimises, for scaled ``pos`` ``[P, D]`` and ``neg`` ``[N, D]``."""
    w = np.asarray(w, dtype=np.float64)
    pos_loss = config.C * config.positive_weight * np.maximum(0.0, 1 - (pos @ w + b)).sum()
    neg_loss = config.C * np.maximum(0.0, 1 + (neg @ w + b)).sum()
    reg = 0.5 * float(w @ w) + 0.5 * (b / config.bias_feature) ** 2
    return SvmObjective(float(pos_loss), float(neg_loss), reg, float(pos_loss + neg_loss + reg))


def fit_linear_svm(pos, neg, config: SvmConfig) -> tuple[np.ndarray, float, bool]:
    """Train one class: ``(w float32 [D], b, converged)`` from scaled ``pos`` and ``neg``."""
    x = np.concatenate([pos, neg]).astype(np.float64)
    y = np.concatenate([np.ones(len(pos)), -np.ones(len(neg))])
    svc = LinearSVC(penalty="l2", loss="hinge", dual=True, C=config.C,
                    class_weight={1: config.positive_weight}, fit_intercept=True,
                    intercept_scaling=config.bias_feature, tol=config.tol,
                    max_iter=config.max_iter, random_state=config.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        svc.fit(x, y)
    return svc.coef_[0].astype(np.float32), float(svc.intercept_[0]), bool(svc.n_iter_ < config.max_iter)


@dataclass(frozen=True, eq=False)
class SvmModel:
    """Linear SVMs: ``weights`` float32 ``[D, K]``, ``biases`` float32 ``[K]``, applied to features
    multiplied by ``feature_scale``; ``metadata`` holds the config, feature hash and reports."""

    weights: np.ndarray
    biases: np.ndarray
    feature_scale: float
    class_names: tuple[str, ...]
    metadata: dict

    def scores(self, features) -> np.ndarray:
        """SVM scores float32 ``[R, K]`` of unscaled features ``[R, D]``."""
        x = np.asarray(features, dtype=np.float32) * np.float32(self.feature_scale)
        return x @ self.weights + self.biases

    def save(self, path) -> None:
        """Write the model to ``path`` (``.npz``, atomically, no pickle)."""
        write_model_file(path, "svm", {"weights": self.weights, "biases": self.biases},
                         {**self.metadata, "feature_scale": self.feature_scale,
                          "class_names": list(self.class_names),
                          "feature_dim": int(self.weights.shape[0])})

    @classmethod
    def load(cls, path, feature_hash: str | None = None, feature_dim: int | None = None) -> "SvmModel":
        """Read a model saved by :meth:`save`; ``ModelError`` if it was trained on other features."""
        arrays, meta = read_model_file(path, "svm", "sppdet train-svm", feature_hash, feature_dim)
        return cls(arrays["weights"], arrays["biases"], float(meta["feature_scale"]),
                   tuple(meta["class_names"]), meta)


@dataclass(frozen=True)
class SvmClassReport:
    """One class's training summary (``negatives``: the final training set's)."""

    name: str
    positives: int
    negatives: int
    negatives_added: int  # mined over the whole pass
    peak_negatives: int  # largest the cache ever was
    retrains: int
    converged: bool
    objective: SvmObjective | None


class HardNegativeMiner:
    """K hard-negative miners fed by one stream of images (see the module docstring).

    ``positive_features`` ``[P, D]`` unscaled, ``positive_labels`` int ``[P]`` in 1..K.
    """

    def __init__(self, positive_features, positive_labels, num_classes: int, config: SvmConfig,
                 feature_scale: float | None = None):
        self.config = config
        self.num_classes = num_classes
        labels = np.asarray(positive_labels)
        self.raw_positives = [np.asarray(positive_features, np.float32)[labels == k + 1]
                              for k in range(num_classes)]
        dim = np.asarray(positive_features).shape[1]
        self.weights = np.zeros((dim, num_classes), np.float32)
        self.biases = np.zeros(num_classes, np.float32)
        self.feature_scale = feature_scale
        self.negative_blocks: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
        self.added_since_training = np.zeros(num_classes, np.int64)
        self.added = np.zeros(num_classes, np.int64)
        self.peak = np.zeros(num_classes, np.int64)
        self.retrains = np.zeros(num_classes, np.int64)
        self.last_fit: list[tuple[int, bool, SvmObjective] | None] = [None] * num_classes
        self.images_seen = 0

    def negatives(self, k: int) -> np.ndarray:
        """The scaled negatives cached for class index ``k`` (0-based), float32 ``[N, D]``."""
        blocks = self.negative_blocks[k]
        return np.concatenate(blocks) if blocks else np.zeros((0, self.weights.shape[0]), np.float32)

    def add_image(self, windows: ImageWindows) -> None:
        """Mine one image's negatives for every class, retraining classes that hit the limit."""
        cfg, first = self.config, self.images_seen == 0
        self.images_seen += 1
        if not len(windows.features):
            return
        if self.feature_scale is None:
            self.feature_scale = estimate_feature_scale([windows.features], cfg.target_norm)
        x = windows.features.astype(np.float32) * np.float32(self.feature_scale)
        scores = x @ self.weights + self.biases
        proposal = windows.gt_labels == 0
        for k in range(self.num_classes):
            if not len(self.raw_positives[k]):
                continue
            candidate = proposal & (windows.overlaps[:, k] < np.float32(cfg.negative_overlap))
            if not first:
                candidate &= scores[:, k] > cfg.hard_threshold
            rows = np.flatnonzero(candidate)
            rows = rows[_suppress_overlapping(windows.boxes[rows], scores[rows, k], cfg.negative_nms)]
            if len(rows):
                self.negative_blocks[k].append(x[rows])
                self.added_since_training[k] += len(rows)
                self.added[k] += len(rows)
                self.peak[k] = max(self.peak[k], sum(map(len, self.negative_blocks[k])))
            if first or self.added_since_training[k] > cfg.retrain_every:
                self._retrain(k)

    def _retrain(self, k: int) -> None:
        neg = self.negatives(k)
        if not len(neg):
            return
        pos = self.raw_positives[k] * np.float32(self.feature_scale)
        w, b, converged = fit_linear_svm(pos, neg, self.config)
        self.weights[:, k], self.biases[k] = w, b
        self.last_fit[k] = (len(neg), converged, svm_objective(w, b, pos, neg, self.config))
        self.negative_blocks[k] = [neg[neg @ w + b >= self.config.evict_threshold]]
        self.added_since_training[k] = 0
        self.retrains[k] += 1

    def finish(self, class_names: Sequence[str]) -> list[SvmClassReport]:
        """Final retrain of classes with new negatives; one report per class."""
        reports = []
        for k in range(self.num_classes):
            if self.added_since_training[k] > 0 or self.last_fit[k] is None:
                self._retrain(k)
            if self.last_fit[k] is None:
                self.weights[:, k], self.biases[k] = 0.0, -1.0
            negatives, converged, objective = self.last_fit[k] or (0, True, None)
            reports.append(SvmClassReport(class_names[k], len(self.raw_positives[k]), negatives,
                                          int(self.added[k]), int(self.peak[k]),
                                          int(self.retrains[k]), converged, objective))
        return reports


def _suppress_overlapping(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Row indices (ascending) kept by NMS in decreasing score, ties broken by row order."""
    if threshold >= 1.0 or len(boxes) < 2:
        return np.arange(len(boxes))
    rank = np.empty(len(boxes), np.float32)
    rank[np.argsort(-scores, kind="stable")] = np.arange(len(boxes), 0, -1)
    return np.sort(nms(boxes, rank, threshold))


def train_svms(positive_features, positive_labels, images: Iterable[ImageWindows],
               class_names: Sequence[str], config: SvmConfig = SvmConfig(), *,
               feature_scale: float | None = None, feature_hash: str = "",
               progress: Progress | None = None,
               metadata: dict | None = None) -> tuple[SvmModel, list[SvmClassReport]]:
    """Train K = ``len(class_names)`` SVMs with one hard-negative mining pass over ``images``.

    ``positive_features`` ``[P, D]`` / ``positive_labels`` ``[P]`` from :func:`collect_positives`;
    ``feature_hash`` identifies the features (checked by :meth:`SvmModel.load`); ``progress`` is
    called once per image with the number of cached negatives; ``metadata`` is saved with the model.
    """
    progress = progress or no_progress
    miner = HardNegativeMiner(positive_features, positive_labels, len(class_names), config,
                              feature_scale)
    for windows in images:
        miner.add_image(windows)
        progress(1, negatives=sum(sum(map(len, b)) for b in miner.negative_blocks))
    return finish_svms(miner, class_names, config, feature_hash, metadata)


def finish_svms(miner: HardNegativeMiner, class_names: Sequence[str], config: SvmConfig,
                feature_hash: str = "", metadata: dict | None = None) -> tuple[SvmModel, list[SvmClassReport]]:
    """The model of a miner that has seen every image (its final retrains), with its reports;
    ``ModelError`` if it saw no windows."""
    if miner.feature_scale is None or not miner.images_seen:
        raise ModelError("no windows to mine negatives from; check the split and its proposals")
    reports = miner.finish(class_names)
    metadata = {**(metadata or {}), "config": dataclasses.asdict(config), "feature_hash": feature_hash,
                "reports": [dataclasses.asdict(r) for r in reports]}
    model = SvmModel(miner.weights.copy(), miner.biases.copy(), float(miner.feature_scale),
                     tuple(class_names), metadata)
    return model, reports


LAYERS = SVM_LAYERS


def svm_feature_id(pooled_hash: str, layer: str, head_id: str | None = None) -> str:
    """The identity of what SVMs (or box regressors, which read pool5) are trained on, saved
    with them and checked when they load: the pooled windows' hash, the layer and, for the fc7
    layers, the fine-tuned head file's hash."""
    return f"{pooled_hash}:pool5" if layer == "pool5" else f"{pooled_hash}:{layer}:{head_id}"


def svm_features(layer: str, pooled: np.ndarray, head=None, fc7_weight: float = 1.0,
                 fc7_of: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """The vectors the SVMs of ``layer`` read, float32 ``[R, F]``, from pooled ``[R, D]``: pool5
    itself, fc7 of ``head`` ``[R, H7]``, or for "pool5+fc7" ``[pool5, fc7_weight * fc7]``.
    ``fc7_of``: computes fc7 of ``head`` in its place (a memo, ``WindowSource.fc7_function``)."""
    if layer == "pool5":
        return pooled
    fc7 = fc7_of(pooled) if fc7_of is not None else fc7_features(head, pooled)
    return fc7 if layer == "fc7" else np.concatenate([pooled, np.float32(fc7_weight) * fc7], axis=1)
