"""Training a conv trunk from scratch as an SPP classifier of warped windows, on the user's data.

Shape shorthand: B crops, S the crop side (pixels), C conv5 channels, D = C * sum(n^2) pooled
length, K classes (label 0 is background), G ground-truth boxes, N proposals. Boxes follow
``sppdet.structures.boxes``. The stage around it (folders, skipping, records) is ``sppdet.stages.pretrain``.

Why: the paper starts from ZF-5 pre-trained on ImageNet; offline there are no such weights, and
random conv5 features make poor SVM features. So the trunk learns from the training split the way
the paper's trunk learned ImageNet: crops -> trunk -> conv5 map -> SPP pooling of the whole map
(``sppdet.models.crops.pool_maps``) -> fc6 -> fc7 -> K + 1 logits, cross-entropy, mini-batches of crops,
multi-size training (paper section 2.3: 224 and 180, switching every epoch; here ``sizes``).

Crops of one image (resampled every epoch, seeded):
    * objects: every non-difficult ground-truth box of a known class plus up to
      ``positives_per_object`` proposals with IoU >= ``fg_iou`` (0.5) to it, labelled with its class;
    * background: up to ``backgrounds_per_image`` proposals whose IoU with every object (difficult
      ones included) is < ``bg_iou`` (0.3, R-CNN's SVM negatives).
With ``windows = "random"`` the candidates are random boxes, jittered ground truth and
``parts_per_object`` boxes inside each object (``sppdet.training.random_windows``) instead of proposals,
for a dataset that has none.
Each window is warped with R-CNN's context (``sppdet.models.crops.warp_crops``; 16 px at 224, scaled with
the crop side). The crops of ``images_per_group`` images are shuffled together into batches of
``batch_size``; leftovers carry into the next group. Images stream from disk; memory holds one group.

Choices beyond the paper, each chosen on the synth demo data (held-out object-crop accuracy and
the test mAP of pool5 SVMs on whole-image features; the measurements are in docs/decisions.md):
    * Batch normalisation after every conv during training, folded into the conv weights when the
      trunk is saved (:meth:`CropClassifier.trunk_state`), so ``extract`` runs the plain trunk.
      From scratch it trains several times faster.
    * Crops rather than whole images (the previous trainer, one image of 128 windows per step):
      the same epochs give better features because each SGD step sees objects from many images.
      Whole-image statistics differ from the crops', which is why the fc head is fine-tuned on
      whole-image features afterwards (``finetune``).
    * ``augment`` adds "rot90" (random quarter turns) and "channels" (random colour-channel
      permutation) to the default "flip": right only for classes that keep their identity under
      them, as the demo's shapes (any rotation, colour independent of class); not for VOC.
    * Inputs scaled by 1 / 64 during training (zf5's raw pixels), folded into conv1 when saved.
    * With batch norm, zf5's LRN layers are left out (see :class:`CropClassifier`: on unit-scale
      activations they change conv5 by ~1e-4), in training and in every later use of the trunk.
    * SGD (momentum 0.9, weight decay 5e-4), linear warm-up over at most 100 steps, cosine decay.
    * Mini-batches of 16 crops at lr 0.0125, not the paper's 128: a few hundred training images
      give ~1,500 steps of 128 in 16 epochs, and the trunk is step-limited; 16 scored best on the
      demo among 8 to 128, at more time per epoch.

Reproducibility: image order from ``default_rng([seed, epoch])``, crop sampling and augmentation
from ``default_rng([seed, epoch, group])``, init and dropout from ``torch.manual_seed(seed)``
inside ``fork_rng``: the same settings, device and torch thread count give identical weights,
also when the run was killed and resumed from its per-epoch checkpoint (:func:`train_classifier`).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, replace
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from sppdet.models.object_copies import AUGMENTATIONS
from sppdet.models.backbones import Backbone, build_backbone, without_lrn
from sppdet.structures.boxes import iou_matrix
from sppdet.config import WINDOW_SOURCES, PretrainConfig
from sppdet.data.images import load_bgr
from sppdet.data.voc import VocDataset
from sppdet.errors import ConfigError
from sppdet.models.head import FcHead, TrainStats, check_finite_loss, epoch_state, restore_epoch_state
from sppdet.parallel import Progress, no_progress
from sppdet.models.crops import CROP_SIZE, pool_maps, warp_crops
from sppdet.ops.spp import LEVELS, pooled_dim

MAX_WARMUP_STEPS = 100
ProposalSource = Callable[[str], np.ndarray]  # image id -> proposals float32 [N, 4]


def with_batch_norm(trunk: nn.Sequential) -> nn.Sequential:
    """``trunk`` with every ``Conv2d`` child replaced by ``Sequential(conv, BatchNorm2d)`` (in place)."""
    for name, module in list(trunk.named_children()):
        if isinstance(module, nn.Conv2d):
            setattr(trunk, name, nn.Sequential(module, nn.BatchNorm2d(module.out_channels)))
    return trunk


class CropClassifier(nn.Module):
    """trunk -> conv5 map -> SPP of the whole map -> ``FcHead``: K + 1 logits per crop.

    ``input_scale`` multiplies the preprocessed crops before the trunk (zf5: pixels / 64, about
    unit variance, what Kaiming init assumes). With ``batch_norm`` each conv of the trunk is
    followed by a batch-norm layer while training. :meth:`trunk_state` folds both away, so the
    saved trunk is the plain backbone mapping the plain preprocessed image to the same conv5.

    ``skip_lrn`` trains without zf5's LRN layers: ``x / (1 + 5e-5 mean(x^2)) ** 0.75`` hardly
    changes the unit-scale activations that batch norm and the input scale give (and folding
    keeps), while it and its gradient cost ~15% of a training step on a CPU. The trained trunk is
    then used without them too (the ``pretrain`` record says ``lrn: false``; ``extract`` builds it
    with ``build_backbone(..., lrn=False)``): the network that was trained, and in inference the
    LRN layers took about half of zf5's CPU time (docs/decisions.md).
    """

    def __init__(self, backbone: Backbone, head: FcHead, levels: Sequence[int] = LEVELS,
                 input_scale: float = 1.0, batch_norm: bool = True, skip_lrn: bool = False):
        super().__init__()
        self.trunk = with_batch_norm(backbone.trunk) if batch_norm else backbone.trunk
        if skip_lrn:
            without_lrn(self.trunk)
        self.head, self.levels, self.input_scale = head, tuple(levels), input_scale

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, K + 1]`` of preprocessed crops float32 ``[B, 3, S, S]``."""
        scaled = crops * self.input_scale if self.input_scale != 1.0 else crops
        return self.head(pool_maps(self.trunk(scaled), self.levels))

    def trunk_state(self) -> dict[str, torch.Tensor]:
        """The plain trunk's state dict (CPU, contiguous): each batch norm (eval statistics) folded
        into its conv, ``w' = w * g / sqrt(v + eps)``, ``b' = (b - m) * g / sqrt(v + eps) + beta``,
        and ``input_scale`` into the first conv's weights."""
        state, first = {}, True
        for name, module in self.trunk.named_children():
            conv, norm = (module[0], module[1]) if isinstance(module, nn.Sequential) else (module, None)
            if not isinstance(conv, nn.Conv2d):
                continue
            weight = conv.weight.detach().double().cpu()
            bias = conv.bias.detach().double().cpu() if conv.bias is not None else torch.zeros(len(weight))
            if first:
                weight, first = weight * self.input_scale, False
            if norm is not None:
                factor = norm.weight.detach().double().cpu() / torch.sqrt(
                    norm.running_var.double().cpu() + norm.eps)
                weight = weight * factor[:, None, None, None]
                bias = (bias - norm.running_mean.double().cpu()) * factor + norm.bias.detach().double().cpu()
            state[f"{name}.weight"] = weight.float().contiguous()
            if conv.bias is not None or norm is not None:
                state[f"{name}.bias"] = bias.float().contiguous()
        return state


