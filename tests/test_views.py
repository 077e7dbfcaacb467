"""Test-time views (sppdet.ops.views) against masks and the box-delta formula."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from cli.eval import eval_command

from sppdet.structures.boxes import decode_deltas, encode_deltas
from sppdet.errors import ConfigError
from sppdet.ops.views import VIEWS, check_views, delta_signs, view_boxes, view_image


@pytest.mark.parametrize("view", list(VIEWS))
def test_view_boxes_follow_the_view_image(view):
    rng = np.random.default_rng(len(view))
    height, width = 29, 47
    for _ in range(6):
        x1, x2 = np.sort(rng.choice(width + 1, 2, replace=False))
        y1, y2 = np.sort(rng.choice(height + 1, 2, replace=False))
        mask = np.zeros((height, width, 3), np.uint8)
        mask[y1:y2, x1:x2] = 1
        rows, cols = np.nonzero(view_image(mask, view)[..., 0])
        np.testing.assert_array_equal(view_boxes([[x1, y1, x2, y2]], (height, width), view),
                                      [[cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]])
    boxes = rng.uniform(0, 28, (5, 4)).astype(np.float32)
    np.testing.assert_allclose(view_boxes(view_boxes(boxes, (height, width), view), (height, width), view), boxes,
                               atol=1e-5)


@pytest.mark.parametrize("view", list(VIEWS))
def test_delta_signs_take_view_deltas_back_to_the_image(view):
    rng = np.random.default_rng(3)
    hw = (200, 300)
    corners, sizes = rng.uniform(10, 150, (8, 2)), rng.uniform(20, 40, (8, 2))
    proposals = np.concatenate([corners, corners + sizes], axis=1)
    targets = proposals + rng.uniform(-5, 5, (8, 4))
    in_view = encode_deltas(view_boxes(proposals, hw, view), view_boxes(targets, hw, view))
    np.testing.assert_allclose(in_view * delta_signs(view), encode_deltas(proposals, targets), atol=1e-5)
    np.testing.assert_allclose(decode_deltas(proposals, in_view * delta_signs(view)), targets, atol=1e-3)


def test_check_views():
    assert check_views(["rot180", "hflip", "rot180"]) == ("rot180", "hflip")
    assert check_views([]) == ()
    with pytest.raises(ConfigError, match="--tta spin: choose from hflip, vflip, rot180"):
        check_views(["hflip", "spin"])


def test_tta_option_names_the_unknown_view(tmp_path):
    result = CliRunner().invoke(eval_command, ["--workdir", str(tmp_path), "--tta", "hflip,spin"])
    assert result.exit_code == 2
    assert "'--tta': spin: choose from hflip, vflip, rot180" in result.output
