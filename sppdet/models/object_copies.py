"""Pooled windows of transformed copies of objects: flips, quarter turns, channel permutations.

Shape shorthand: G objects, T transforms, C conv5 channels, D = C * sum(n^2). Boxes follow
``sppdet.structures.boxes``.

``train-svm --augment-positives`` (beyond the paper): each ground-truth object also gives the
pooled vectors of its flipped / turned / recoloured copies, as if the image had been extracted
that way. Computing the whole image's features for every transform would multiply ``extract``'s
time by T; instead each object is cut out as a *chip* of the image resized to the scale its
window is pooled at (``sppdet.ops.spp.choose_scales`` with the features' scale factors and target),
with ``margin`` pixels of context on every side (clipped to the image), transformed, run
through the trunk, and its window pooled by ``sppdet.ops.spp.project_boxes`` / ``spp_pool`` as on the
cached map. The chip's top-left corner is snapped down to a multiple of the stride, so the
untransformed chip's cells line up with the whole-image map's (a test checks they match away
from the chip border). Chips of the same shape run as one batch.

Why: the SVMs overfit classes whose appearance varies with rotation (on the demo, test-split
squares score far below trainval's under their SVM, circles do not). More copies of each object
in poses it may take is what the pretraining augmentation (``sppdet.training.pretrain``) gives the
trunk, here given to the SVMs (measurements in docs/decisions.md). As there, "rot90" and
"channels" suit only classes that keep their identity under them (the demo's shapes), "flip"
suits VOC too. Rescaled copies and copies for the head-only ``finetune`` were tried on the demo
and not kept (docs/decisions.md).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
import torch

from sppdet.models.backbones import Backbone
from sppdet.errors import ConfigError
from sppdet.models.features import resize_to_scale, trunk_precision
from sppdet.ops.spp import LEVELS, TARGET, choose_scales, pooled_dim, project_boxes, scale_factors, spp_pool
from sppdet.ops.views import transform_boxes, transform_image

#: Context around each object in the resized image, 4 conv5 cells of a stride-16 trunk: on the
#: demo's trunk the untransformed chip's pooled vector is then close to the cached one, and the
#: SVMs score as well as with 96 in less conv time (docs/decisions.md).
MARGIN = 64
#: The five channel orders other than the identity.
PERMUTATIONS = ((0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))


def check_augmentations(augment: Sequence[str]) -> tuple[str, ...]:
    """``augment`` as a sorted tuple of distinct names from ``sppdet.models.object_copies.AUGMENTATIONS``;
    ``ConfigError`` naming the unknown ones otherwise."""
    names = tuple(sorted(set(augment)))
    unknown = [name for name in names if name not in AUGMENTATIONS]
    if unknown:
        raise ConfigError(f"--augment-positives {','.join(unknown)}: choose from {', '.join(AUGMENTATIONS)}")
    return names


class Copy(NamedTuple):
    """One transformed copy: a left-right flip (first), ``turns`` quarter turns counter-clockwise,
    then the colour channels reordered to ``channels`` (a permutation of 0, 1, 2)."""

    turns: int = 0
    flip: bool = False
    channels: tuple[int, int, int] = (0, 1, 2)


def geometric_transforms(augment: Sequence[str]) -> list[tuple[int, bool]]:
    """The (quarter turns k, left-right flip first) pairs ``augment`` allows, identity excluded:
    1 with "flip", 3 with "rot90", 7 with both; with only "channels", the identity once (its copy
    differs by the channel order)."""
    turns = (0, 1, 2, 3) if "rot90" in augment else (0,)
    flips = (False, True) if "flip" in augment else (False,)
    pairs = [(k, f) for f in flips for k in turns if (k, f) != (0, False)]
    return pairs or ([(0, False)] if "channels" in augment else [])


def draw_copies(augment: Sequence[str], count: int, rng: np.random.Generator) -> list[list[Copy]]:
    """The copies of each of ``count`` objects: every transform of :func:`geometric_transforms`,
    with "channels" each in a channel order drawn from ``rng`` among the five non-identity ones."""
    augment = check_augmentations(augment)
    pairs = geometric_transforms(augment)
    if "channels" not in augment:
        return [[Copy(k, f) for k, f in pairs] for _ in range(count)]
    orders = rng.integers(len(PERMUTATIONS), size=(count, len(pairs)))
    return [[Copy(k, f, PERMUTATIONS[o]) for (k, f), o in zip(pairs, row)] for row in orders]


def chip_region(box: np.ndarray, hw: tuple[int, int], margin: float, stride: int) -> tuple[int, int, int, int]:
    """Integer pixel region (x0, y0, x1, y1), end exclusive, of the chip around ``box`` [4] in an
    image of ``hw``: ``margin`` px beyond the box, top-left snapped down to a multiple of
    ``stride``, clipped to the image."""
    x0 = max(0, int(np.floor((box[0] - margin) / stride)) * stride)
    y0 = max(0, int(np.floor((box[1] - margin) / stride)) * stride)
    x1 = min(hw[1], int(np.ceil(box[2] + margin)))
    y1 = min(hw[0], int(np.ceil(box[3] + margin)))
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)


def augmented_windows(backbone: Backbone, bgr: np.ndarray, boxes: np.ndarray, scales: Sequence[int],
                      augment: Sequence[str], rng: np.random.Generator, target: float = TARGET,
                      levels: Sequence[int] = LEVELS, margin: float = MARGIN,
                      device: torch.device | str = "cpu", precision: str = "float32") -> tuple[np.ndarray, np.ndarray]:
    """:func:`pooled_copies` of each box with the copies ``augment`` asks for
    (:func:`draw_copies`; ``rng`` draws the channel orders of "channels")."""
    return pooled_copies(backbone, bgr, boxes, draw_copies(augment, len(boxes), rng), scales, target,
                         levels, margin, device, precision)


def pooled_copies(backbone: Backbone, bgr: np.ndarray, boxes: np.ndarray, copies: Sequence[Sequence[Copy]],
                  scales: Sequence[int], target: float = TARGET, levels: Sequence[int] = LEVELS,
                  margin: float = MARGIN, device: torch.device | str = "cpu",
                  precision: str = "float32") -> tuple[np.ndarray, np.ndarray]:
    """Pooled vectors of transformed copies of each box (module docstring); the trunk runs in the
    features' ``precision`` (``sppdet.models.features.PRECISIONS``).

    ``bgr``: uint8 ``[H, W, 3]``; ``boxes``: float ``[G, 4]`` in original-image pixels;
    ``copies[g]``: the :class:`Copy` list of box ``g``; ``scales``: the features' extract scales
    (shorter side) and ``target`` their scale-choice target, so each box is pooled at the scale
    ``sppdet.ops.spp.pool_windows`` picks for it. Returns float32 ``[N, D]`` (N copies in all, box by
    box, in the order of ``copies``) and, per row, the index int64 ``[N]`` of its box.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    dim = pooled_dim(backbone.channels, levels)
    owner = np.repeat(np.arange(len(boxes)), [len(c) for c in copies]).astype(np.int64)
    out = np.zeros((len(owner), dim), np.float32)
    if not len(owner):
        return out, owner
    first = np.r_[0, np.cumsum([len(c) for c in copies])]
    factors = scale_factors(bgr.shape[:2], scales)
    choice = choose_scales(boxes, factors, target).numpy()
    trunk = backbone.trunk.to(device, memory_format=torch.channels_last).eval()
    for s in np.unique(choice):
        resized, _ = resize_to_scale(bgr, int(scales[s]))
        for g in np.flatnonzero(choice == s):
            if not copies[g]:
                continue
            scaled = boxes[g] * float(factors[s])
            x0, y0, x1, y1 = chip_region(scaled, resized.shape[:2], margin, backbone.stride)
            chip = resized[y0:y1, x0:x1]
            local = scaled[None] - [x0, y0, x0, y0]
            images = [transform_image(chip, c.turns, c.flip)[..., list(c.channels)] for c in copies[g]]
            windows = np.concatenate([transform_boxes(local, chip.shape[:2], c.turns, c.flip) for c in copies[g]])
            out[first[g]:first[g + 1]] = _pool_copies(trunk, backbone, images, windows, levels, device, precision)
    return out, owner


def _pool_copies(trunk, backbone: Backbone, copies: list[np.ndarray], windows: np.ndarray,
                 levels: Sequence[int], device, precision: str = "float32") -> np.ndarray:
    """Pooled ``[T, D]``: window ``t`` [4] of chip ``t``, chips of one shape batched together."""
    pooled = np.zeros((len(copies), pooled_dim(backbone.channels, levels)), np.float32)
    shapes: dict[tuple[int, ...], list[int]] = {}
    for index, copy in enumerate(copies):
        shapes.setdefault(copy.shape, []).append(index)
    with torch.inference_mode(), trunk_precision(precision, device):
        for indices in shapes.values():
            batch = torch.stack([backbone.preprocess(np.ascontiguousarray(copies[i]), device) for i in indices])
            maps = trunk(batch.contiguous(memory_format=torch.channels_last)).float()
            for row, i in enumerate(indices):
                cells = project_boxes(windows[i:i + 1], backbone.stride, backbone.offset, maps.shape[2:])
                pooled[i] = spp_pool(maps[row], cells, levels).cpu().numpy()[0]
    return pooled


AUGMENTATIONS = ("flip", "rot90", "channels")
