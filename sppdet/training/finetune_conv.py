"""End-to-end fine-tuning: conv trunk and fc head together, on whole images (``finetune --train-conv``).

Shape shorthand: R windows of one image, S extract scales, C conv5 channels,
D = C * sum(n^2) pooled length, K classes (label 0 is background). Boxes follow ``sppdet.structures.boxes``.

Beyond the paper (docs/algorithm.md section 7: conv stays frozen; Fast R-CNN fine-tunes it): gradients flow
from the fc head through the differentiable ``sppdet.ops.spp.spp_pool`` into the trunk.

Per image (order and window sampling seeded exactly as the head-only ``finetune``,
:func:`sampled_windows`): ground truth and proposals are labelled (foreground IoU >= ``fg_iou``,
background in ``[bg_iou_low, fg_iou)``), ``windows_per_image`` are sampled with a ``fg_fraction``
foreground share, and the trunk runs with autograd at each extract scale those windows need.
:func:`pooled_windows` routes every window exactly as ``sppdet.ops.spp.pool_windows`` does on the
feature cache: the scale whose scaled area is closest to target^2 (``choose_scales``, the features'
``ExtractConfig.target``), scale factors
rounded to float32 as the cache stores them, ``project_boxes`` and ``spp_pool`` on that scale's
map; the vectors are put back in window order. One SGD step per ``images_per_batch`` images
(Fast R-CNN: 2 images x 64 windows): their gradients are accumulated image by image (memory holds
one image's graph) with each loss summed and divided by the mini-batch's window count, so the
step equals one on the mean cross-entropy of all its windows.

Choices:
    * Learning rates: the head gets ``lr``, the trunk ``lr * conv_lr_mult``, default 0.1 (Fast
      R-CNN uses one rate for all layers): a trunk from ``sppdet pretrain`` has its batch norm
      folded into the weights, and the head's rate disturbs it faster than the head adapts (x0.1
      reached a lower training loss than x1 or a frozen trunk, docs/decisions.md). Both rates drop 10x
      for the last quarter of the epochs, as ``sppdet.models.head.train_head``. SGD momentum 0.9, weight
      decay 5e-4 on every parameter, dropout in the head only.
    * Raw-pixel trunks (zf5: BGR - 128, no std) train on inputs divided by 64
      (``Backbone.training_input_scale``) with conv1's weights multiplied by it
      (:class:`TrainableTrunk`), the parametrisation ``sppdet pretrain`` trained them in: the
      function is unchanged, but SGD on the plain weights would move conv1 64^2 times too fast
      relative to its size. The factor is folded back when
      the trunk is saved, so the file is a plain trunk state dict like ``pretrain``'s trunk.pt.
    * No batch norm: the saved trunk is plain, and batches of 1-2 whole images make its
      statistics useless.
    * Every conv layer is trained (Fast R-CNN freezes conv1-2 of VGG16 to save memory; these
      trunks are small).

Reproducibility: image order and sampling from ``default_rng((seed, epoch))``, dropout from
``torch.manual_seed(seed)`` inside ``fork_rng`` (the caller's RNG is untouched); a run resumed
from its per-epoch checkpoint (:func:`train_end_to_end`) ends with the same weights.
"""

from __future__ import annotations

import copy
from typing import Callable, Iterable, Iterator, NamedTuple, Sequence

import numpy as np
import torch
from torch import nn

from sppdet.models.backbones import Backbone, first_conv_name
from sppdet.config import FinetuneConfig
from sppdet.models.features import resize_to_scale
from sppdet.models.head import (FcHead, TrainStats, epoch_state, label_windows, lr_factor, restore_epoch_state,
                                sample_windows)
from sppdet.parallel import Progress, no_progress
from sppdet.ops.spp import LEVELS, TARGET, choose_scales, pooled_dim, project_boxes, scale_factors, spp_pool
from sppdet.workdir.window_source import WindowSource


