"""The fc head: window labelling against a loop, sampling, batching, learning, save/load."""

import numpy as np
import pytest
import torch

from sppdet.models import head as H
from sppdet.structures.boxes import iou_matrix
from sppdet.errors import ModelError


def label_loop(windows, gt, gt_labels, fg=0.5, bg=(0.1, 0.5)):
    out = []
    for w in windows:
        ious = [iou_matrix([w], [g])[0, 0] for g in gt]
        best = int(np.argmax(ious))
        if ious[best] >= fg:
            out.append(gt_labels[best])
        elif bg[0] <= ious[best] < bg[1]:
            out.append(0)
        else:
            out.append(-1)
    return out


def test_label_windows_matches_loop_and_thresholds():
    gt = np.array([[0, 0, 10, 10], [50, 50, 80, 90]], np.float32)
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 80, (200, 2))
    windows = np.concatenate([xy, xy + rng.uniform(2, 40, (200, 2))], 1).astype(np.float32)
    # exactly at thresholds: IoU 0.5 -> foreground, IoU 0.1 -> background
    windows = np.concatenate([windows, [[0, 0, 10, 5], [0, 0, 10, 1]]]).astype(np.float32)
    labels = H.label_windows(windows, gt, np.array([3, 1]))
    assert labels.tolist() == label_loop(windows, gt, [3, 1])
    assert labels[-2] == 3 and labels[-1] == 0


def test_sample_windows_fraction():
    labels = np.array([1] * 10 + [0] * 100 + [-1] * 50)
    idx = H.sample_windows(labels, 32, 0.25, np.random.default_rng(0))
    assert len(idx) == 32 and (labels[idx] > 0).sum() == 8 and (labels[idx] >= 0).all()
    few_fg = H.sample_windows(np.array([2] + [0] * 5), 32, 0.25, np.random.default_rng(0))
    assert sorted(few_fg.tolist()) == list(range(6))


def test_iterate_minibatches_rechunks_everything():
    images = [(np.full((n, 2), i, np.float32), np.full(n, i)) for i, n in enumerate([5, 7, 1, 9])]
    batches = list(H.iterate_minibatches(iter(images), 8))
    assert [len(y) for _, y in batches] == [8, 8, 6]
    np.testing.assert_array_equal(np.concatenate([y for _, y in batches]),
                                  np.concatenate([y for _, y in images]))


def test_train_head_learns_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, (3, 16)).astype(np.float32)
    y = rng.integers(0, 3, 600)
    x = (centres[y] + rng.normal(0, 1, (600, 16))).astype(np.float32)
    torch.manual_seed(0)
    head = H.FcHead(16, (32, 32), num_classes=2, dropout=0.1)
    batches = lambda epoch: H.iterate_minibatches(iter([(x, y)]), 64)  # noqa: E731
    history = H.train_head(head, batches, epochs=8, lr=0.05)
    assert history[-1].accuracy > 0.9 and history[-1].mean_loss < history[0].mean_loss
    path = tmp_path / "head.pt"
    H.save_head(path, head, {"feature_hash": "abc"})
    loaded, meta = H.load_head(path, expected_in_dim=16)
    assert meta["feature_hash"] == "abc"
    np.testing.assert_allclose(H.fc7_features(loaded, x), H.fc7_features(head, x), rtol=1e-6)
    with pytest.raises(ModelError, match="expects 16-d"):
        H.load_head(path, expected_in_dim=12)
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(ModelError, match="junk.pt"):
        H.load_head(tmp_path / "junk.pt")
