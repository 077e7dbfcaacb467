"""Per-class ridge box regression on pooled conv5 features (docs/algorithm.md section 9).

Shape shorthand: R windows, G ground-truth boxes, n training examples of one class, K classes
(labels 1..K; 0 is background), D = C * 50 pooled conv5 length. Boxes follow ``sppdet.structures.boxes``:
float32 ``[R, 4]`` (x1, y1, x2, y2), continuous 0-based pixels; deltas are its
``encode_deltas``/``decode_deltas`` (tx, ty, tw, th).

The recipe is rbgirshick/rcnn ``rcnn_train_bbox_regressor.m``, over the same per-image stream of
:class:`sppdet.models.svm.ImageWindows` the SVMs use (built from pool5 features):

- Examples: every window (ground-truth rows included) whose best ground-truth box, over all
  classes and difficult ones included, overlaps it by IoU > ``min_overlap`` (0.6 as in R-CNN;
  SPP_net's release used 0.5). It trains the class of that box, towards that box.
- Features are multiplied by ``feature_scale = 20 / mean L2 norm`` (measured as for the SVMs).
- Ridge regression, one per class, for the four deltas at once: minimise
  ``|X W + 1 b - Y|^2 + lambda |W|^2`` with an unregularised intercept ``b`` (X and Y centred).
  R-CNN appends a regularised bias column instead and "whitens" Y (subtract the mean, multiply by
  Cov^-1/2); with the same lambda for every output, the ridge solution is linear in Y, so the
  whitening cancels exactly when undone and only the centring matters; it is therefore omitted.
- Memory: R-CNN holds every example. Here each class keeps a uniform reservoir sample of at
  most ``max_examples_per_class`` examples (Algorithm R, seeded), so memory is bounded by
  ``K * max_examples_per_class * D * 4`` bytes whatever the dataset's size.
- Solver: with n <= D the dual form ``W = Xc^T (Xc Xc^T + lambda I)^-1 Yc`` (an n x n system),
  otherwise the primal ``(Xc^T Xc + lambda I)^-1 Xc^T Yc`` (D x D); both are the same minimiser,
  solved by Cholesky in float64.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import scipy.linalg

from sppdet.structures.boxes import as_boxes, decode_deltas, encode_deltas, iou_matrix
from sppdet.config import BboxRegConfig
from sppdet.errors import ConfigError, ModelError
from sppdet.models.model_file import read_model_file, write_model_file
from sppdet.parallel import Progress, no_progress
from sppdet.structures.image_windows import ImageWindows, estimate_feature_scale


def select_examples(windows: ImageWindows, min_overlap: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Regression examples of one image: ``(rows int64 [n], labels int64 [n] in 1..K,
    targets float32 [n, 4])`` for windows whose best ground-truth IoU is > ``min_overlap``."""
    if not len(windows.gt_boxes) or not len(windows.boxes):
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 4), np.float32)
    iou = iou_matrix(windows.boxes, windows.gt_boxes)
    best = iou.argmax(axis=1)
    rows = np.flatnonzero(iou[np.arange(len(best)), best] > np.float32(min_overlap))
    targets = encode_deltas(windows.boxes[rows], windows.gt_boxes[best[rows]])
    return rows, windows.gt_classes[best[rows]].astype(np.int64), targets


class _Reservoir:
    """A uniform sample of at most ``capacity`` (feature, target) pairs from a stream."""

    def __init__(self, capacity: int, rng: np.random.Generator):
        self.capacity, self.rng, self.seen = capacity, rng, 0
        self.blocks: list[tuple[np.ndarray, np.ndarray]] = []

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        take = min(len(x), self.capacity - self.seen) if self.seen < self.capacity else 0
        if take:
            self.blocks.append((x[:take].astype(np.float32), y[:take].astype(np.float32)))
            self.seen += take
            x, y = x[take:], y[take:]
        if not len(x):
            return
        sample_x, sample_y = self.arrays()
        # Algorithm R: the item with stream index t replaces slot randint(0, t) if that is a slot;
        # when two items hit one slot the later wins, as in the sequential algorithm.
        slots = self.rng.integers(0, self.seen + np.arange(len(x)) + 1)
        items = np.flatnonzero(slots < self.capacity)
        slots = slots[items]
        _, last = np.unique(slots[::-1], return_index=True)
        chosen = len(slots) - 1 - last
        sample_x[slots[chosen]] = x[items[chosen]]
        sample_y[slots[chosen]] = y[items[chosen]]
        self.blocks = [(sample_x, sample_y)]
        self.seen += len(x)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The kept features ``[n, D]`` and targets ``[n, 4]`` (n <= capacity)."""
        if len(self.blocks) != 1:
            self.blocks = [(np.concatenate([b[0] for b in self.blocks]),
                            np.concatenate([b[1] for b in self.blocks]))]
        return self.blocks[0]


def fit_ridge(x, y, ridge_lambda: float) -> tuple[np.ndarray, np.ndarray]:
    """Ridge with an unregularised intercept: ``(W float64 [D, 4], b float64 [4])`` minimising
    ``|x W + b - y|^2 + lambda |W|^2`` for ``x`` ``[n, D]``, ``y`` ``[n, 4]``."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    x_mean, y_mean = x.mean(axis=0), y.mean(axis=0)
    xc, yc = x - x_mean, y - y_mean
    n, dim = xc.shape
    if n <= dim:
        gram = xc @ xc.T + ridge_lambda * np.eye(n)
        weights = xc.T @ scipy.linalg.solve(gram, yc, assume_a="pos")
    else:
        gram = xc.T @ xc + ridge_lambda * np.eye(dim)
        weights = scipy.linalg.solve(gram, xc.T @ yc, assume_a="pos")
    return weights, y_mean - x_mean @ weights


