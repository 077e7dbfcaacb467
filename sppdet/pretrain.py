"""Training a conv trunk from scratch as an SPP window classifier on the user's own data.

Shape shorthand: R windows of one image, C conv5 channels, D = C * sum(n^2) pooled length,
K classes (label 0 is background), G ground-truth boxes, N proposals. Boxes follow
``sppdet.boxes``. The stage around it (folders, skipping, records) is ``sppdet.pretrain_stage``.

Why: the paper starts from ZF-5 pre-trained on ImageNet; offline there are no such weights, and
random conv5 features make poor SVM features. So the trunk learns from the training split:
image -> trunk -> conv5 map -> SPP pooling of each window (projected with the backbone's stride
and offset, ``sppdet.spp.project_boxes``) -> fc6 -> fc7 -> K + 1 logits, cross-entropy, with
gradients through the pooling into every conv layer. One image and its windows per SGD step.

Windows of one image (``windows_per_image``), resampled every epoch:
    * objects: the non-difficult ground-truth boxes of known classes and, as an augmentation,
      proposals with IoU >= ``fg_iou`` (0.7) to such a box, labelled with its class; at most
      ``fg_fraction`` of the windows, ground truth first;
    * background: proposals whose IoU with every object (difficult ones included) is < ``bg_iou``
      (0.3, as the issue and R-CNN's SVM negatives), filling the rest.
Proposals in between are not used (neither clearly the object nor clearly not).

Multi-size training (paper section 2.3: 224 and 180 crops, switching every epoch): whole images at
the shorter sides ``sizes``, epoch ``e`` using ``sizes[e % len(sizes)]``. Augmentations: horizontal
flips (p = 1/2) and, with ``shift``, 0-15 random pixels cut off the left and top of the resized
image, so objects meet the stride-16 conv5 grid at every offset rather than two.

Choices beyond the paper, each measured on the synth data (held-out window accuracy):
    * Pooling for training is ``torchvision.ops.roi_pool`` per pyramid level (:func:`roi_spp_pool`):
      the same bins and values as ``spp_pool`` (tested), its gradient routed to one argmax cell per
      bin; differentiating ``spp_pool``'s sparse table took ~1 s per image, ~50x longer.
    * Inputs scaled by 1 / 64 during training, folded into conv1 when saved (``SppClassifier``).
    * SGD (momentum 0.9, weight decay 5e-4) with a linear warm-up over the first epoch's steps
      (at most 100), then a cosine decay to 0: without normalisation layers a from-scratch trunk
      diverges at full step size on its first images, and at lr >= 0.03 altogether.

Reproducibility: every random choice is seeded by ``seed`` (image order from
``default_rng([seed, epoch])``, windows, flips and shifts from ``default_rng([seed, epoch, i])``,
init and dropout from ``torch.manual_seed(seed)`` inside ``fork_rng``), so the same settings on the
same device and torch thread count give bitwise identical weights. Images stream from disk one at a
time; nothing per image is kept.
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
    """

    def __init__(self, backbone: Backbone, head: FcHead, levels: Sequence[int] = LEVELS,
                 input_scale: float = 1.0):
        super().__init__()
        self.trunk, self.head, self.levels = backbone.trunk, head, tuple(levels)
        self.stride, self.offset, self.input_scale = backbone.stride, backbone.offset, input_scale

    def conv5(self, image: torch.Tensor) -> torch.Tensor:
        """The conv5 map ``[1, C, H', W']`` of a preprocessed image float32 ``[3, H, W]``."""
        return self.trunk(image[None] * self.input_scale if self.input_scale != 1.0 else image[None])

    def forward(self, image: torch.Tensor, boxes: np.ndarray) -> torch.Tensor:
        """Logits ``[R, K + 1]`` of windows ``boxes`` float ``[R, 4]`` (pixels of ``image``, a
        preprocessed float32 ``[3, H, W]``)."""
        fmap = self.conv5(image)
        cells = project_boxes(boxes, self.stride, self.offset, fmap.shape[2:]).to(fmap.device)
        return self.head(roi_spp_pool(fmap, cells, self.levels))

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
    input scale of :class:`SppClassifier` (1 / PIXEL_STD for raw-pixel trunks such as zf5) and an
    ``FcHead`` of ``config.hidden``."""
    backbone = build_backbone(config.backbone, config.width, "none", config.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        head = FcHead(pooled_dim(backbone.channels), config.hidden, num_classes, config.dropout)
    raw_pixels = backbone.preprocessing.std == (1.0, 1.0, 1.0)  # zf5, not ImageNet-normalised
    model = SppClassifier(backbone, head, input_scale=1.0 / PIXEL_STD if raw_pixels else 1.0)
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


def _image_example(dataset: VocDataset, image_id: str, proposals: ProposalSource,
                   config: PretrainConfig, rng: np.random.Generator, size: int, flip: bool,
                   shift: bool, backbone: Backbone, device: torch.device):
    """The preprocessed image ``[3, H_s, W_s]`` at shorter side ``size``, its sampled windows
    ``[R, 4]`` in resized pixels and their labels ``[R]``; flipped left-right (image and boxes)
    when ``flip``; when ``shift``, 0 to stride - 1 random pixels cut off its left and top."""
    annotation = dataset.annotation(image_id)
    boxes, labels = pretrain_windows(annotation.boxes, annotation.labels(dataset.classes),
                                     annotation.difficult, proposals(image_id), config, rng)
    bgr = load_bgr(dataset.image_path(image_id))
    if flip:
        bgr = np.ascontiguousarray(bgr[:, ::-1])
        boxes = hflip_boxes(boxes, bgr.shape[1])
    resized, factor = resize_to_scale(bgr, size)
    boxes = boxes * factor
    if shift:
        dx, dy = (int(v) for v in rng.integers(0, backbone.stride, 2))
        resized = resized[dy:, dx:]
        boxes = boxes - np.array([dx, dy, dx, dy], np.float32)
    return backbone.preprocess(resized, device), boxes, labels


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
        image, boxes, labels = _image_example(dataset, dataset.image_ids[index], proposals,
                                              config, rng, size, flip, config.shift, backbone,
                                              device)
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(config, first_step + offset, steps, warmup)
        if len(labels):
            target = torch.from_numpy(labels).to(device)
            logits = model(image, boxes)
            loss = nn.functional.cross_entropy(logits, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
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
            image, boxes, labels = _image_example(dataset, image_id, proposals, plain, rng, size,
                                                  False, False, backbone, device)
            if len(labels):
                hit = (model(image, boxes).argmax(1).cpu().numpy() == labels)
                kind = (labels > 0).astype(np.int64)
                right += np.bincount(kind, weights=hit, minlength=2).astype(np.int64)
                total += np.bincount(kind, minlength=2)
            progress(1)
    share = right / np.maximum(total, 1)
    return WindowAccuracy(foreground=float(share[1]), background=float(share[0]),
                          overall=float(right.sum() / max(total.sum(), 1)), windows=int(total.sum()))
