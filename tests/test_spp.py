"""sppdet.ops.spp against slow loop references written from SPEC.md sections 4-6."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sppdet.ops import spp
from sppdet.ops.spp import choose_scales, pool_windows, pooled_dim, project_boxes, spp_pool

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))]
DTYPES = [torch.float32, torch.float64]


# ---- slow references ---------------------------------------------------------------------------

def reference_project(boxes, stride, offset, map_hw):
    """SPEC section 5, one window and one side at a time."""
    height, width = map_hw
    out = []
    for x1, y1, x2, y2 in np.asarray(boxes, dtype=np.float64):
        window = []
        for low_px, high_px, size in ((x1, x2, width), (y1, y2, height)):
            low = math.floor((low_px - offset) / stride) + 1
            high = math.ceil((high_px - offset) / stride) - 1
            if low > high:
                low = high = (low + high) // 2
            window.append((min(max(low, 0), size - 1), min(max(high, 0), size - 1)))
        (left, right), (top, bottom) = window
        out.append([left, top, right, bottom])
    return np.asarray(out, dtype=np.int64).reshape(-1, 4)


def reference_pool(feature_map, cells, levels):
    """SPEC section 6: per window, per level, per bin, floor/ceil slices and a max."""
    fmap = np.asarray(feature_map, dtype=np.float64)
    channels = fmap.shape[0]
    rows = []
    for x1, y1, x2, y2 in np.asarray(cells):
        w, h = x2 - x1 + 1, y2 - y1 + 1
        row = []
        for n in levels:
            pooled = np.empty((channels, n, n))
            for i in range(n):
                r0, r1 = y1 + (i * h) // n, y1 + math.ceil((i + 1) * h / n) - 1
                for j in range(n):
                    c0, c1 = x1 + (j * w) // n, x1 + math.ceil((j + 1) * w / n) - 1
                    pooled[:, i, j] = fmap[:, r0:r1 + 1, c0:c1 + 1].max(axis=(1, 2))
            row.append(pooled.reshape(-1))
        rows.append(np.concatenate(row))
    return np.asarray(rows).reshape(len(rows), pooled_dim(channels, levels))


def reference_scales(boxes, factors, target):
    out = []
    for x1, y1, x2, y2 in np.asarray(boxes, dtype=np.float64):
        gaps = [abs((x2 - x1) * (y2 - y1) * f * f - target * target) for f in factors]
        out.append(gaps.index(min(gaps)))
    return np.asarray(out, dtype=np.int64)


# ---- inputs ------------------------------------------------------------------------------------

def random_cells(rng, height, width, count):
    """Random inclusive windows plus every edge case: single cells, each border, the full map."""
    xs = np.sort(rng.integers(0, width, (count, 2)), axis=1)
    ys = np.sort(rng.integers(0, height, (count, 2)), axis=1)
    cells = [np.stack([xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]], 1)]
    w, h = width - 1, height - 1
    cells.append(np.array([
        [0, 0, 0, 0], [w, h, w, h], [0, h, 0, h], [w, 0, w, 0],  # single cells in the corners
        [0, 0, w, h],  # the whole map
        [0, 0, 0, h], [w, 0, w, h], [0, 0, w, 0], [0, h, w, h],  # one-cell strips on each border
        [0, 0, min(1, w), min(1, h)], [max(w - 2, 0), max(h - 1, 0), w, h],  # smaller than n
    ]))
    return torch.from_numpy(np.concatenate(cells).astype(np.int64))


def random_boxes(rng, count, image_w, image_h, min_size=1.0):
    w = np.exp(rng.uniform(np.log(min_size), np.log(image_w), count))
    h = np.exp(rng.uniform(np.log(min_size), np.log(image_h), count))
    x1, y1 = rng.uniform(-20, image_w, count), rng.uniform(-20, image_h, count)
    return np.stack([x1, y1, x1 + w, y1 + h], 1).astype(np.float32)


# ---- project_boxes -----------------------------------------------------------------------------

def test_project_boxes_worked_examples():
    boxes = np.array([
        [0, 0, 100, 50],  # u = 0 .. 6.25 x 0 .. 3.125 -> cells 1..6 x 1..3
        [5, 5, 10, 10],  # inside one stride: left 1 > right 0, collapses to cell 0
        [32, 32, 64, 64],  # edges exactly on cell centres 2 and 4: only cell 3 is strictly inside
        [-500, -500, 5000, 5000],  # wider than the map on every side: clamped
        [5000, 5000, 6000, 6000],  # beyond the map: the last cell
    ], dtype=np.float32)
    cells = project_boxes(boxes, stride=16, offset=0, map_hw=(8, 10))
    assert cells.dtype == torch.int64
    assert cells.tolist() == [[1, 1, 6, 3], [0, 0, 0, 0], [3, 3, 3, 3], [0, 0, 9, 7], [9, 7, 9, 7]]


@pytest.mark.parametrize("stride, offset, map_hw", [(16, 0.0, (43, 58)), (16, 21.0, (9, 7)),
                                                    (8, -3.5, (1, 1)), (32, 10.0, (2, 3))])
def test_project_boxes_matches_reference(stride, offset, map_hw):
    rng = np.random.default_rng(0)
    image_h, image_w = stride * map_hw[0], stride * map_hw[1]
    boxes = random_boxes(rng, 400, image_w, image_h)
    boxes[:20] = np.round(boxes[:20] / stride) * stride + offset  # edges on cell centres
    expected = reference_project(boxes, stride, offset, map_hw)
    np.testing.assert_array_equal(project_boxes(boxes, stride, offset, map_hw).numpy(), expected)
    np.testing.assert_array_equal(
        project_boxes(torch.from_numpy(boxes).double(), stride, offset, map_hw).numpy(), expected)


def test_project_boxes_empty():
    assert project_boxes(np.zeros((0, 4), np.float32), 16, 0, (5, 5)).shape == (0, 4)


# ---- choose_scales -----------------------------------------------------------------------------

def test_choose_scales_matches_reference():
    rng = np.random.default_rng(1)
    boxes = random_boxes(rng, 500, 500, 375, min_size=4)
    factors = [480 / 375, 576 / 375, 688 / 375, 864 / 375, 1200 / 375]
    for target in (224, 208):
        np.testing.assert_array_equal(choose_scales(boxes, factors, target).numpy(),
                                      reference_scales(boxes, factors, target))


def test_choose_scales_examples():
    boxes = np.array([[0, 0, 224, 224], [0, 0, 112, 112], [0, 0, 448, 448], [0, 0, 10, 10]])
    assert choose_scales(boxes, [0.5, 1.0, 2.0]).tolist() == [1, 2, 0, 2]
    assert choose_scales(boxes, [2.0, 2.0]).tolist() == [0, 0, 0, 0]  # ties: the first scale
    assert choose_scales(np.zeros((0, 4)), [1.0]).shape == (0,)


# ---- spp_pool ----------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, levels", [((3, 7, 9), (1, 2, 3, 6)), ((2, 1, 1), (1, 2, 3, 6)),
                                           ((4, 43, 58), (1, 2, 3, 6)), ((2, 5, 3), (4, 1, 7))])
def test_spp_pool_matches_reference(shape, levels, dtype, device):
    rng = np.random.default_rng(2)
    fmap = torch.from_numpy(rng.standard_normal(shape)).to(device=device, dtype=dtype)
    cells = random_cells(rng, shape[1], shape[2], 200)
    out = spp_pool(fmap, cells.to(device), levels)
    assert out.dtype == dtype and out.device.type == device
    assert out.shape == (len(cells), pooled_dim(shape[0], levels))
    expected = reference_pool(fmap.cpu().numpy(), cells.numpy(), levels)
    np.testing.assert_array_equal(out.cpu().double().numpy(), expected)


def test_spp_pool_blocks_of_windows_give_the_same_result(monkeypatch):
    rng = np.random.default_rng(3)
    fmap = torch.from_numpy(rng.standard_normal((3, 11, 13)))
    cells = random_cells(rng, 11, 13, 50)
    whole = spp_pool(fmap, cells)
    monkeypatch.setattr(spp, "_BLOCK_ELEMENTS", 1)  # one window per block
    torch.testing.assert_close(spp_pool(fmap, cells), whole, rtol=0, atol=0)


def test_spp_pool_output_order_is_levels_then_channel_row_column():
    channels, size = 2, 6
    c, y, x = np.meshgrid(np.arange(channels), np.arange(size), np.arange(size), indexing="ij")
    fmap = torch.from_numpy((1000 * c + 10 * y + x).astype(np.float32))
    out = spp_pool(fmap, torch.tensor([[0, 0, 5, 5]]), levels=(1, 2))[0]
    # level 1: per channel the max is the bottom-right cell; level 2: bins end at rows/cols 2 and 5
    level2 = [1000 * ch + 10 * row + col for ch in range(2) for row in (2, 5) for col in (2, 5)]
    assert out.tolist() == [55, 1055] + level2


def test_spp_pool_overlapping_bins_when_levels_exceed_window():
    fmap = torch.tensor([[[1.0, 2.0]]])  # C=1, H=1, W=2: a window 2 cells wide, 1 high
    out = spp_pool(fmap, torch.tensor([[0, 0, 1, 0]]), levels=(3,))
    # w=2, n=3: column bins 0..0, 0..1, 1..1; rows all 0..0
    assert out.tolist() == [[1.0, 2.0, 2.0] * 3]


def test_spp_pool_empty_and_invalid():
    fmap = torch.zeros(5, 4, 4)
    assert spp_pool(fmap, torch.zeros((0, 4), dtype=torch.long)).shape == (0, 5 * 50)
    with pytest.raises(ValueError, match="cells"):
        spp_pool(fmap, torch.tensor([[0, 0, 4, 3]]))
    with pytest.raises(ValueError, match="cells"):
        spp_pool(fmap, torch.tensor([[2, 0, 1, 3]]))


def test_spp_pool_gradcheck():
    rng = np.random.default_rng(4)
    fmap = torch.from_numpy(rng.standard_normal((2, 5, 6))).requires_grad_()
    cells = torch.tensor([[0, 0, 5, 4], [1, 1, 2, 3], [3, 2, 3, 2], [2, 0, 5, 1]])
    assert torch.autograd.gradcheck(lambda m: spp_pool(m, cells, (1, 2, 3)), (fmap,))


def test_spp_pool_gradient_routes_to_each_bin_max():
    """Sum of outputs: each map cell's gradient counts the bins it is the maximum of."""
    rng = np.random.default_rng(5)
    fmap = torch.from_numpy(rng.permutation(4 * 9 * 10).reshape(4, 9, 10).astype(np.float32))
    cells = random_cells(rng, 9, 10, 30)
    fmap.requires_grad_()
    spp_pool(fmap, cells).sum().backward()
    values = fmap.detach().numpy()
    expected = np.zeros(values.shape)
    pooled = reference_pool(values, cells.numpy(), spp.LEVELS)
    for value in pooled.reshape(-1):  # values are distinct, so each max has one location
        expected[np.nonzero(values == value)] += 1
    np.testing.assert_array_equal(fmap.grad.numpy(), expected)


