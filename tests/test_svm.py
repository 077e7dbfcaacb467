"""sppdet.models.svm: hard-negative mining on synthetic separable features, against slow references
written from SPEC section 8 and R-CNN's rcnn_train.m."""

import dataclasses
import json

import numpy as np
import pytest
from sklearn.metrics import average_precision_score
from sklearn.svm import LinearSVC

from sppdet.config import SvmConfig
from sppdet.errors import ModelError
from sppdet.models.head import FcHead, fc7_features
from sppdet.models.svm import svm_features
from sppdet.models.svm import (
    HardNegativeMiner,
    SvmModel,
    _suppress_overlapping,
    svm_objective,
    train_svms,
)
from sppdet.structures.image_windows import (collect_positives, estimate_feature_scale, extra_positive_boxes,
                                             make_image_windows)

K, D = 3, 32
NAMES = ("cat", "dog", "fox")


def box_iou(p, q):
    iw = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
    ih = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
    inter = iw * ih
    union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter
    return inter / union if union > 0 else 0.0


def nms_loop(boxes, scores, threshold):
    """Greedy NMS in decreasing score, ties in row order; kept rows in ascending order."""
    order = sorted(range(len(boxes)), key=lambda i: (-scores[i], i))
    keep = []
    for i in order:
        if all(box_iou(boxes[i], boxes[j]) <= threshold for j in keep):
            keep.append(i)
    return sorted(keep)