@dataclass(frozen=True)
class EpochStats:
    """One epoch: the crop size used, mean crop loss and accuracy, wall time."""

    epoch: int
    size: int
    loss: float
    accuracy: float
    seconds: float


def new_classifier(config: PretrainConfig, num_classes: int) -> tuple[CropClassifier, Backbone]:
    """A freshly initialised classifier (seeded by ``config.seed``) for ``num_classes`` classes
    and its backbone: ``build_backbone(config.backbone, config.width, "none", seed)``, the training
    input scale of :class:`CropClassifier` (``Backbone.training_input_scale``) and an
    ``FcHead`` of ``config.hidden``."""
    backbone = build_backbone(config.backbone, config.width, "none", config.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        head = FcHead(pooled_dim(backbone.channels), config.hidden, num_classes, config.dropout)
        model = CropClassifier(backbone, head, input_scale=backbone.training_input_scale,
                               batch_norm=config.batch_norm, skip_lrn=config.batch_norm)
    return model, backbone


def check_config(config: PretrainConfig) -> None:
    """Raise ``ConfigError`` naming the option if a ``PretrainConfig`` field is out of range."""
    unknown = sorted(set(config.augment) - set(AUGMENTATIONS))
    problems = [
        (not config.sizes or min(config.sizes) < 32, f"--sizes {config.sizes}: need crop sides >= 32 px"),
        (config.epochs < 1, f"--epochs {config.epochs}: need at least 1"),
        (not config.lr > 0, f"--lr {config.lr}: must be > 0"),
        (config.batch_size < 2, f"--batch-size {config.batch_size}: need >= 2"),
        (min(config.positives_per_object, config.backgrounds_per_image, config.parts_per_object) < 0,
         "positives per object, backgrounds per image and parts per object must be >= 0"),
        (not 0 < config.bg_iou <= config.fg_iou, f"bg_iou {config.bg_iou}, fg_iou {config.fg_iou}: "
                                                "need 0 < bg_iou <= fg_iou"),
        (not 0 <= config.context < CROP_SIZE / 2, f"context {config.context}: need 0 <= context < 112"),
        (min(config.hidden) < 1, f"--hidden {config.hidden}: sizes must be >= 1"),
        (not 0 <= config.dropout < 1, f"dropout {config.dropout}: must be in [0, 1)"),
        (bool(unknown), f"--augment {','.join(unknown)}: choose from {', '.join(AUGMENTATIONS)}"),
        (config.windows not in WINDOW_SOURCES,
         f"--windows {config.windows}: choose from {', '.join(WINDOW_SOURCES)}"),
        (config.images_per_group < 1, f"images_per_group {config.images_per_group}: need >= 1"),
    ]
    for bad, message in problems:
        if bad:
            raise ConfigError(message)


def pretrain_windows(gt_boxes: np.ndarray, gt_labels: np.ndarray, gt_difficult: np.ndarray,
                     proposals: np.ndarray, config: PretrainConfig,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One image's training windows float32 ``[R, 4]`` and labels int64 ``[R]`` (0 background).

    ``gt_boxes`` ``[G, 4]``, ``gt_labels`` ``[G]`` in 1..K (-1: unknown class), ``gt_difficult``
    bool ``[G]``, ``proposals`` ``[N, 4]``. Sampling as in the module docstring: objects first
    (each usable box, then its extra proposals), then background.
    """
    gt_boxes = np.asarray(gt_boxes, np.float32).reshape(-1, 4)
    gt_labels = np.asarray(gt_labels, np.int64).reshape(-1)
    proposals = np.asarray(proposals, np.float32).reshape(-1, 4)
    usable = np.flatnonzero((gt_labels > 0) & ~np.asarray(gt_difficult, bool).reshape(-1))
    overlaps = iou_matrix(proposals, gt_boxes)  # [N, G]
    best_any = overlaps.max(1) if len(gt_boxes) else np.zeros(len(proposals), np.float32)
    boxes, labels = [gt_boxes[usable]], [gt_labels[usable]]
    if len(usable) and config.positives_per_object:
        near = overlaps[:, usable]
        owner = near.argmax(1)  # each proposal joins its closest usable object
        close = near[np.arange(len(proposals)), owner] >= config.fg_iou
        for column in range(len(usable)):  # a loop over objects, not windows
            candidates = np.flatnonzero(close & (owner == column))
            pick = rng.choice(candidates, min(len(candidates), config.positives_per_object), replace=False)
            boxes.append(proposals[np.sort(pick)])
            labels.append(np.full(len(pick), gt_labels[usable[column]], np.int64))
    background = np.flatnonzero(best_any < config.bg_iou)
    pick = rng.choice(background, min(len(background), config.backgrounds_per_image), replace=False)
    boxes.append(proposals[np.sort(pick)])
    labels.append(np.zeros(len(pick), np.int64))
    return np.concatenate(boxes).astype(np.float32), np.concatenate(labels)


def augment_crops(crops: torch.Tensor, augment: Sequence[str], rng: np.random.Generator) -> torch.Tensor:
    """Crops ``[B, 3, S, S]`` with each of ``augment`` applied to a random part: "flip" mirrors
    left-right (p = 1/2), "rot90" turns by 0-3 quarter turns, "channels" permutes the colour channels.
    A new tensor; each transform touches only the crops it changes (one indexed copy per flip or
    number of turns, not a stack of every turned version)."""
    out = crops.clone()
    if "flip" in augment:
        flipped = torch.from_numpy(np.flatnonzero(rng.random(len(out)) < 0.5)).to(out.device)
        out[flipped] = out[flipped].flip(3)
    if "rot90" in augment:
        turns = rng.integers(0, 4, len(out))
        for quarter in (1, 2, 3):
            turned = torch.from_numpy(np.flatnonzero(turns == quarter)).to(out.device)
            out[turned] = out[turned].rot90(quarter, (2, 3))
    if "channels" in augment:
        order = torch.from_numpy(np.argsort(rng.random((len(out), 3)), axis=1)).to(out.device)
        out = torch.gather(out, 1, order[:, :, None, None].expand_as(out))
    return out


def crop_batches(dataset: VocDataset, proposals: ProposalSource, config: PretrainConfig,
                 backbone: Backbone, epoch: int, size: int, device: torch.device,
                 progress: Progress = no_progress) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch's (crops float32 ``[B, 3, S, S]``, labels int64 ``[B]``) batches, ``B`` =
    ``batch_size`` except the last; images in seeded order, ``progress(1)`` after each image."""
    order = np.random.default_rng([config.seed, epoch]).permutation(len(dataset.image_ids))
    context = config.context * size / CROP_SIZE
    pending_crops, pending_labels = [], []
    groups = range(0, len(order), config.images_per_group)
    for group, first in enumerate(groups):
        rng = np.random.default_rng([config.seed, epoch, group])
        for index in order[first:first + config.images_per_group].tolist():
            image_id = dataset.image_ids[index]
            annotation = dataset.annotation(image_id)
            boxes, labels = pretrain_windows(annotation.boxes, annotation.labels(dataset.classes),
                                             annotation.difficult, proposals(image_id), config, rng)
            if len(boxes):
                image = backbone.preprocess(load_bgr(dataset.image_path(image_id)), device)
                pending_crops.append(warp_crops(image, boxes, size, context))
                pending_labels.append(torch.from_numpy(labels).to(device))
            progress(1)
        if not pending_crops:
            continue
        crops, labels = torch.cat(pending_crops), torch.cat(pending_labels)
        shuffled = torch.from_numpy(rng.permutation(len(labels))).to(device)
        crops, labels = augment_crops(crops[shuffled], config.augment, rng), labels[shuffled]
        last_group = group == len(groups) - 1
        full = len(labels) if last_group else len(labels) // config.batch_size * config.batch_size
        for start in range(0, full, config.batch_size):
            yield crops[start:start + config.batch_size], labels[start:start + config.batch_size]
        pending_crops, pending_labels = [crops[full:]], [labels[full:]]


def train_classifier(model: CropClassifier, backbone: Backbone, dataset: VocDataset,
                     proposals: ProposalSource, config: PretrainConfig,
                     device: torch.device | str = "cpu",
                     progress: Progress = no_progress, resume: dict | None = None,
                     save_epoch: Callable[[dict], None] | None = None) -> list[EpochStats]:
    """Train ``model`` (trunk and head together) on crops of ``dataset``; returns per-epoch stats.

    ``proposals(image_id)`` gives float32 ``[N, 4]`` boxes. ``progress(1, loss=..., acc=...)``
    after each image (running means of the epoch). The model is left in eval mode on ``device``.
    A NaN or infinite loss stops training with ``TrainingError`` (nothing is saved).

    Resumable: ``save_epoch(state)`` gets a ``sppdet.models.head.epoch_state`` after each epoch
    (model with batch-norm statistics, momentum, the schedule's step, history, dropout RNG; crop
    sampling is seeded per epoch); given back as ``resume``, training continues after that epoch
    and ends with the weights of an uninterrupted run on the same device and thread count.
    """
    device = torch.device(device)
    model.to(device, memory_format=torch.channels_last).train()
    # fused: one kernel for the whole update, 0.34 ms a step instead of 1.03 (foreach) on 2 cores
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay, fused=True)
    steps = config.epochs * _steps_per_epoch(dataset, proposals, config)
    warmup = max(1, min(MAX_WARMUP_STEPS, steps // config.epochs))
    history, step, first = [], 0, 0
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(config.seed)  # dropout
        if resume is not None:
            first, step, done = restore_epoch_state(resume, {"model": model}, optimizer, cuda)
            history = [EpochStats(**entry) for entry in done]
        for epoch in range(first, config.epochs):
            size = int(config.sizes[epoch % len(config.sizes)])
            stats, start = TrainStats(), time.perf_counter()

            def report(advance, stats=stats):
                progress(advance, loss=stats.mean_loss, acc=stats.accuracy)

            for crops, labels in crop_batches(dataset, proposals, config, backbone, epoch, size,
                                              device, report):
                for group in optimizer.param_groups:
                    group["lr"] = _learning_rate(config.lr, step, steps, warmup)
                logits = model(crops.contiguous(memory_format=torch.channels_last))
                loss = nn.functional.cross_entropy(logits, labels)
                value = loss.item()
                check_finite_loss(value, "sppdet pretrain", epoch, config.lr)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                stats.add(value, logits.detach(), labels)
                step += 1
            history.append(EpochStats(epoch, size, stats.mean_loss, stats.accuracy,
                                      time.perf_counter() - start))
            if save_epoch is not None:
                save_epoch(epoch_state(epoch + 1, {"model": model}, optimizer, history, cuda, step))
    model.eval()
    return history


def seconds_per_epoch(model: CropClassifier, backbone: Backbone, dataset: VocDataset, proposals: ProposalSource,
                      config: PretrainConfig, device: torch.device | str = "cpu", groups: int = 2) -> float:
    """An estimate of one training epoch's seconds on ``device``: :func:`train_classifier`'s loop
    (crops cut, forward, backward, update) timed over the batches of the first ``groups`` image
    groups, scaled to the epoch's steps. Trains a throwaway copy; ``model`` is left untouched."""
    device = torch.device(device)
    steps = _steps_per_epoch(dataset, proposals, config)
    probe_steps = max(4, math.ceil(steps * groups * config.images_per_group / max(1, len(dataset))))
    probe = copy.deepcopy(model).to(device, memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(probe.parameters(), lr=config.lr, momentum=config.momentum, fused=True)
    start, done = time.perf_counter(), 0
    for crops, labels in crop_batches(dataset, proposals, config, backbone, 0, int(config.sizes[0]), device):
        loss = nn.functional.cross_entropy(probe(crops.contiguous(memory_format=torch.channels_last)), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        done += 1
        if done >= probe_steps:
            break
    return (time.perf_counter() - start) / max(1, done) * steps


def _steps_per_epoch(dataset: VocDataset, proposals: ProposalSource, config: PretrainConfig) -> int:
    """An estimate of SGD steps per epoch (for the schedule): expected crops / batch size."""
    crops = 0
    for image_id in dataset.image_ids[:50]:
        annotation = dataset.annotation(image_id)
        crops += len(pretrain_windows(annotation.boxes, annotation.labels(dataset.classes),
                                      annotation.difficult, proposals(image_id), config,
                                      np.random.default_rng(0))[1])
    per_image = crops / max(1, min(50, len(dataset.image_ids)))
    return max(1, math.ceil(per_image * len(dataset.image_ids) / config.batch_size))


def _learning_rate(peak: float, step: int, steps: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, cosine decay to 0 over all ``steps``."""
    return peak * min((step + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps)))


@dataclass(frozen=True)
class CropAccuracy:
    """Held-out crop classification: accuracy on object crops (class must match), on background
    crops, and the number of crops."""

    foreground: float
    background: float
    crops: int


def crop_accuracy(model: CropClassifier, backbone: Backbone, dataset: VocDataset,
                  proposals: ProposalSource, config: PretrainConfig, size: int,
                  device: torch.device | str = "cpu") -> CropAccuracy:
    """Classify crops of every image's non-difficult ground-truth boxes and sampled background
    proposals (no extra positives, no augmentation) at crop side ``size``, in eval mode."""
    device = torch.device(device)
    model.to(device, memory_format=torch.channels_last).eval()
    plain = replace(config, positives_per_object=0, augment=())
    right, total = np.zeros(2, np.int64), np.zeros(2, np.int64)  # [background, object]
    with torch.inference_mode():
        for crops, labels in crop_batches(dataset, proposals, plain, backbone, config.epochs, size, device):
            hit = (model(crops.contiguous(memory_format=torch.channels_last)).argmax(1) == labels).cpu().numpy()
            kind = (labels > 0).long().cpu().numpy()
            right += np.bincount(kind, weights=hit, minlength=2).astype(np.int64)
            total += np.bincount(kind, minlength=2)
    share = right / np.maximum(total, 1)
    return CropAccuracy(foreground=float(share[1]), background=float(share[0]), crops=int(total.sum()))
