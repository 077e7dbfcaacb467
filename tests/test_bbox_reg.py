"""sppdet.models.bbox_reg: example selection, ridge solver and regressors against references written
from SPEC section 9 and R-CNN's rcnn_train_bbox_regressor.m."""

import numpy as np
import pytest
from sklearn.linear_model import Ridge

from sppdet.models.bbox_reg import (
    BboxRegressor,
    _Reservoir,
    fit_ridge,
    select_examples,
    train_bbox_regressors,
)
from sppdet.structures.boxes import encode_deltas, iou_matrix
from sppdet.config import BboxRegConfig, SvmConfig
from sppdet.errors import ModelError
from sppdet.models.svm import SvmModel
from sppdet.structures.image_windows import make_image_windows

K, D = 2, 64
NAMES = ("cat", "dog")


def box_iou(p, q):
    iw = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
    ih = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
    inter = iw * ih
    return inter / ((p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter)


def jittered_image(rng, mixes, offsets, num_proposals=40):
    """Proposals jittered from GT by known deltas t; a window's feature encodes its deltas to its
    object through that class's linear mix (+ a class offset and noise)."""
    g = int(rng.integers(1, 4))
    labels = rng.integers(1, K + 1, g)
    xy = rng.uniform(0, 200, (g, 2))
    gt = np.concatenate([xy, xy + rng.uniform(40, 100, (g, 2))], axis=1).astype(np.float32)
    owner = rng.integers(0, g, num_proposals)
    t = rng.normal(0, [0.08, 0.08, 0.12, 0.12], (num_proposals, 4))
    gw, gh = gt[owner, 2] - gt[owner, 0], gt[owner, 3] - gt[owner, 1]
    gx, gy = gt[owner, 0] + gw / 2, gt[owner, 1] + gh / 2
    pw, ph = gw / np.exp(t[:, 2]), gh / np.exp(t[:, 3])
    px, py = gx - t[:, 0] * pw, gy - t[:, 1] * ph
    proposals = np.stack([px - pw / 2, py - ph / 2, px + pw / 2, py + ph / 2], 1).astype(np.float32)
    deltas = np.concatenate([np.zeros((g, 4)), t])
    label_of_row = np.concatenate([labels, labels[owner]]) - 1
    feats = np.einsum("ri,rid->rd", deltas, mixes[label_of_row]) + offsets[label_of_row]
    feats += rng.normal(0, 0.02, feats.shape)
    return make_image_windows(feats.astype(np.float32), gt, labels, proposals, K)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    mixes, offsets = rng.normal(0, 1, (K, 4, D)), rng.normal(0, 0.3, (K, D))
    train = [jittered_image(rng, mixes, offsets) for _ in range(60)]
    test = [jittered_image(rng, mixes, offsets) for _ in range(20)]
    return train, test


def select_loop(windows, min_overlap):
    rows, labels, targets = [], [], []
    for r, box in enumerate(windows.boxes):
        ious = [box_iou(box, g) for g in windows.gt_boxes]
        best = int(np.argmax(ious))
        if ious[best] > min_overlap + 1e-6:
            rows.append(r)
            labels.append(windows.gt_classes[best])
            targets.append(encode_deltas(box[None], windows.gt_boxes[best][None])[0])
    return rows, labels, targets


def test_select_examples_matches_loop_and_threshold_edges():
    gt = np.array([[0, 0, 100, 100], [100, 0, 200, 70], [300, 0, 400, 80], [300, 0, 400, 100]],
                  np.float32)
    proposals = np.array([[0, 0, 100, 59], [0, 0, 100, 60], [0, 0, 100, 61],
                          [100, 0, 200, 41], [100, 0, 200, 42], [100, 0, 200, 43],
                          [300, 0, 400, 85], [300, 0, 400, 95], [500, 500, 550, 550]], np.float32)
    feats = np.zeros((len(gt) + len(proposals), 3), np.float32)
    windows = make_image_windows(feats, gt, [1, 2, 2, 1], proposals, 2)
    rows, labels, targets = select_examples(windows, 0.6)
    # IoU exactly 0.6 (60/100, 42/70) is not > 0.6; overlapping boxes of two classes: the best wins.
    np.testing.assert_array_equal(rows, [0, 1, 2, 3, 6, 9, 10, 11])
    np.testing.assert_array_equal(labels, [1, 2, 2, 1, 1, 2, 2, 1])
    expected = select_loop(windows, 0.6)
    np.testing.assert_array_equal(rows, expected[0])
    np.testing.assert_allclose(targets, expected[2], atol=1e-6)
    np.testing.assert_allclose(targets[:4], 0.0, atol=1e-7)


def test_select_examples_random_matches_loop(data):
    train, _ = data
    for windows in train[:5]:
        for threshold in (0.5, 0.6, 0.7):
            rows, labels, targets = select_examples(windows, threshold)
            expected = select_loop(windows, threshold)
            np.testing.assert_array_equal(rows, expected[0])
            np.testing.assert_array_equal(labels, expected[1])
            np.testing.assert_allclose(targets, np.reshape(expected[2], (-1, 4)), atol=1e-6)


@pytest.mark.parametrize("n", [20, 150])
def test_fit_ridge_matches_sklearn(n):
    rng = np.random.default_rng(n)
    x, y = rng.normal(size=(n, 50)) * 3 + 1, rng.normal(size=(n, 4))
    w, b = fit_ridge(x, y, 7.0)
    reference = Ridge(alpha=7.0, fit_intercept=True, solver="cholesky").fit(x, y)
    np.testing.assert_allclose(w, reference.coef_.T, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(b, reference.intercept_, rtol=1e-6, atol=1e-9)


def test_reservoir_is_bounded_and_uniform():
    rng = np.random.default_rng(0)
    reservoir = _Reservoir(100, rng)
    for start in range(0, 10_000, 37):
        ids = np.arange(start, min(start + 37, 10_000), dtype=np.float32)
        reservoir.add(ids[:, None], np.repeat(ids[:, None], 4, axis=1))
    x, y = reservoir.arrays()
    assert reservoir.seen == 10_000 and x.shape == (100, 1) and len(np.unique(x)) == 100
    np.testing.assert_array_equal(y[:, 0], x[:, 0])
    assert 3_500 < x.mean() < 6_500 and x.min() < 2_000 and x.max() > 8_000
    small = _Reservoir(100, rng)
    small.add(np.arange(30, dtype=np.float32)[:, None], np.zeros((30, 4)))
    np.testing.assert_array_equal(small.arrays()[0][:, 0], np.arange(30))


def mean_iou(boxes, windows_rows):
    return np.mean([iou_matrix(b[None], g[None])[0, 0] for b, g in zip(boxes, windows_rows)])


def test_regression_moves_boxes_closer(data):
    train, test = data
    model, reports = train_bbox_regressors(train, NAMES, BboxRegConfig(min_overlap=0.5))
    assert all(r.used == r.examples > 0 and r.rms_after < 0.5 * r.rms_before for r in reports)
    before, after, swapped = [], [], []
    for windows in test:
        proposal = windows.gt_labels == 0
        iou = iou_matrix(windows.boxes[proposal], windows.gt_boxes)
        owner = iou.argmax(axis=1)
        labels = windows.gt_classes[owner]
        feats, boxes = windows.features[proposal], windows.boxes[proposal]
        targets = windows.gt_boxes[owner]
        before.append(iou.max(axis=1))
        after.append(np.diag(iou_matrix(model.predict(feats, boxes, labels), targets)))
        swapped.append(np.diag(iou_matrix(model.predict(feats, boxes, 3 - labels), targets)))
    before, after, swapped = map(np.concatenate, (before, after, swapped))
    assert after.mean() > before.mean() + 0.1 and after.mean() > 0.9
    assert swapped.mean() < after.mean() - 0.1
    np.testing.assert_array_equal(model.predict(feats, boxes, 0), boxes)


def test_cap_limits_examples(data):
    train, _ = data
    _, reports = train_bbox_regressors(train, NAMES, BboxRegConfig(max_examples_per_class=25))
    assert all(r.used == 25 < r.examples for r in reports)


def test_no_windows_is_an_error():
    empty = make_image_windows(np.zeros((0, D), np.float32), np.zeros((0, 4)), [], [], K)
    with pytest.raises(ModelError, match="no windows"):
        train_bbox_regressors([empty], NAMES)


def test_save_load_round_trip_and_feature_check(data, tmp_path):
    train, _ = data
    model, _ = train_bbox_regressors(train[:10], NAMES, feature_hash="conv5-abc")
    path = tmp_path / "bbox.npz"
    model.save(path)
    loaded = BboxRegressor.load(path, feature_hash="conv5-abc", feature_dim=D)
    np.testing.assert_array_equal(loaded.weights, model.weights)
    np.testing.assert_array_equal(loaded.biases, model.biases)
    assert loaded.feature_scale == model.feature_scale and loaded.class_names == NAMES
    assert loaded.metadata["config"]["ridge_lambda"] == 1000.0
    with pytest.raises(ModelError, match=r"bbox.npz: trained on features conv5-abc, these are "
                                         r"conv5-xyz; re-run `sppdet train-bbox`"):
        BboxRegressor.load(path, feature_hash="conv5-xyz")
    with pytest.raises(ModelError, match="holds a 'bbox_reg' model"):
        SvmModel.load(path)
    SvmModel(np.zeros((D, K), np.float32), np.zeros(K, np.float32), 1.0, NAMES,
             {"config": SvmConfig()}).save(tmp_path / "svm.npz")
    with pytest.raises(ModelError, match="holds a 'svm' model"):
        BboxRegressor.load(tmp_path / "svm.npz")