def synth_image(rng, centres, backgrounds, num_proposals=200):
    """GT boxes of random classes, proposals jittered around them and scattered; a window's
    feature is its class centre when it covers an object (IoU >= 0.5), else a background mode."""
    g = int(rng.integers(1, 4))
    labels = rng.integers(1, K + 1, g)
    xy = rng.uniform(0, 150, (g, 2))
    gt = np.concatenate([xy, xy + rng.uniform(30, 60, (g, 2))], axis=1).astype(np.float32)
    near = gt[rng.integers(0, g, num_proposals // 2)]
    wh = (near[:, 2:] - near[:, :2])[:, [0, 1, 0, 1]]
    near = near + rng.uniform(-0.4, 0.4, near.shape) * wh
    xy = rng.uniform(0, 180, (num_proposals - len(near), 2))
    scattered = np.concatenate([xy, xy + rng.uniform(10, 80, xy.shape)], axis=1)
    proposals = np.concatenate([near, scattered]).astype(np.float32)
    proposals[:, 2:] = np.maximum(proposals[:, 2:], proposals[:, :2] + 4)
    boxes = np.concatenate([gt, proposals])
    iou = np.array([[box_iou(b, q) for q in gt] for b in boxes])
    best = iou.argmax(axis=1)
    covered = iou.max(axis=1) >= 0.5
    feats = backgrounds[rng.integers(0, len(backgrounds), len(boxes))]
    feats[covered] = centres[labels[best[covered]] - 1]
    feats = feats + rng.normal(0, 1.0, feats.shape)
    return make_image_windows(feats.astype(np.float32), gt, labels, proposals, K)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, (K, D))
    backgrounds = rng.normal(0, 3, (6, D))
    train = [synth_image(rng, centres, backgrounds) for _ in range(50)]
    test = [synth_image(rng, centres, backgrounds) for _ in range(20)]
    return train, test


def negatives_of(windows, k):
    return (windows.gt_labels == 0) & (windows.overlaps[:, k] < 0.3)


def run_miner(images, config, feature_scale=None):
    pos, labels = collect_positives(images)
    miner = HardNegativeMiner(pos, labels, K, config, feature_scale)
    sizes = []
    for windows in images:
        miner.add_image(windows)
        sizes.append([len(miner.negatives(k)) for k in range(K)])
    return miner, miner.finish(NAMES), np.array(sizes)


def test_make_image_windows_matches_loop():
    rng = np.random.default_rng(1)
    gt = np.array([[0, 0, 50, 50], [40, 40, 90, 90], [10, 10, 30, 30], [60, 0, 99, 40]], np.float32)
    gt_labels = np.array([1, 2, 1, -1])
    difficult = np.array([False, False, True, False])
    xy = rng.uniform(0, 80, (30, 2))
    proposals = np.concatenate([xy, xy + rng.uniform(5, 40, (30, 2))], axis=1).astype(np.float32)
    feats = rng.normal(size=(34, 5)).astype(np.float32)
    for use_difficult in (True, False):
        w = make_image_windows(feats, gt, gt_labels, proposals, 2, difficult, use_difficult)
        kept_gt = [0, 1, 2] if use_difficult else [0, 1]
        rows = kept_gt + list(range(4, 34))
        np.testing.assert_array_equal(w.features, feats[rows])
        np.testing.assert_array_equal(w.gt_labels, list(gt_labels[kept_gt]) + [0] * 30)
        all_boxes = np.concatenate([gt, proposals])[rows]
        for r, b in enumerate(all_boxes):
            for k in (1, 2):
                expected = max([box_iou(b, gt[g]) for g in range(3) if gt_labels[g] == k])
                assert w.overlaps[r, k - 1] == pytest.approx(expected, abs=1e-6)
        np.testing.assert_array_equal(w.gt_classes, [1, 2, 1])


def test_extra_positive_boxes_match_a_loop_reference():
    rng = np.random.default_rng(4)
    gt = np.array([[0, 0, 50, 50], [40, 40, 90, 90], [10, 10, 30, 30], [60, 0, 99, 40]], np.float32)
    gt_labels = np.array([1, 2, 1, -1])
    difficult = np.array([False, False, True, False])
    jitter = rng.normal(0, 3, (200, 4)).astype(np.float32)
    proposals = np.repeat(gt, 50, axis=0) + jitter  # many near each box, some below 0.7
    proposals[:, 2:] = np.maximum(proposals[:, 2:], proposals[:, :2] + 1)
    boxes, labels = extra_positive_boxes(gt, gt_labels, difficult, proposals, 0.7, 6, np.random.default_rng(0))
    again = extra_positive_boxes(gt, gt_labels, difficult, proposals, 0.7, 6, np.random.default_rng(0))
    assert np.array_equal(boxes, again[0]) and np.array_equal(labels, again[1])
    # reference: each proposal's best box (first on ties); eligible if IoU >= 0.7 to a usable box
    eligible = {}
    for p, box in enumerate(proposals):
        ious = [box_iou(box, g) for g in gt]
        owner = int(np.argmax(ious))
        if ious[owner] >= 0.7 and gt_labels[owner] > 0 and not difficult[owner]:
            eligible.setdefault(owner, set()).add(tuple(box))
    assert set(eligible) == {0, 1}
    chosen = {tuple(b): label for b, label in zip(boxes, labels)}
    for owner, candidates in eligible.items():
        mine = [b for b in chosen if b in candidates]
        assert len(mine) == min(6, len(candidates))
        assert all(chosen[b] == gt_labels[owner] for b in mine)
    assert len(chosen) == len(boxes) == sum(min(6, len(c)) for c in eligible.values())
    assert boxes.dtype == np.float32 and labels.dtype == np.int64
    empty = extra_positive_boxes(gt, gt_labels, difficult, proposals, 0.7, 0, np.random.default_rng(0))
    assert empty[0].shape == (0, 4) and empty[1].shape == (0,)
    none = extra_positive_boxes(gt[:0], gt_labels[:0], difficult[:0], proposals, 0.7, 3, np.random.default_rng(0))
    assert none[0].shape == (0, 4)


def test_svm_features_of_each_layer():
    head = FcHead(6, (4, 3), 2)
    pooled = np.random.default_rng(0).normal(size=(5, 6)).astype(np.float32)
    fc7 = fc7_features(head, pooled)
    assert svm_features("pool5", pooled, head) is pooled
    np.testing.assert_array_equal(svm_features("fc7", pooled, head), fc7)
    both = svm_features("pool5+fc7", pooled, head, 2.5)
    assert both.shape == (5, 9)
    np.testing.assert_array_equal(both[:, :6], pooled)
    np.testing.assert_allclose(both[:, 6:], 2.5 * fc7, rtol=1e-6)


def test_feature_scale_gives_mean_norm_20():
    rng = np.random.default_rng(2)
    batches = [rng.normal(size=(n, 8)) for n in (5, 17)]
    scale = estimate_feature_scale(batches)
    norms = np.linalg.norm(np.concatenate(batches) * scale, axis=1)
    assert norms.mean() == pytest.approx(20.0)
    with pytest.raises(ModelError, match="all zero"):
        estimate_feature_scale([np.zeros((3, 8))])


def test_objective_matches_loop():
    rng = np.random.default_rng(3)
    pos, neg = rng.normal(size=(7, 6)), rng.normal(size=(11, 6))
    w, b = rng.normal(size=6), 0.7
    cfg = SvmConfig()
    pos_loss = sum(cfg.C * cfg.positive_weight * max(0.0, 1 - (x @ w + b)) for x in pos)
    neg_loss = sum(cfg.C * max(0.0, 1 + (x @ w + b)) for x in neg)
    reg = 0.5 * sum(v * v for v in w) + 0.5 * (b / cfg.bias_feature) ** 2
    got = svm_objective(w, b, pos, neg, cfg)
    assert got.pos == pytest.approx(pos_loss) and got.neg == pytest.approx(neg_loss)
    assert got.reg == pytest.approx(reg) and got.total == pytest.approx(pos_loss + neg_loss + reg)


def test_suppress_overlapping_matches_loop_with_ties():
    rng = np.random.default_rng(4)
    xy = rng.uniform(0, 50, (60, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(20, 40, (60, 2))], axis=1).astype(np.float32)
    for scores in (rng.normal(size=60), np.round(rng.normal(size=60)), np.zeros(60)):
        expected = nms_loop(boxes, scores, 0.7)
        np.testing.assert_array_equal(_suppress_overlapping(boxes, scores.astype(np.float32), 0.7),
                                      expected)
    assert len(_suppress_overlapping(boxes, np.zeros(60, np.float32), 1.0)) == 60


def test_first_image_adds_all_negatives_later_ones_only_hard_ones(data):
    train, _ = data
    pos, labels = collect_positives(train)
    miner = HardNegativeMiner(pos, labels, K, SvmConfig(retrain_every=10**9), feature_scale=0.5)
    miner.add_image(train[0])
    for k in range(K):
        rows = np.flatnonzero(negatives_of(train[0], k))
        assert miner.added[k] == len(nms_loop(train[0].boxes[rows], np.zeros(len(rows)), 0.7))
    assert all(miner.retrains == 1)
    for windows in train[1:4]:
        scores = (windows.features * np.float32(0.5)) @ miner.weights + miner.biases
        before = miner.added.copy()
        miner.add_image(windows)
        for k in range(K):
            rows = np.flatnonzero(negatives_of(windows, k) & (scores[:, k] > -1.0001))
            expected = nms_loop(windows.boxes[rows], scores[rows, k], 0.7)
            assert 0 < len(expected) < negatives_of(windows, k).sum() / 2
            assert miner.added[k] - before[k] == len(expected)


def test_mining_is_bounded_evicts_and_separates(data):
    train, test = data
    config = SvmConfig(retrain_every=300)
    miner, reports, sizes = run_miner(train, config)
    streamed = [sum(negatives_of(w, k).sum() for w in train) for k in range(K)]
    for k, report in enumerate(reports):
        assert report.peak_negatives == max(sizes[:, k].max(), report.peak_negatives)
        assert report.peak_negatives < streamed[k] / 4
        assert report.negatives_added > report.negatives >= len(miner.negatives(k))
        cached = miner.negatives(k)
        assert len(cached) and np.all(cached @ miner.weights[:, k] + miner.biases[k] >= -1.2)
        assert report.objective is not None and report.retrains >= 2
    model = SvmModel(miner.weights, miner.biases, miner.feature_scale, NAMES, {})
    for k in range(K):
        scores = np.concatenate([model.scores(w.features)[:, k] for w in test])
        positive = np.concatenate([w.gt_labels == k + 1 for w in test])
        negative = np.concatenate([negatives_of(w, k) for w in test])
        ap = average_precision_score(positive[positive | negative], scores[positive | negative])
        assert ap > 0.98, (NAMES[k], ap)


def test_retrain_count_follows_the_rule(data):
    train, _ = data
    config = SvmConfig(retrain_every=500, hard_threshold=-np.inf, evict_threshold=-np.inf,
                       negative_nms=1.0)
    miner, reports, _ = run_miner(train, config)
    for k in range(K):
        counts = [int(negatives_of(w, k).sum()) for w in train]
        expected, since = 1, 0
        for count in counts[1:]:
            since += count
            if since > 500:
                expected, since = expected + 1, 0
        expected += since > 0
        assert reports[k].retrains == expected
        assert reports[k].negatives == reports[k].negatives_added == sum(counts)


def test_without_mining_equals_direct_linear_svc(data):
    train, _ = data
    images = train[:15]
    config = SvmConfig(retrain_every=10**9, hard_threshold=-np.inf, evict_threshold=-np.inf,
                       negative_nms=1.0, tol=1e-6)
    pos, labels = collect_positives(images)
    model, reports = train_svms(pos, labels, images, NAMES, config, feature_scale=0.5)
    for k in range(K):
        x_pos = pos[labels == k + 1] * np.float32(0.5)
        x_neg = np.concatenate([w.features[negatives_of(w, k)] for w in images]) * np.float32(0.5)
        svc = LinearSVC(loss="hinge", C=1e-3, class_weight={1: 2.0}, intercept_scaling=10,
                        tol=1e-6, random_state=0)
        svc.fit(np.concatenate([x_pos, x_neg]).astype(np.float64),
                np.r_[np.ones(len(x_pos)), -np.ones(len(x_neg))])
        np.testing.assert_allclose(model.weights[:, k], svc.coef_[0], rtol=1e-5, atol=1e-6)
        assert model.biases[k] == pytest.approx(svc.intercept_[0], abs=1e-5)
        expected = svm_objective(svc.coef_[0], svc.intercept_[0], x_pos, x_neg, config)
        assert reports[k].objective.total == pytest.approx(expected.total, rel=1e-5)


def test_class_without_positives_never_fires(data):
    train, _ = data
    pos, labels = collect_positives(train[:5])
    labels = np.where(labels == 3, 1, labels)
    model, reports = train_svms(pos, labels, train[:5], NAMES, SvmConfig())
    assert reports[2].positives == 0 and reports[2].negatives_added == 0
    assert not model.weights[:, 2].any() and model.biases[2] == -1.0


def test_empty_images_are_skipped_and_no_windows_is_an_error(data):
    train, _ = data
    pos, labels = collect_positives(train[:3])
    empty = make_image_windows(np.zeros((0, D), np.float32), np.zeros((0, 4)), [], [], K)
    model, reports = train_svms(pos, labels, [empty] + train[:3], NAMES, SvmConfig())
    assert all(r.negatives > 0 for r in reports) and np.isfinite(model.weights).all()
    with pytest.raises(ModelError, match="no windows"):
        train_svms(pos, labels, [empty], NAMES, SvmConfig())
    with pytest.raises(ModelError, match="no windows"):
        train_svms(pos, labels, [], NAMES, SvmConfig(), feature_scale=1.0)


def test_save_load_round_trip_and_feature_check(data, tmp_path):
    train, _ = data
    pos, labels = collect_positives(train[:5])
    calls = []
    model, _ = train_svms(pos, labels, train[:5], NAMES, SvmConfig(), feature_hash="abc123",
                          progress=lambda advance, **fields: calls.append((advance, fields)))
    assert len(calls) == 5 and all(a == 1 and f["negatives"] > 0 for a, f in calls)
    path = tmp_path / "svm.npz"
    model.save(path)
    loaded = SvmModel.load(path, feature_hash="abc123", feature_dim=D)
    np.testing.assert_array_equal(loaded.weights, model.weights)
    np.testing.assert_array_equal(loaded.biases, model.biases)
    assert loaded.feature_scale == model.feature_scale and loaded.class_names == NAMES
    assert loaded.metadata["config"] == json.loads(json.dumps(dataclasses.asdict(SvmConfig())))  # tuples as lists
    with pytest.raises(ModelError, match=r"svm.npz: trained on features abc123, these are ffff.*re-run"):
        SvmModel.load(path, feature_hash="ffff")
    with pytest.raises(ModelError, match="32-d.*64-d"):
        SvmModel.load(path, feature_dim=64)
    with pytest.raises(ModelError, match="train-svm"):
        SvmModel.load(tmp_path / "missing.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ModelError, match="bad.npz: cannot read"):
        SvmModel.load(tmp_path / "bad.npz")
