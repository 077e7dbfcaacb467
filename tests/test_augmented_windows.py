"""Transformed copies of objects (sppdet.models.object_copies) against references from their definition."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from sppdet.models.object_copies import (MARGIN, Copy, augmented_windows, chip_region, draw_copies,
                                      geometric_transforms, pooled_copies)
from sppdet.models.backbones import Backbone, Preprocessing, build_backbone
from sppdet.errors import ConfigError
from sppdet.models.features import compute_features
from sppdet.ops.spp import pool_windows
from sppdet.ops.views import transform_boxes, transform_image

ALL_PAIRS = [(k, f) for f in (False, True) for k in range(4)]


@pytest.mark.parametrize("turns, flip", ALL_PAIRS)
def test_transformed_boxes_follow_the_transformed_image(turns, flip):
    rng = np.random.default_rng(turns + 4 * flip)
    height, width = 37, 53
    for _ in range(5):
        x1, x2 = np.sort(rng.choice(width + 1, 2, replace=False))
        y1, y2 = np.sort(rng.choice(height + 1, 2, replace=False))
        mask = np.zeros((height, width), bool)
        mask[y1:y2, x1:x2] = True
        moved = transform_image(mask, turns, flip)
        rows, cols = np.nonzero(moved)
        expected = [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
        got = transform_boxes(np.array([[x1, y1, x2, y2]]), (height, width), turns, flip)[0]
        np.testing.assert_array_equal(got, expected)


def test_transform_counts_and_channel_orders():
    assert geometric_transforms(()) == []
    assert len(geometric_transforms(("flip",))) == 1
    assert len(geometric_transforms(("rot90",))) == 3
    assert len(geometric_transforms(("flip", "rot90"))) == 7
    assert geometric_transforms(("channels",)) == [(0, False)]
    copies = draw_copies(("channels", "flip", "rot90"), 3, np.random.default_rng(0))
    assert [len(c) for c in copies] == [7, 7, 7]
    assert all(c.channels != (0, 1, 2) and sorted(c.channels) == [0, 1, 2] for row in copies for c in row)
    again = draw_copies(("channels", "flip", "rot90"), 3, np.random.default_rng(0))
    assert copies == again
    with pytest.raises(ConfigError, match="--augment-positives shear"):
        draw_copies(("flip", "shear"), 1, np.random.default_rng(0))


def test_chip_region_snaps_to_the_stride_and_clips():
    assert chip_region(np.array([100.0, 50.0, 140.0, 90.0]), (200, 300), 40, 16) == (48, 0, 180, 130)
    assert chip_region(np.array([250.0, 150.0, 290.0, 190.0]), (200, 300), 40, 16) == (208, 96, 300, 200)


def test_untransformed_chip_pools_like_the_whole_image_map():
    """With a margin past zf5's receptive field (96 px) the chip's conv5 cells under the window
    are those of the whole image: the pooled vector matches the cached one (float16) at the scale
    pool_windows picks; the default margin comes close."""
    net = build_backbone("zf5", 0.25, "none", seed=0)
    rng = np.random.default_rng(1)
    bgr = rng.integers(0, 256, (150, 210, 3), dtype=np.uint8)
    bgr = np.ascontiguousarray(np.repeat(np.repeat(bgr[::6, ::6], 6, 0), 6, 1)[:150, :210])
    boxes = np.array([[10, 12, 70, 60], [100, 40, 200, 140], [60, 80, 95, 130]], np.float32)
    scales = (150, 300)
    maps, factors = compute_features(net, bgr, scales)
    cached = pool_windows(maps, factors, boxes, net.stride, net.offset, target=96).numpy()
    pooled, owner = pooled_copies(net, bgr, boxes, [[Copy()]] * len(boxes), scales, target=96, margin=96)
    np.testing.assert_array_equal(owner, [0, 1, 2])
    np.testing.assert_allclose(pooled, cached, rtol=0, atol=2e-3 * np.abs(cached).max())
    near, _ = pooled_copies(net, bgr, boxes, [[Copy()]] * len(boxes), scales, target=96)
    assert MARGIN < 96
    errors = np.linalg.norm(near - cached, axis=1) / np.linalg.norm(cached, axis=1)
    assert errors.max() < 0.05, errors


def _pointwise_backbone() -> Backbone:
    """A stride-1 trunk that returns its (preprocessed) input: copies of a window must then hold
    the original's pyramid bins moved as the image moved."""
    trunk = nn.Sequential(nn.Conv2d(3, 3, 1, bias=False))
    with torch.no_grad():
        trunk[0].weight.copy_(torch.eye(3)[:, :, None, None])
    return Backbone("pointwise", trunk, stride=1, channels=3, offset=0.5,
                    preprocessing=Preprocessing("BGR", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
                    weights_id="none", weights_source="test")


def _bins(vector: np.ndarray, levels=(1, 2, 3, 6), channels: int = 3) -> list[np.ndarray]:
    out, start = [], 0
    for n in levels:
        out.append(vector[start:start + channels * n * n].reshape(channels, n, n))
        start += channels * n * n
    return out


def test_copies_hold_the_bins_turned_flipped_and_recoloured():
    net = _pointwise_backbone()
    rng = np.random.default_rng(2)
    bgr = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    box = np.array([[11, 7, 53, 37]], np.float32)  # 42 x 30 cells: every level divides evenly
    copies = [[Copy(k, f, order) for (k, f), order in zip(ALL_PAIRS, [(0, 1, 2), (2, 1, 0), (1, 0, 2),
                                                                       (0, 2, 1), (1, 2, 0), (2, 0, 1),
                                                                       (0, 1, 2), (2, 1, 0)])]]
    pooled, owner = pooled_copies(net, bgr, box, copies, scales=(60,), target=40)
    assert (owner == 0).all()
    original = _bins(pooled[0])
    for vector, copy in zip(pooled, copies[0]):
        for level, bins in zip(original, _bins(vector)):
            expected = level[:, :, ::-1] if copy.flip else level
            expected = np.rot90(expected, copy.turns, axes=(1, 2))[list(copy.channels)]
            np.testing.assert_array_equal(bins, expected)


def test_augmented_windows_are_seeded_and_shaped():
    net = build_backbone("zf5", 0.25, "none", seed=0)
    bgr = np.random.default_rng(3).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    boxes = np.array([[10, 10, 60, 70], [80, 30, 150, 110]], np.float32)
    first, owner = augmented_windows(net, bgr, boxes, (120, 240), ("flip", "rot90", "channels"),
                                     np.random.default_rng(5), target=96)
    again, _ = augmented_windows(net, bgr, boxes, (120, 240), ("flip", "rot90", "channels"),
                                 np.random.default_rng(5), target=96)
    assert first.shape == (14, 64 * 50) and first.dtype == np.float32
    np.testing.assert_array_equal(owner, [0] * 7 + [1] * 7)
    np.testing.assert_array_equal(first, again)
    assert np.isfinite(first).all()
    empty, none = augmented_windows(net, bgr, boxes[:0], (120,), ("flip",), np.random.default_rng(0))
    assert empty.shape == (0, 64 * 50) and none.shape == (0,)