# ---- pool_windows ------------------------------------------------------------------------------

def multi_scale_maps(rng, factors, image_hw, channels=3, stride=16):
    return [rng.standard_normal((channels, max(1, round(image_hw[0] * f / stride)),
                                 max(1, round(image_hw[1] * f / stride)))).astype(np.float16)
            for f in factors]


@pytest.mark.parametrize("device", DEVICES)
def test_pool_windows_equals_choose_project_pool(tmp_path, device):
    rng = np.random.default_rng(6)
    factors = [480 / 375, 688 / 375, 1200 / 375]
    maps = multi_scale_maps(rng, factors, (375, 500))
    for s, fmap in enumerate(maps):  # memory-mapped float16, as the feature cache stores them
        np.save(tmp_path / f"{s}.npy", fmap, allow_pickle=False)
    mapped = [np.load(tmp_path / f"{s}.npy", mmap_mode="r", allow_pickle=False) for s in range(3)]
    boxes = random_boxes(rng, 300, 500, 375, min_size=8)
    out = pool_windows(mapped, factors, boxes, stride=16, offset=8.0, device=device)
    assert out.dtype == torch.float32 and out.shape == (300, 3 * 50)

    chosen = reference_scales(boxes, factors, 224)
    assert len(set(chosen.tolist())) == 3
    expected = np.empty((len(boxes), 150))
    for r, (box, s) in enumerate(zip(boxes, chosen)):
        scaled = box[None].astype(np.float64) * factors[s]
        cells = reference_project(scaled, 16, 8.0, maps[s].shape[1:])
        expected[r] = reference_pool(maps[s].astype(np.float32), cells, spp.LEVELS)[0]
    np.testing.assert_array_equal(out.cpu().numpy(), expected.astype(np.float32))

    tensors = [torch.from_numpy(m.astype(np.float32)) for m in maps]
    torch.testing.assert_close(pool_windows(tensors, factors, boxes, 16, 8.0, device=device), out)


