"""Spatial pyramid pooling: window -> conv cells, scale choice, and pyramid max pooling.

Shape shorthand:
    R   windows (proposals)            S   scales of a multi-scale feature file
    C   channels of the feature map    H, W  height and width of one map, in cells
    D   = C * sum(n * n for n in levels), the pooled length (12,800 for C = 256, levels 1,2,3,6)

Boxes are float ``[R, 4]`` ``(x1, y1, x2, y2)`` in pixels (``sppdet.structures.boxes`` states the
convention); cells are int64 ``[R, 4]`` ``(x1, y1, x2, y2)`` *inclusive* map indices.

Choices:
    * Projection (docs/algorithm.md section 5): cell ``j`` is centred at pixel
      ``offset + stride * j``. The paper's ``floor(u) + 1`` / ``ceil(u) - 1`` with
      ``u = (x - offset) / stride`` keeps exactly the cells whose centres lie strictly inside the
      window. A side with no such cell (left > right: the window is narrower than about one
      stride) collapses to the one cell ``(left + right) // 2``, a neighbour of the window's
      centre; then indices are clamped to the map, so windows reaching past the map keep its
      border cells.
    * Scale choice (docs/algorithm.md section 4): the paper's target of 224 on a side (the
      release uses 208); ties go to the first (smallest-index) scale.
    * Pooling (docs/algorithm.md section 6): exact paper bins, max pooling, levels concatenated in
      the given order, each flattened as ``(C, n, n)``. Identical bins to
      ``torchvision.ops.roi_pool`` on inclusive cell boxes with ``spatial_scale=1``, up to its
      float rounding of bin edges.

How the pooling is fast and vectorised: every bin is a rectangle of cells, and the max over any
rectangle is the max of four overlapping power-of-two blocks. A 2-D sparse table holds, for each
``(ky, kx)``, the max over every ``2**ky x 2**kx`` block of the map (built by ``max`` of two shifted
copies, ``O(C H W log H log W)`` once per map, and only up to the largest bin). Each bin is then
four row gathers of a channels-last table (contiguous ``C``-vectors) and an elementwise max, so
the cost is ``O(R * bins * C)`` whatever the window sizes, with no loop over windows or bins.
Everything is plain torch ops (``maximum``, ``index_select``), so the result is differentiable with
respect to the feature map: gradients reach the conv layers, routed to each bin's maximum (exact
ties between distinct cells split the gradient, a valid subgradient). Works on any device/dtype.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

#: The paper's pyramid: 1x1, 2x2, 3x3 and 6x6 bins (50 bins).
LEVELS = (1, 2, 3, 6)
#: The paper's scale-choice target, on a side (docs/algorithm.md section 4).
TARGET = 224
#: Elements gathered per block of windows in spp_pool (8 MB of float32: small enough to stay in
#: cache, large enough to amortise Python; measured in docs/decisions.md).
_BLOCK_ELEMENTS = 1 << 21


def pooled_dim(channels: int, levels: Sequence[int] = LEVELS) -> int:
    """``D = channels * sum(n * n for n in levels)``, the length of one pooled window."""
    return channels * sum(n * n for n in levels)


def _as_float64(boxes) -> torch.Tensor:
    if isinstance(boxes, torch.Tensor):
        return boxes.detach().to(torch.float64).reshape(-1, 4)
    return torch.as_tensor(np.asarray(boxes, dtype=np.float64)).reshape(-1, 4)


def project_boxes(boxes, stride: float, offset: float, map_hw: tuple[int, int]) -> torch.Tensor:
    """Inclusive cells int64 ``[R, 4]`` (x1, y1, x2, y2) of a map of ``map_hw = (H, W)`` cells.

    ``boxes``: float ``[R, 4]`` (x1, y1, x2, y2), numpy or torch, in pixels of the (resized)
    image the map was computed from. Cell ``j`` is centred at pixel ``offset + stride * j``.
    With ``u = (x - offset) / stride``: left/top = ``floor(u) + 1``, right/bottom = ``ceil(u) - 1``;
    a collapsed side (left > right) becomes the one cell ``(left + right) // 2``; finally clamped
    to ``[0, W - 1]`` and ``[0, H - 1]``. Returned on the device of a torch input, else the CPU.
    """
    b = _as_float64(boxes)
    u = (b - offset) / stride
    low = torch.floor(u[:, :2]).long() + 1
    high = torch.ceil(u[:, 2:]).long() - 1
    middle = torch.div(low + high, 2, rounding_mode="floor")
    collapsed = low > high
    low = torch.where(collapsed, middle, low)
    high = torch.where(collapsed, middle, high)
    h, w = int(map_hw[0]), int(map_hw[1])
    limit = torch.tensor([w - 1, h - 1], dtype=torch.long, device=b.device)
    low = torch.minimum(low.clamp(min=0), limit)
    high = torch.minimum(high.clamp(min=0), limit)
    return torch.cat([low, high], dim=1)


def scale_factors(image_hw, scales) -> np.ndarray:
    """float32 ``[S]``: the resize factor ``f = s / min(H, W)`` of each extract scale (shorter
    side ``s``) for an image of ``image_hw`` (H, W), rounded to float32 as the feature cache stores
    it. Everything that routes windows among scales computes the factors here, so a window goes to
    the same scale in extraction, fine-tuning and object copies."""
    shorter = min(int(image_hw[0]), int(image_hw[1]))
    return (np.asarray(scales, dtype=np.float64).reshape(-1) / shorter).astype(np.float32)


def choose_scales(boxes, scale_factors, target: float = TARGET) -> torch.Tensor:
    """Per window, int64 ``[R]``: the scale whose scaled area is closest to ``target ** 2``.

    ``boxes``: float ``[R, 4]`` (x1, y1, x2, y2) in original-image pixels; ``scale_factors``:
    ``[S]`` floats, resized image = original * factor. The scaled area is
    ``area * factor ** 2``; ties go to the first scale. On the CPU.
    """
    b = _as_float64(boxes).cpu()
    factors = torch.as_tensor(np.asarray(scale_factors, dtype=np.float64)).reshape(-1)
    area = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    gap = (area[:, None] * factors[None, :] ** 2 - float(target) ** 2).abs()
    return gap.argmin(dim=1)


def _bin_blocks(low: torch.Tensor, high: torch.Tensor, n: int):
    """The ``n`` bins along one axis of windows spanning cells ``low..high`` ``[R]``
    (docs/algorithm.md section 6.1), each as two overlapping power-of-two blocks:
    ``(start1, start2, k)``, each ``[R, n]``.

    Bin ``i`` covers ``low + floor(i * size / n) .. low + ceil((i + 1) * size / n) - 1``; its
    blocks of ``2**k`` cells (``2**k <= bin length < 2**(k + 1)``) start at its first cell and end
    at its last, so together they cover the bin exactly.
    """
    size = (high - low + 1)[:, None]
    i = torch.arange(n, device=low.device)[None, :]
    first = low[:, None] + torch.div(i * size, n, rounding_mode="floor")
    last = low[:, None] - torch.div(-(i + 1) * size, n, rounding_mode="floor") - 1
    # frexp is exact: length = mantissa * 2**exponent with mantissa in [0.5, 1).
    k = torch.frexp((last - first + 1).double()).exponent.long() - 1
    return first, last - (1 << k) + 1, k


def _sparse_table(hwc: torch.Tensor, ky_max: int, kx_max: int):
    """Block maxima of ``hwc`` ``[H, W, C]`` for every ``2**ky x 2**kx``, flattened to rows.

    Returns ``table`` ``[N, C]``, ``base`` ``[ky_max + 1, kx_max + 1]`` (first row of each
    ``(ky, kx)`` block table) and ``widths`` ``[kx_max + 1]`` (``W - 2**kx + 1``), so the block with
    top-left cell ``(y, x)`` is row ``base[ky, kx] + y * widths[kx] + x``. Without autograd, each
    block table is written in place into one preallocated ``table`` (the maximum of two halves of
    the table before it), so nothing is copied twice; with it, the tables are concatenated.
    """
    height, width, channels = hwc.shape
    counts = [(height - (1 << ky) + 1) * (width - (1 << kx) + 1)
              for ky in range(ky_max + 1) for kx in range(kx_max + 1)]
    base = torch.tensor([0] + counts[:-1], dtype=torch.long, device=hwc.device).cumsum(0).view(ky_max + 1, kx_max + 1)
    widths = width + 1 - (1 << torch.arange(kx_max + 1, device=hwc.device))
    if hwc.requires_grad and torch.is_grad_enabled():
        return _concatenated_table(hwc, ky_max, kx_max), base, widths
    table = hwc.new_empty((sum(counts), channels))

    def slot(first: int, rows: int, cols: int) -> torch.Tensor:
        return table[first:first + rows * cols].view(rows, cols, channels)

    rows = slot(0, height, width)
    rows.copy_(hwc)
    first = 0
    for ky in range(ky_max + 1):
        if ky:
            half = 1 << (ky - 1)
            rows = torch.maximum(rows[:-half], rows[half:], out=slot(first, len(rows) - half, width))
        block = rows
        for kx in range(kx_max + 1):
            if kx:
                half = 1 << (kx - 1)
                block = torch.maximum(block[:, :-half], block[:, half:],
                                      out=slot(first, len(block), block.shape[1] - half))
            first += block.shape[0] * block.shape[1]
    return table, base, widths


def _concatenated_table(hwc: torch.Tensor, ky_max: int, kx_max: int) -> torch.Tensor:
    """The ``table`` of :func:`_sparse_table`, built out of place (differentiable)."""
    tables, rows = [], hwc
    for ky in range(ky_max + 1):
        if ky:
            half = 1 << (ky - 1)
            rows = torch.maximum(rows[:-half], rows[half:])
        block = rows
        for kx in range(kx_max + 1):
            if kx:
                half = 1 << (kx - 1)
                block = torch.maximum(block[:, :-half], block[:, half:])
            tables.append(block.reshape(-1, hwc.shape[2]))
    return torch.cat(tables)


def spp_pool(feature_map: torch.Tensor, cells, levels: Sequence[int] = LEVELS) -> torch.Tensor:
    """Pyramid max pooling of windows on one map: ``[R, D]``, dtype and device of the map.

    ``feature_map``: float ``[C, H, W]``. ``cells``: int ``[R, 4]`` inclusive (x1, y1, x2, y2)
    within the map (as from :func:`project_boxes`). For a window ``w`` cells wide and level ``n``,
    bin ``i`` covers cells ``floor(i * w / n) .. ceil((i + 1) * w / n) - 1`` from its left edge
    (rows likewise); bins are never empty and overlap when ``n > w``. The output holds the levels
    in the given order, each flattened ``(C, n, n)`` (channel, bin row, bin column). Differentiable
    with respect to ``feature_map``. ``R = 0`` gives ``[0, D]``.
    """
    channels, height, width = feature_map.shape
    cells = torch.as_tensor(cells, dtype=torch.long, device=feature_map.device).reshape(-1, 4)
    count = cells.shape[0]
    if count == 0:
        return feature_map.new_empty((0, pooled_dim(channels, levels)))
    x1, y1, x2, y2 = cells.unbind(1)
    if bool(((x1 < 0) | (y1 < 0) | (x2 >= width) | (y2 >= height) | (x2 < x1) | (y2 < y1)).any()):
        raise ValueError(f"spp_pool: cells must satisfy 0 <= x1 <= x2 < {width} and "
                         f"0 <= y1 <= y2 < {height}")

    bins = [(_bin_blocks(y1, y2, n), _bin_blocks(x1, x2, n)) for n in levels]
    ky_max = max(int(ys[2].max()) for ys, _ in bins)
    kx_max = max(int(xs[2].max()) for _, xs in bins)
    table, base, widths = _sparse_table(feature_map.permute(1, 2, 0), ky_max, kx_max)

    # Per level, the table rows [R, 4, n * n] of the four blocks whose max is each bin's max.
    rows = []
    for n, ((top, bottom, ky), (left, right, kx)) in zip(levels, bins):
        corner = base[ky[:, :, None], kx[:, None, :]]
        stride = widths[kx][:, None, :]
        blocks = [corner + y[:, :, None] * stride + x[:, None, :]
                  for y in (top, bottom) for x in (left, right)]
        rows.append(torch.stack(blocks, 1).view(count, 4, n * n))

    # Blocks of windows keep the gathered intermediates cache-sized (several times faster on a
    # CPU than one huge gather, which spends its time on page faults); the result is the same.
    step = max(1, _BLOCK_ELEMENTS // (4 * pooled_dim(channels, levels)))
    pieces = []
    for first in range(0, count, step):
        parts = []
        for n, level_rows in zip(levels, rows):
            block_rows = level_rows[first:first + step]
            gathered = table.index_select(0, block_rows.reshape(-1))
            maxima = gathered.view(len(block_rows), 4, n * n, channels).amax(1)
            parts.append(maxima.transpose(1, 2).reshape(len(block_rows), channels * n * n))
        pieces.append(torch.cat(parts, 1))
    return torch.cat(pieces) if len(pieces) > 1 else pieces[0]


def pool_windows(maps: Sequence, scale_factors, boxes, stride: float, offset: float,
                 levels: Sequence[int] = LEVELS, target: float = TARGET,
                 device: str | torch.device = "cpu") -> torch.Tensor:
    """Pooled windows float32 ``[R, D]`` from a multi-scale feature file, in the order of ``boxes``.

    ``maps``: ``S`` feature maps ``[C, H_s, W_s]`` (numpy float16/float32, memmaps, or tensors);
    ``scale_factors``: ``[S]`` floats (resized = original * factor); ``boxes``: float ``[R, 4]``
    (x1, y1, x2, y2) in original-image pixels. Each window is pooled at the scale chosen by
    :func:`choose_scales` (the only one when ``S = 1``), after scaling the box and projecting it
    with :func:`project_boxes`. Each needed map is read once and converted to float32 on ``device``.
    """
    factors = np.asarray(scale_factors, dtype=np.float64).reshape(-1)
    if len(maps) != len(factors) or len(maps) == 0:
        raise ValueError(f"pool_windows: {len(maps)} maps but {len(factors)} scale factors")
    b = _as_float64(boxes).cpu()
    out = torch.zeros((len(b), pooled_dim(int(maps[0].shape[0]), levels)), dtype=torch.float32,
                      device=device)
    choice = choose_scales(b, factors, target)
    for s in torch.unique(choice).tolist():
        chosen = torch.nonzero(choice == s).reshape(-1)
        fmap = maps[s]
        if not isinstance(fmap, torch.Tensor):
            fmap = torch.from_numpy(np.asarray(fmap, dtype=np.float32))
        fmap = fmap.to(device=device, dtype=torch.float32)
        cells = project_boxes(b[chosen] * factors[s], stride, offset, fmap.shape[1:])
        out[chosen.to(device)] = spp_pool(fmap, cells, levels)
    return out
