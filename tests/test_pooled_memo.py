"""PooledMemo: kept pooled windows and their fc7 vectors are what computing them again gives."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sppdet.models.head import FcHead, fc7_features
from sppdet.workdir.window_source import PooledMemo, head_key


def _counting(head):
    calls = []

    def compute(pooled):
        calls.append(len(pooled))
        return fc7_features(head, pooled)
    return compute, calls


def test_fc7_is_computed_once_per_kept_array_and_head():
    torch.manual_seed(0)
    head, other = FcHead(32, (16, 8), 3), FcHead(32, (16, 8), 3)
    memo = PooledMemo(budget=1e6)
    pooled = memo.put(("image", 1), np.random.default_rng(0).normal(size=(5, 32)).astype(np.float32))
    assert memo.get(("image", 1)) is pooled and not pooled.flags.writeable  # no copy, and nobody can change it
    compute, calls = _counting(head)
    first = memo.fc7(pooled, head_key(head), compute)
    again = memo.fc7(pooled, head_key(head), compute)
    assert again is first and calls == [5]
    np.testing.assert_array_equal(first, fc7_features(head, pooled))
    compute_other, other_calls = _counting(other)
    np.testing.assert_array_equal(memo.fc7(pooled, head_key(other), compute_other), fc7_features(other, pooled))
    assert other_calls == [5] and head_key(head) != head_key(other)


def test_arrays_not_kept_here_are_computed_every_time():
    head = FcHead(32, (16, 8), 3)
    memo = PooledMemo(budget=1e6)
    outside = np.ones((4, 32), np.float32)
    compute, calls = _counting(head)
    memo.fc7(outside, head_key(head), compute)
    memo.fc7(outside.copy(), head_key(head), compute)
    assert calls == [4, 4]


def test_the_budget_bounds_what_is_kept():
    memo = PooledMemo(budget=4 * 32 * 4)  # room for one [4, 32] float32 array
    kept = memo.put(("a",), np.zeros((4, 32), np.float32))
    refused = memo.put(("b",), np.zeros((4, 32), np.float32))
    assert memo.get(("a",)) is kept and memo.get(("b",)) is None and refused.flags.writeable
    assert memo.held == 4 * 32 * 4
    with pytest.raises(ValueError):
        kept[0, 0] = 1.0