def test_pool_windows_single_scale_and_empty():
    rng = np.random.default_rng(7)
    maps = multi_scale_maps(rng, [1.0], (200, 300))
    boxes = random_boxes(rng, 40, 300, 200, min_size=2)
    out = pool_windows(maps, [1.0], boxes, stride=16, offset=0.0, levels=(1, 2))
    cells = reference_project(boxes, 16, 0.0, maps[0].shape[1:])
    expected = reference_pool(maps[0], cells, (1, 2)).astype(np.float32)
    np.testing.assert_array_equal(out.numpy(), expected)
    assert pool_windows(maps, [1.0], np.zeros((0, 4)), 16, 0.0).shape == (0, 150)
    with pytest.raises(ValueError, match="scale factors"):
        pool_windows(maps, [1.0, 2.0], boxes, 16, 0.0)


def test_in_place_block_table_equals_the_concatenated_one():
    """The preallocated table (no autograd) holds exactly the tables the differentiable path
    concatenates, for maps as thin as one cell."""
    from sppdet.ops.spp import _concatenated_table, _sparse_table

    generator = torch.Generator().manual_seed(0)
    for height, width in [(1, 1), (5, 7), (3, 40), (17, 2)]:
        hwc = torch.randn(height, width, 4, generator=generator)
        for ky in range(height.bit_length()):
            for kx in range(width.bit_length()):
                table, base, widths = _sparse_table(hwc, ky, kx)
                assert torch.equal(table, _concatenated_table(hwc, ky, kx))
                assert base.shape == (ky + 1, kx + 1) and len(widths) == kx + 1
