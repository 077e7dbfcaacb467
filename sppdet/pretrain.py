"""The ``pretrain`` stage: train the conv trunk as an SPP window classifier on the user's data.

Shape shorthand: R windows of one image, C conv5 channels, D = C * sum(n^2) pooled length,
K classes (label 0 is background), G ground-truth boxes, N proposals. Boxes follow
``sppdet.boxes``.

Why: the paper starts from ZF-5 pre-trained on ImageNet; offline there are no such weights, and
random conv5 features make poor SVM features. So the trunk learns from the training split itself:
image -> trunk -> conv5 map -> ``spp_pool`` of each window (projected with the backbone's stride and
offset) -> fc6 -> fc7 (ReLU, dropout) -> K + 1 logits, cross-entropy, gradients through the pooling
into every conv layer. The trunk is then saved for ``extract`` and the head for ``finetune``.

Windows of one image (one SGD step, ``windows_per_image`` windows), resampled every epoch:
    * positives: the non-difficult ground-truth boxes of known classes and, as an augmentation,
      proposals with IoU >= ``fg_iou`` (0.7) to such a box, labelled with its class; at most
      ``fg_fraction`` (25%) of the windows, ground truth first;
    * background: proposals whose IoU with every object (difficult ones included) is < ``bg_iou``
      (0.3, as the issue and R-CNN's SVM negatives), filling the rest.
Proposals in between are not used (they are neither clearly the object nor clearly not).

Multi-size training (paper section 2.3 trains on 224 and 180 crops, switching every epoch): here
whole images at the shorter sides ``sizes`` (e.g. the detection scale s and ~0.8 s), epoch ``e``
using ``sizes[e % len(sizes)]``. Each image is flipped horizontally with probability 1/2.

Optimisation: SGD, momentum 0.9, weight decay 5e-4; the learning rate rises linearly over the first
epoch's steps (capped at 100) and then follows a cosine to 0 (a from-scratch trunk without
batch normalisation diverges at a full step size on its first images).

Reproducibility: every random choice is seeded by ``seed`` (image order from
``default_rng([seed, epoch])``, windows and flips from ``default_rng([seed, epoch, i])``, init and
dropout from ``torch.manual_seed(seed)`` inside ``fork_rng``), so the same settings on the same
device and thread count give bitwise identical weights. Images stream from disk one at a time.

Output: folder ``pretrain-<hash>`` (hash of the ``PretrainConfig``, the proposals folder, the dataset
root and split) holding ``trunk.pt`` (the trunk's own state dict, as ``load_trunk_weights`` reads),
``head.pt`` (``sppdet.head.save_head``) and ``pretrain.json`` (written last: training history).
``config.json["stages"]["pretrain"]`` records ``weights``/``head`` (relative to the work directory),
``backbone`` and ``width``, which ``sppdet.extract_stage.resolve_weights`` reads.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torchvision.ops import roi_pool

from sppdet.backbones import Backbone, build_backbone
from sppdet.boxes import iou_matrix
from sppdet.config import PretrainConfig
from sppdet.data.images import load_bgr
from sppdet.data.voc import VocDataset
from sppdet.errors import ConfigError
from sppdet.features import resize_to_scale
from sppdet.head import FcHead, TrainStats
from sppdet.parallel import Progress, no_progress
from sppdet.spp import LEVELS, pooled_dim, project_boxes

MAX_WARMUP_STEPS = 100
#: zf5 trains on (BGR - 128) / PIXEL_STD, about unit variance (see SppClassifier).
PIXEL_STD = 64.0

ProposalSource = Callable[[str], np.ndarray]  # image id -> proposals float32 [N, 4]


class SppClassifier(nn.Module):
    """trunk -> conv5 map -> SPP pooling per window -> ``FcHead``: K + 1 logits per window.

    ``input_scale`` multiplies the preprocessed image before the trunk (zf5: pixels / 64, about
    unit variance, what Kaiming init assumes); :meth:`trunk_state` folds it into conv1's weights,
    so the saved trunk takes the plain preprocessing. Dividing conv1's initial weights instead
    leaves conv1's gradients 64x larger relative to its weights, and training diverges.
    ``dense`` adds a 1x1 conv classifier of every conv5 cell (see :func:`cell_labels`).
    """

    def __init__(self, backbone: Backbone, head: FcHead, levels: Sequence[int] = LEVELS,
                 input_scale: float = 1.0, dense: bool = False):
        super().__init__()
        self.trunk, self.head, self.levels = backbone.trunk, head, tuple(levels)
        self.stride, self.offset, self.input_scale = backbone.stride, backbone.offset, input_scale
        self.dense = nn.Conv2d(backbone.channels, head.num_classes + 1, 1) if dense else None

    def conv5(self, image: torch.Tensor) -> torch.Tensor:
        """The conv5 map ``[1, C, H', W']`` of a preprocessed image float32 ``[3, H, W]``."""
        return self.trunk(image[None] * self.input_scale if self.input_scale != 1.0 else image[None])

    def pool(self, fmap: torch.Tensor, boxes: np.ndarray) -> torch.Tensor:
        """Logits ``[R, K + 1]`` of windows ``boxes`` float ``[R, 4]`` (pixels of the image
        ``fmap`` ``[1, C, H', W']`` was computed from)."""
        cells = project_boxes(boxes, self.stride, self.offset, fmap.shape[2:]).to(fmap.device)
        return self.head(roi_spp_pool(fmap, cells, self.levels))

    def forward(self, image: torch.Tensor, boxes: np.ndarray) -> torch.Tensor:
        """Logits ``[R, K + 1]`` of windows ``boxes`` float ``[R, 4]`` (pixels of ``image``, a
        preprocessed float32 ``[3, H, W]``)."""
        return self.pool(self.conv5(image), boxes)

    def trunk_state(self) -> dict[str, torch.Tensor]:
        """The trunk's state dict (CPU, contiguous) with ``input_scale`` folded into the first
        conv's weights: the trunk alone maps the plain preprocessed image to :meth:`conv5`."""
        state = {key: value.detach().cpu().clone().contiguous()
                 for key, value in self.trunk.state_dict().items()}
        first = next(name for name, module in self.trunk.named_children() if isinstance(module, nn.Conv2d))
        state[f"{first}.weight"] *= self.input_scale
        return state


