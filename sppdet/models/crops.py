"""The R-CNN way of computing window features: warp every window, run the trunk on each crop.

Shape shorthand: R windows of one image, B crops in one forward pass, S the crop side (pixels),
C conv5 channels, (h, w) the conv5 map of one crop (14 x 14 for zf5 at S = 224),
D = C * sum(n^2) the pooled length (the same D as SPP's, so both feed identical heads).

R-CNN (Girshick et al. 2014, appendix A; ``rcnn_im_crop.m``) crops each proposal with context
padding p = 16: the box is dilated about its centre by ``S / (S - 2p)``, so that after the
anisotropic warp of the dilated box to S x S exactly p pixels of context surround the original
box on each side; the part of the dilated box outside the image is filled with the image mean.
Here, in ``sppdet.structures.boxes``' continuous coordinates:

    * dilation: centre ``c = (x1 + x2) / 2``, half-width ``(x2 - x1) / 2 * S / (S - 2p)``;
    * warp: crop pixel ``i`` (centre ``i + 0.5``) samples the image at continuous
      ``x = d1 + (i + 0.5) * (d2 - d1) / S``, bilinearly between pixel centres, pixels beyond the
      border replicating the edge (``cv2.resize``'s half-pixel-centre sampling, the "bilinear,
      no anti-aliasing" ``imresize`` R-CNN calls);
    * samples with ``x`` outside ``[0, W]`` (or ``y`` outside ``[0, H]``) are the mean: zero after
      the trunk's mean subtraction.

Deviation from rcnn_im_crop.m: R-CNN rounds the dilated box to whole pixels and places the
clipped crop at rounded offsets; sppdet keeps the continuous geometry (at most half a pixel of
difference at the crop's edges). R-CNN warps to 227 (AlexNet's input); sppdet defaults to 224
(ZF-5's), configurable because a small trunk may want smaller crops.

How it is vectorised: ``torchvision.ops.roi_align(aligned=True, sampling_ratio=1)`` with one
output cell per crop pixel is exactly the bilinear sampling above for every window at once
(inside the image it clamps to the edge pixel); one separable in/out mask per crop then zeroes
the samples outside the image. Each crop's whole conv5 map is pooled with the SPP pyramid by
``adaptive_max_pool2d`` per level, whose bins ``floor(i h / n) .. ceil((i + 1) h / n) - 1`` are
exactly ``sppdet.ops.spp.spp_pool``'s bins for the window covering the whole map (tests check it).
The only Python loops run over batches of crops and over pyramid levels.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from sppdet.models.backbones import Backbone
from sppdet.structures.boxes import as_boxes
from sppdet.config import RcnnConfig
from sppdet.errors import ConfigError, ModelError
from sppdet.ops.spp import LEVELS, pooled_dim

#: R-CNN's context padding, in pixels of the warped crop (paper appendix A: p = 16).
CONTEXT = 16
#: Crop side: the backbone's input size (R-CNN warps to 227, AlexNet's; ZF-5 takes 224).
CROP_SIZE = 224


def check_crop(size: int, context: int) -> None:
    """``ConfigError`` unless ``size`` > 0 and ``0 <= context`` and ``2 * context < size``."""
    if size <= 0 or context < 0 or 2 * context >= size:
        raise ConfigError(f"--crop-size {size} / --context {context}: need crop size > 0 and "
                          "0 <= context < crop size / 2 (R-CNN: 227 and 16)")


def context_boxes(boxes, size: int = CROP_SIZE, context: int = CONTEXT) -> np.ndarray:
    """R-CNN's dilated boxes float64 ``[R, 4]`` (x1, y1, x2, y2), continuous pixels.

    ``boxes`` float ``[R, 4]`` (``sppdet.structures.boxes``). Each box is scaled about its centre by
    ``size / (size - 2 * context)``, so that warping the result to ``size`` x ``size`` leaves
    ``context`` pixels around the original box. ``context = 0`` returns the boxes unchanged.
    """
    check_crop(size, context)
    b = as_boxes(boxes).astype(np.float64)
    centre = (b[:, :2] + b[:, 2:]) / 2
    half = (b[:, 2:] - b[:, :2]) / 2 * (size / (size - 2 * context))
    return np.concatenate([centre - half, centre + half], axis=1)


def warp_crops(image: torch.Tensor, boxes, size: int = CROP_SIZE, context: int = CONTEXT) -> torch.Tensor:
    """Every window warped to a crop: float ``[R, 3, size, size]`` on ``image``'s device.

    ``image``: float32 ``[3, H, W]``, already preprocessed (the trunk's mean and std applied, e.g.
    ``Backbone.preprocess``), so the mean fill of out-of-image context is 0. ``boxes``: float32
    ``[R, 4]`` (x1, y1, x2, y2) in pixels of ``image`` (``sppdet.structures.boxes``). See the module docstring
    for the dilation and the sampling.
    """
    dilated = context_boxes(boxes, size, context)
    channels, height, width = image.shape
    if len(dilated) == 0:
        return image.new_zeros((0, channels, size, size))
    d = torch.as_tensor(dilated, dtype=torch.float32, device=image.device)
    rois = torch.cat([d.new_zeros((len(d), 1)), d], dim=1)
    crops = roi_align(image[None], rois, output_size=size, spatial_scale=1.0, sampling_ratio=1,
                      aligned=True)
    steps = (torch.arange(size, dtype=torch.float32, device=image.device) + 0.5) / size
    xs = d[:, 0:1] + steps[None, :] * (d[:, 2:3] - d[:, 0:1])  # [R, S] continuous sample x
    ys = d[:, 1:2] + steps[None, :] * (d[:, 3:4] - d[:, 1:2])
    inside_x = ((xs >= 0) & (xs <= width)).to(crops.dtype)
    inside_y = ((ys >= 0) & (ys <= height)).to(crops.dtype)
    return crops.mul_(inside_y[:, None, :, None] * inside_x[:, None, None, :])


def pool_maps(maps: torch.Tensor, levels: Sequence[int] = LEVELS) -> torch.Tensor:
    """SPP of each crop's whole map: ``maps`` float ``[B, C, h, w]`` -> ``[B, D]``, levels in the
    given order, each flattened ``(C, n, n)`` as ``sppdet.ops.spp.spp_pool``."""
    return torch.cat([F.adaptive_max_pool2d(maps, n).flatten(1) for n in levels], dim=1)


def rcnn_pooled(trunk: Backbone, image_bgr: np.ndarray, boxes, levels: Sequence[int] = LEVELS,
                size: int = CROP_SIZE, context: int = CONTEXT, batch: int = 128,
                device: torch.device | str = "cpu") -> np.ndarray:
    """R-CNN window features: float32 ``[R, D]``, in the order of ``boxes``.

    ``trunk``: a ``sppdet.models.backbones.Backbone`` (its conv trunk and preprocessing);
    ``image_bgr``: uint8 ``[H, W, 3]``; ``boxes``: float32 ``[R, 4]`` (x1, y1, x2, y2) in its
    pixels (``sppdet.structures.boxes``). Each window is warped with ``context`` pixels of context to
    ``size`` x ``size`` (:func:`warp_crops`), ``batch`` crops go through the trunk per forward
    pass, and each crop's conv5 map is pyramid-pooled (:func:`pool_maps`), giving
    ``D = trunk.channels * sum(n^2 for n in levels)``.
    """
    if batch < 1:
        raise ConfigError(f"--batch {batch}: need at least one crop per forward pass")
    boxes = as_boxes(boxes)
    check_crop(size, context)
    device = torch.device(device)
    out = np.empty((len(boxes), pooled_dim(trunk.channels, levels)), dtype=np.float32)
    # channels-last runs the trunk ~1.7x faster on a CPU (see sppdet.models.features)
    net = trunk.trunk.to(device, memory_format=torch.channels_last).eval()
    with torch.inference_mode():
        image = trunk.preprocess(image_bgr, device).contiguous()
        for first in range(0, len(boxes), batch):
            crops = warp_crops(image, boxes[first:first + batch], size, context)
            maps = net(crops.contiguous(memory_format=torch.channels_last))
            out[first:first + len(crops)] = pool_maps(maps, levels).float().cpu().numpy()
    return out


def compute_rcnn_features(backbone: Backbone, bgr: np.ndarray, boxes, config: RcnnConfig,
                          batch: int = 128, device: torch.device | str = "cpu") -> np.ndarray:
    """float16 ``[R, D]`` R-CNN vectors of ``boxes`` float32 ``[R, 4]`` (``sppdet.structures.boxes``) in
    uint8 BGR ``[H, W, 3]``; ``ModelError`` if a value overflows float16 (badly scaled weights)."""
    pooled = rcnn_pooled(backbone, bgr, boxes, config.levels, config.crop_size, config.context,
                         batch, device).astype(np.float16)
    if not np.isfinite(pooled).all():
        raise ModelError(f"{backbone.name} weights ({backbone.weights_source}) give conv5 values "
                         "that are not finite in float16; they are badly scaled")
    return pooled