@dataclass(frozen=True, eq=False)
class BboxRegressor:
    """Per-class linear maps from scaled features to deltas: ``weights`` float32 ``[K, D, 4]``,
    ``biases`` float32 ``[K, 4]``; features are multiplied by ``feature_scale`` first."""

    weights: np.ndarray
    biases: np.ndarray
    feature_scale: float
    class_names: tuple[str, ...]
    metadata: dict

    def deltas(self, features, labels) -> np.ndarray:
        """Predicted deltas float32 ``[R, 4]`` for features ``[R, D]`` and labels int ``[R]``
        (or one int for every row) in 0..K; label 0 (background) gets zero deltas."""
        x = np.asarray(features, dtype=np.float32) * np.float32(self.feature_scale)
        labels = np.broadcast_to(np.asarray(labels, dtype=np.int64), (len(x),))
        out = np.zeros((len(x), 4), np.float32)
        for label in np.unique(labels[labels > 0]):
            rows = labels == label
            out[rows] = x[rows] @ self.weights[label - 1] + self.biases[label - 1]
        return out

    def deltas_all_classes(self, features) -> np.ndarray:
        """Deltas float32 ``[R, K, 4]`` of every class for features ``[R, D]`` (one matrix product)."""
        x = np.asarray(features, dtype=np.float32) * np.float32(self.feature_scale)
        k, d, _ = self.weights.shape
        stacked = self.weights.transpose(1, 0, 2).reshape(d, k * 4)
        return (x @ stacked).reshape(len(x), k, 4) + self.biases[None]

    def predict(self, features, boxes, labels) -> np.ndarray:
        """Refined boxes float32 ``[R, 4]`` for ``boxes`` ``[R, 4]`` scored as ``labels``; not
        clipped (use ``sppdet.structures.boxes.clip``)."""
        return decode_deltas(as_boxes(boxes), self.deltas(features, labels))

    def save(self, path) -> None:
        """Write the regressors to ``path`` (``.npz``, atomically, no pickle)."""
        write_model_file(path, "bbox_reg", {"weights": self.weights, "biases": self.biases},
                         {**self.metadata, "feature_scale": self.feature_scale,
                          "class_names": list(self.class_names),
                          "feature_dim": int(self.weights.shape[1])})

    @classmethod
    def load(cls, path, feature_hash: str | None = None, feature_dim: int | None = None) -> "BboxRegressor":
        """Read regressors saved by :meth:`save`; ``ModelError`` if trained on other features."""
        arrays, meta = read_model_file(path, "bbox_reg", "sppdet train-bbox", feature_hash, feature_dim)
        return cls(arrays["weights"], arrays["biases"], float(meta["feature_scale"]),
                   tuple(meta["class_names"]), meta)


@dataclass(frozen=True)
class BboxClassReport:
    """One class's training summary; errors are RMS over the four deltas on the used examples."""

    name: str
    examples: int  # seen in the stream
    used: int  # kept by the reservoir and trained on
    rms_before: float  # of the targets themselves (the error of not regressing)
    rms_after: float  # of the training residuals


def train_bbox_regressors(images: Iterable[ImageWindows], class_names: Sequence[str],
                          config: BboxRegConfig = BboxRegConfig(), *,
                          feature_scale: float | None = None, feature_hash: str = "",
                          progress: Progress | None = None) -> tuple[BboxRegressor, list[BboxClassReport]]:
    """Train K = ``len(class_names)`` box regressors from one pass over ``images`` (pool5 windows).

    ``feature_scale=None`` measures it on the first image; ``feature_hash`` identifies the
    features (checked by :meth:`BboxRegressor.load`); ``progress`` is called once per image.
    """
    if config.max_examples_per_class < 1:
        raise ConfigError(f"max_examples_per_class={config.max_examples_per_class}: need >= 1")
    progress = progress or no_progress
    rng = np.random.default_rng(config.seed)
    reservoirs = [_Reservoir(config.max_examples_per_class, rng) for _ in class_names]
    dim = None
    for windows in images:
        dim = windows.features.shape[1]
        if feature_scale is None and len(windows.features):
            feature_scale = estimate_feature_scale([windows.features], config.target_norm)
        rows, labels, targets = select_examples(windows, config.min_overlap)
        for label in np.unique(labels):
            mine = labels == label
            reservoirs[label - 1].add(windows.features[rows[mine]], targets[mine])
        progress(1, examples=sum(r.seen for r in reservoirs))
    if dim is None or feature_scale is None:
        raise ModelError("no windows to train box regressors on; check the split and its proposals")
    weights = np.zeros((len(class_names), dim, 4), np.float32)
    biases = np.zeros((len(class_names), 4), np.float32)
    reports = []
    for k, reservoir in enumerate(reservoirs):
        rms_before = rms_after = 0.0
        if reservoir.seen:
            x, y = reservoir.arrays()
            x = x * np.float32(feature_scale)
            w, b = fit_ridge(x, y, config.ridge_lambda)
            weights[k], biases[k] = w, b
            rms_before = float(np.sqrt(np.mean(y.astype(np.float64) ** 2)))
            rms_after = float(np.sqrt(np.mean((x @ w + b - y) ** 2)))
        used = min(reservoir.seen, reservoir.capacity)
        reports.append(BboxClassReport(class_names[k], reservoir.seen, used, rms_before, rms_after))
    metadata = {"config": dataclasses.asdict(config), "feature_hash": feature_hash,
                "reports": [dataclasses.asdict(r) for r in reports]}
    return BboxRegressor(weights, biases, float(feature_scale), tuple(class_names), metadata), reports