def roi_spp_pool(fmap: torch.Tensor, cells: torch.Tensor, levels: Sequence[int] = LEVELS) -> torch.Tensor:
    """``sppdet.spp.spp_pool`` of cells int64 ``[R, 4]`` (inclusive x1, y1, x2, y2) on one map
    float ``[1, C, H, W]``, via ``torchvision.ops.roi_pool`` per level: ``[R, D]``.

    roi_pool with ``spatial_scale=1`` on inclusive cell boxes uses the paper's bins (``floor(i*w/n)``
    .. ``ceil((i+1)*w/n) - 1``, computed in float32, exact for map sizes in use: tests compare it
    with ``spp_pool``), and its backward routes each bin's gradient to one argmax cell, ~50x faster
    than differentiating ``spp_pool``'s sparse table, which dominated a training step.
    """
    rois = torch.cat([torch.zeros_like(cells[:, :1]), cells], 1).to(fmap.dtype)
    return torch.cat([roi_pool(fmap, rois, n, 1.0).flatten(1) for n in levels], 1)


@dataclass(frozen=True)
class EpochStats:
    """One epoch: the image size used, mean window loss and accuracy, wall time."""

    epoch: int
    size: int
    loss: float
    accuracy: float
    seconds: float


def new_classifier(config: PretrainConfig, num_classes: int) -> tuple[SppClassifier, Backbone]:
    """A freshly initialised classifier (seeded by ``config.seed``) for ``num_classes`` classes
    and its backbone: ``build_backbone(config.backbone, config.width, "none", seed)``, the training
    input scale of :class:`SppClassifier` (1 / PIXEL_STD for raw-pixel trunks such as zf5), its dense
    cell classifier when ``config.dense_weight > 0``, and an ``FcHead`` of ``config.hidden``."""
    backbone = build_backbone(config.backbone, config.width, "none", config.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        head = FcHead(pooled_dim(backbone.channels), config.hidden, num_classes, config.dropout)
    raw_pixels = backbone.preprocessing.std == (1.0, 1.0, 1.0)  # zf5, not ImageNet-normalised
    model = SppClassifier(backbone, head, input_scale=1.0 / PIXEL_STD if raw_pixels else 1.0,
                          dense=config.dense_weight > 0)
    return model, backbone


def check_config(config: PretrainConfig) -> None:
    """Raise ``ConfigError`` naming the option if a ``PretrainConfig`` field is out of range."""
    problems = [
        (not config.sizes or min(config.sizes) < 32, f"--sizes {config.sizes}: need sizes >= 32 px"),
        (config.epochs < 1, f"--epochs {config.epochs}: need at least 1"),
        (not config.lr > 0, f"--lr {config.lr}: must be > 0"),
        (config.windows_per_image < 2, f"--windows-per-image {config.windows_per_image}: need >= 2"),
        (not 0 < config.fg_fraction < 1, f"fg_fraction {config.fg_fraction}: must be in (0, 1)"),
        (not 0 < config.bg_iou <= config.fg_iou, f"bg_iou {config.bg_iou}, fg_iou {config.fg_iou}: "
                                                "need 0 < bg_iou <= fg_iou"),
        (min(config.hidden) < 1, f"--hidden {config.hidden}: sizes must be >= 1"),
        (not 0 <= config.dropout < 1, f"dropout {config.dropout}: must be in [0, 1)"),
    ]
    for bad, message in problems:
        if bad:
            raise ConfigError(message)


def pretrain_windows(gt_boxes: np.ndarray, gt_labels: np.ndarray, gt_difficult: np.ndarray,
                     proposals: np.ndarray, config: PretrainConfig,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One image's training windows float32 ``[R, 4]`` and labels int64 ``[R]`` (0 background).

    ``gt_boxes`` ``[G, 4]``, ``gt_labels`` ``[G]`` in 1..K (-1: unknown class), ``gt_difficult``
    bool ``[G]``, ``proposals`` ``[N, 4]``. Sampling as in the module docstring; ``R`` is at most
    ``windows_per_image`` (less when the image lacks candidates).
    """
    gt_boxes = np.asarray(gt_boxes, np.float32).reshape(-1, 4)
    proposals = np.asarray(proposals, np.float32).reshape(-1, 4)
    positive = (np.asarray(gt_labels) > 0) & ~np.asarray(gt_difficult, bool)
    overlaps = iou_matrix(proposals, gt_boxes)  # [N, G]
    best_any = overlaps.max(1) if len(gt_boxes) else np.zeros(len(proposals), np.float32)
    background = np.flatnonzero(best_any < config.bg_iou)
    extra, extra_labels = np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
    if positive.any():
        pos_overlaps = overlaps[:, positive]
        close = np.flatnonzero(pos_overlaps.max(1, initial=0.0) >= config.fg_iou)
        extra = proposals[close]
        extra_labels = np.asarray(gt_labels, np.int64)[positive][pos_overlaps[close].argmax(1)]

    quota = int(round(config.windows_per_image * config.fg_fraction))
    n_gt = int(min(positive.sum(), quota))
    gt_pick = rng.choice(np.flatnonzero(positive), n_gt, replace=False)
    extra_pick = rng.choice(len(extra), min(len(extra), quota - n_gt), replace=False)
    n_bg = min(len(background), config.windows_per_image - n_gt - len(extra_pick))
    bg_pick = rng.choice(background, n_bg, replace=False)
    boxes = np.concatenate([gt_boxes[gt_pick], extra[extra_pick], proposals[bg_pick]])
    labels = np.concatenate([np.asarray(gt_labels, np.int64)[gt_pick], extra_labels[extra_pick],
                             np.zeros(n_bg, np.int64)])
    return boxes.astype(np.float32), labels


def hflip_boxes(boxes: np.ndarray, width: float) -> np.ndarray:
    """Boxes float32 ``[R, 4]`` (x1, y1, x2, y2) of an image ``width`` pixels wide, mirrored left to
    right: ``(width - x2, y1, width - x1, y2)``."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    return np.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], axis=1)


@dataclass
class _Example:
    """One training image: preprocessed ``image`` ``[3, H_s, W_s]``; ``boxes`` ``[R, 4]`` (resized
    pixels) and ``labels`` ``[R]`` of its windows; its ground truth ``gt_boxes`` ``[G, 4]`` (resized
    pixels) with ``gt_labels`` ``[G]`` (-1 for difficult or unknown-class boxes)."""

    image: torch.Tensor
    boxes: np.ndarray
    labels: np.ndarray
    gt_boxes: np.ndarray
    gt_labels: np.ndarray


def _image_example(dataset: VocDataset, image_id: str, proposals: ProposalSource,
                   config: PretrainConfig, rng: np.random.Generator, size: int, flip: bool,
                   backbone: Backbone, device: torch.device) -> _Example:
    """Image ``image_id`` at shorter side ``size`` with sampled windows, flipped left-right
    (image and boxes) when ``flip``."""
    annotation = dataset.annotation(image_id)
    gt_labels = annotation.labels(dataset.classes)
    boxes, labels = pretrain_windows(annotation.boxes, gt_labels, annotation.difficult,
                                     proposals(image_id), config, rng)
    gt_boxes = annotation.boxes
    bgr = load_bgr(dataset.image_path(image_id))
    if flip:
        bgr = np.ascontiguousarray(bgr[:, ::-1])
        boxes, gt_boxes = hflip_boxes(boxes, bgr.shape[1]), hflip_boxes(gt_boxes, bgr.shape[1])
    resized, factor = resize_to_scale(bgr, size)
    return _Example(backbone.preprocess(resized, device), boxes * factor, labels, gt_boxes * factor,
                    np.where(annotation.difficult, -1, gt_labels))


def cell_labels(gt_boxes: np.ndarray, gt_labels: np.ndarray, map_hw: tuple[int, int],
                stride: float, offset: float) -> torch.Tensor:
    """Per conv5 cell, int64 ``[H', W']``: the label of the smallest ground-truth box covering it
    (``gt_labels`` ``[G]``: 1..K, or -1 = ignore, e.g. difficult), else 0 (background).

    A box covers the cells ``project_boxes`` gives it (centres inside the box; a box narrower
    than a cell gets the one cell nearest its centre), in pixels of the resized image.
    """
    height, width = int(map_hw[0]), int(map_hw[1])
    if len(gt_boxes) == 0:
        return torch.zeros((height, width), dtype=torch.long)
    cells = project_boxes(gt_boxes, stride, offset, map_hw)  # [G, 4] inclusive
    rows, cols = torch.arange(height)[None, :, None], torch.arange(width)[None, None, :]
    covered = ((cols >= cells[:, 0, None, None]) & (cols <= cells[:, 2, None, None])
               & (rows >= cells[:, 1, None, None]) & (rows <= cells[:, 3, None, None]))  # [G, H', W']
    area = torch.as_tensor((gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1]),
                           dtype=torch.float64)
    smallest = torch.where(covered, area[:, None, None], torch.inf).argmin(0)
    labels = torch.as_tensor(np.asarray(gt_labels, np.int64))[smallest]
    return torch.where(covered.any(0), labels, 0)


def train_classifier(model: SppClassifier, backbone: Backbone, dataset: VocDataset,
                     proposals: ProposalSource, config: PretrainConfig,
                     device: torch.device | str = "cpu",
                     progress: Progress = no_progress) -> list[EpochStats]:
    """Train ``model`` (trunk and head together) on ``dataset``'s images; returns per-epoch stats.

    ``proposals(image_id)`` gives float32 ``[N, 4]`` boxes. ``progress(1, loss=..., acc=...)``
    after each image (running means of the epoch). The model is left in eval mode on ``device``.
    """
    device = torch.device(device)
    model.to(device, memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    steps = config.epochs * len(dataset.image_ids)
    warmup = max(1, min(MAX_WARMUP_STEPS, len(dataset.image_ids)))
    history, step = [], 0
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)  # dropout
        for epoch in range(config.epochs):
            stats, seconds = _epoch(model, backbone, dataset, proposals, config, device, optimizer,
                                    epoch, (step, steps, warmup), progress)
            step += len(dataset.image_ids)
            history.append(EpochStats(epoch, _size(config, epoch), stats.mean_loss, stats.accuracy,
                                      seconds))
    model.eval()
    return history


def _size(config: PretrainConfig, epoch: int) -> int:
    return int(config.sizes[epoch % len(config.sizes)])


def _learning_rate(config: PretrainConfig, step: int, steps: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, cosine decay to 0 over all ``steps``."""
    return config.lr * min((step + 1) / warmup, 0.5 * (1 + math.cos(math.pi * step / steps)))


def _epoch(model, backbone, dataset, proposals, config, device, optimizer, epoch, schedule,
           progress) -> tuple[TrainStats, float]:
    """One pass over the images in this epoch's seeded order, one SGD step per image."""
    first_step, steps, warmup = schedule
    size = _size(config, epoch)
    order = np.random.default_rng([config.seed, epoch]).permutation(len(dataset.image_ids))
    stats, start = TrainStats(), time.perf_counter()
    for offset, index in enumerate(order.tolist()):
        rng = np.random.default_rng([config.seed, epoch, index])
        flip = config.flip and bool(rng.random() < 0.5)
        example = _image_example(dataset, dataset.image_ids[index], proposals, config, rng, size,
                                 flip, backbone, device)
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(config, first_step + offset, steps, warmup)
        if len(example.labels):
            target = torch.from_numpy(example.labels).to(device)
            fmap = model.conv5(example.image)
            logits = model.pool(fmap, example.boxes)
            loss = nn.functional.cross_entropy(logits, target)
            total = loss
            if model.dense is not None:
                cells = cell_labels(example.gt_boxes, example.gt_labels, fmap.shape[2:],
                                    model.stride, model.offset).to(device)
                total = loss + config.dense_weight * nn.functional.cross_entropy(
                    model.dense(fmap), cells[None], ignore_index=-1)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            stats.add(loss.item(), logits.detach(), target)
        progress(1, loss=stats.mean_loss, acc=stats.accuracy)
    return stats, time.perf_counter() - start


@dataclass(frozen=True)
class WindowAccuracy:
    """Held-out window classification: accuracy on object windows (ground truth, class must
    match), on background windows, and over all ``windows``."""

    foreground: float
    background: float
    overall: float
    windows: int


def window_accuracy(model: SppClassifier, backbone: Backbone, dataset: VocDataset,
                    proposals: ProposalSource, config: PretrainConfig, size: int,
                    device: torch.device | str = "cpu", progress: Progress = no_progress) -> WindowAccuracy:
    """Classify every image's non-difficult ground-truth boxes and sampled background proposals
    (IoU < ``bg_iou`` to every object; no extra proposal positives, no flips) at shorter side
    ``size``, one image at a time, in eval mode. ``progress(1)`` after each image."""
    device = torch.device(device)
    model.to(device, memory_format=torch.channels_last).eval()
    plain = replace(config, fg_iou=math.inf)
    right, total = np.zeros(2, np.int64), np.zeros(2, np.int64)  # [background, object]
    with torch.inference_mode():
        for index, image_id in enumerate(dataset.image_ids):
            rng = np.random.default_rng([config.seed, config.epochs, index])  # not a training epoch
            example = _image_example(dataset, image_id, proposals, plain, rng, size, False,
                                     backbone, device)
            labels = example.labels
            if len(labels):
                hit = (model(example.image, example.boxes).argmax(1).cpu().numpy() == labels)
                kind = (labels > 0).astype(np.int64)
                right += np.bincount(kind, weights=hit, minlength=2).astype(np.int64)
                total += np.bincount(kind, minlength=2)
            progress(1)
    share = right / np.maximum(total, 1)
    return WindowAccuracy(foreground=float(share[1]), background=float(share[0]),
                          overall=float(right.sum() / max(total.sum(), 1)), windows=int(total.sum()))