class TrainingImage(NamedTuple):
    """One training image: BGR uint8 ``[H, W, 3]`` (may be None when ``R = 0``), sampled boxes
    float32 ``[R, 4]`` and their labels int64 ``[R]`` in 0..K."""

    bgr: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray


def sampled_windows(source: WindowSource, config: FinetuneConfig,
                    epoch: int) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(image id, boxes float32 ``[R, 4]``, labels int64 ``[R]``) of every image of ``source``'s
    split, in the seeded order of pass ``epoch``: its ground-truth
    boxes of known classes and proposals, labelled by ``label_windows`` and subsampled by
    ``sample_windows`` (``R`` may be 0). Shared by the head-only and end-to-end fine-tuning."""
    rng = np.random.default_rng((config.seed, epoch))
    for image_id in rng.permutation(source.image_ids):
        gt_boxes, gt_labels, _ = source.ground_truth(image_id)
        known = gt_labels > 0
        boxes = np.concatenate([gt_boxes[known], source.proposals(image_id)])
        labels = label_windows(boxes, gt_boxes[known], gt_labels[known], config.fg_iou,
                               (config.bg_iou_low, config.fg_iou))
        chosen = sample_windows(labels, config.windows_per_image, config.fg_fraction, rng)
        yield image_id, boxes[chosen], labels[chosen]


class TrainableTrunk(nn.Module):
    """A copy of ``backbone.trunk`` in the parametrisation it is trained in: input multiplied by
    ``input_scale`` (``Backbone.training_input_scale``), first conv's weights divided by
    it, so ``forward`` computes the same conv5 maps ``[N, C, H', W']`` of preprocessed
    ``[N, 3, H, W]`` as the plain trunk."""

    def __init__(self, backbone: Backbone):
        super().__init__()
        self.trunk = copy.deepcopy(backbone.trunk)
        self.input_scale = backbone.training_input_scale
        self.first = first_conv_name(self.trunk)
        with torch.no_grad():
            self.trunk.get_submodule(self.first).weight.div_(self.input_scale)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.trunk(image * self.input_scale)

    def plain_state(self) -> dict[str, torch.Tensor]:
        """The plain trunk's state dict (CPU, contiguous, float32), input scale folded back into
        the first conv: loadable by ``sppdet.models.backbones.load_trunk_weights``."""
        state = {name: value.detach().float().cpu().contiguous().clone()
                 for name, value in self.trunk.state_dict().items()}
        state[f"{self.first}.weight"] *= self.input_scale
        return state


def pooled_windows(trunk: nn.Module, backbone: Backbone, bgr: np.ndarray, boxes: np.ndarray,
                   scales: Sequence[int], device: torch.device | str = "cpu",
                   levels: Sequence[int] = LEVELS, target: float = TARGET) -> torch.Tensor:
    """Pooled windows float32 ``[R, D]`` on ``device``, differentiable w.r.t. ``trunk``'s weights.

    ``trunk``: ``backbone.trunk`` or a :class:`TrainableTrunk` of it; ``bgr``: uint8 ``[H, W, 3]``;
    ``boxes``: float ``[R, 4]`` in original-image pixels; ``scales``: the extract scales
    (shorter side); ``target``: the features' scale-choice target (``ExtractConfig.target``). The
    trunk runs once per scale some window needs; each window is pooled where
    ``sppdet.ops.spp.pool_windows`` would pool it on this image's cached features (module docstring).
    """
    boxes64 = torch.as_tensor(np.asarray(boxes, dtype=np.float64)).reshape(-1, 4)
    factors = scale_factors(bgr.shape[:2], scales)
    choice = choose_scales(boxes64, factors, target)
    parts, order = [], []
    for s in torch.unique(choice).tolist():
        chosen = torch.nonzero(choice == s).reshape(-1)
        resized, _ = resize_to_scale(bgr, int(scales[s]))
        image = backbone.preprocess(resized, device)[None]
        fmap = trunk(image)[0]
        cells = project_boxes(boxes64[chosen] * float(factors[s]), backbone.stride, backbone.offset,
                              fmap.shape[1:])
        parts.append(spp_pool(fmap, cells, levels))
        order.append(chosen)
    if not parts:
        return torch.zeros((0, pooled_dim(backbone.channels, levels)), device=device)
    order = torch.cat(order).to(device)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order), device=device)
    return torch.cat(parts)[inverse]


def _image_groups(images: Iterable[TrainingImage], size: int, progress: Progress):
    """Groups of ``size`` images with windows (the last may be smaller); images without any
    window only advance ``progress``."""
    group: list[TrainingImage] = []
    for item in images:
        if len(item.labels) == 0:
            progress(1)
            continue
        group.append(item)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def train_end_to_end(backbone: Backbone, head: FcHead, images: Callable[[int], Iterable[TrainingImage]],
                     scales: Sequence[int], config: FinetuneConfig, device: torch.device | str = "cpu",
                     levels: Sequence[int] = LEVELS, progress: Progress = no_progress,
                     target: float = TARGET, resume: dict | None = None,
                     save_epoch: Callable[[dict], None] | None = None
                     ) -> tuple[dict[str, torch.Tensor], list[TrainStats]]:
    """Train a copy of ``backbone``'s trunk together with ``head`` for ``config.epochs`` passes.

    ``images(epoch)`` yields the pass's :class:`TrainingImage`; ``scales``: the extract scales the
    windows are routed among (:func:`pooled_windows`, with ``target``). Uses ``config``'s lr, conv_lr_mult,
    momentum, weight_decay, images_per_batch and seed (module docstring). ``head`` is trained in
    place and left in eval mode on the CPU; ``backbone`` is untouched. ``progress(1, loss=...,
    acc=...)`` after each image. Returns the plain trunk state dict
    (:meth:`TrainableTrunk.plain_state`) and per-epoch stats.

    Resumable: ``save_epoch(state)`` gets a ``sppdet.models.head.epoch_state`` after each epoch
    (trunk in its training parametrisation, head, momentum, history, dropout RNG); given back as
    ``resume``, training continues after that epoch and ends with the weights of an uninterrupted
    run (``images`` must depend on the epoch alone).
    """
    device = torch.device(device)
    trunk = TrainableTrunk(backbone).to(device, memory_format=torch.channels_last)
    head.to(device)
    lrs = (config.lr * config.conv_lr_mult, config.lr)
    optimizer = torch.optim.SGD([{"params": trunk.parameters(), "lr": lrs[0]},
                                 {"params": head.parameters(), "lr": lrs[1]}],
                                lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    history, first, modules = [], 0, {"trunk": trunk, "head": head}
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(config.seed)
        if resume is not None:
            first, _, done = restore_epoch_state(resume, modules, optimizer, cuda)
            history = [TrainStats(**entry) for entry in done]
        trunk.train()
        head.train()
        for epoch in range(first, config.epochs):
            for group, lr in zip(optimizer.param_groups, lrs):
                group["lr"] = lr * lr_factor(epoch, config.epochs)
            stats = TrainStats()
            for batch in _image_groups(images(epoch), config.images_per_batch, progress):
                total = sum(len(item.labels) for item in batch)
                optimizer.zero_grad(set_to_none=True)
                for item in batch:
                    labels = torch.as_tensor(item.labels, dtype=torch.long, device=device)
                    logits = head(pooled_windows(trunk, backbone, item.bgr, item.boxes, scales,
                                                 device, levels, target))
                    loss = nn.functional.cross_entropy(logits, labels, reduction="sum")
                    (loss / total).backward()
                    stats.add(loss.item() / len(labels), logits.detach(), labels)
                    progress(1, loss=stats.mean_loss, acc=stats.accuracy)
                optimizer.step()
            history.append(stats)
            if save_epoch is not None:
                save_epoch(epoch_state(epoch + 1, modules, optimizer, history, cuda))
    head.cpu().eval()
    return trunk.plain_state(), history
