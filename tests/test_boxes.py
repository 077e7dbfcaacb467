"""sppdet.structures.boxes against slow loop references written from the convention and SPEC section 9."""

import numpy as np
import pytest

from sppdet.structures import boxes as B


def random_boxes(rng, n, size=100.0):
    xy = rng.uniform(0, size, (n, 2))
    wh = rng.uniform(1, size / 2, (n, 2))
    return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


def iou_loop(a, b):
    out = np.zeros((len(a), len(b)))
    for i, p in enumerate(a):
        for j, q in enumerate(b):
            iw = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
            ih = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
            inter = iw * ih
            union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter
            out[i, j] = inter / union if union > 0 else 0.0
    return out


def nms_loop(boxes, scores, threshold):
    order = sorted(range(len(boxes)), key=lambda i: -scores[i])
    keep = []
    for i in order:
        if all(iou_loop(boxes[i : i + 1], boxes[k : k + 1])[0, 0] <= threshold for k in keep):
            keep.append(i)
    return keep


def test_iou_matches_loop():
    rng = np.random.default_rng(0)
    a, b = random_boxes(rng, 17), random_boxes(rng, 9)
    np.testing.assert_allclose(B.iou_matrix(a, b), iou_loop(a, b), rtol=1e-5, atol=1e-6)


def test_iou_empty_and_degenerate():
    assert B.iou_matrix(np.zeros((0, 4)), random_boxes(np.random.default_rng(1), 3)).shape == (0, 3)
    degenerate = np.array([[5, 5, 5, 5]], dtype=np.float32)
    assert B.iou_matrix(degenerate, degenerate)[0, 0] == 0.0


def test_iou_equals_devkit_plus_one_convention():
    # VOC 1-based inclusive boxes, devkit IoU with +1 widths ...
    voc_a, voc_b = (1, 1, 10, 10), (6, 1, 15, 10)
    iw = min(voc_a[2], voc_b[2]) - max(voc_a[0], voc_b[0]) + 1
    ih = min(voc_a[3], voc_b[3]) - max(voc_a[1], voc_b[1]) + 1
    ua = (10 * 10) * 2 - iw * ih
    # ... equals ours on the converted continuous boxes (xmin - 1, ymin - 1, xmax, ymax).
    to_ours = lambda v: [v[0] - 1, v[1] - 1, v[2], v[3]]  # noqa: E731
    assert B.iou_matrix([to_ours(voc_a)], [to_ours(voc_b)])[0, 0] == pytest.approx(iw * ih / ua)


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_nms_matches_loop(threshold):
    rng = np.random.default_rng(2)
    boxes = random_boxes(rng, 60, size=60)
    scores = rng.permutation(60).astype(np.float32)
    assert B.nms(boxes, scores, threshold).tolist() == nms_loop(boxes, scores, threshold)


def test_nms_at_exact_threshold():
    # IoU of [0,0,10,10] with [0,0,10,5] is exactly 0.5 in floating point.
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 5], [0, 0, 10, 5.01]], dtype=np.float32)
    scores = np.array([3, 2, 1], dtype=np.float32)
    assert B.iou_matrix(boxes[:1], boxes[1:2])[0, 0] == 0.5
    assert B.nms(boxes[:2], scores[:2], 0.5).tolist() == [0, 1]  # == threshold: kept
    assert B.iou_matrix(boxes[:1], boxes[2:])[0, 0] > 0.5
    assert B.nms(boxes[[0, 2]], scores[[0, 2]], 0.5).tolist() == [0]  # just above: suppressed


def test_batched_nms_only_within_class():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [1, 1, 10, 10]], dtype=np.float32)
    scores = np.array([0.9, 0.8, 0.7], dtype=np.float32)
    labels = np.array([1, 2, 1])
    assert sorted(B.batched_nms(boxes, scores, labels, 0.3).tolist()) == [0, 1]


def test_clip_area_valid():
    boxes = np.array([[-5, -5, 20, 30], [3, 4, 3, 9]], dtype=np.float32)
    clipped = B.clip(boxes, height=25, width=15)
    np.testing.assert_array_equal(clipped, [[0, 0, 15, 25], [3, 4, 3, 9]])
    np.testing.assert_array_equal(B.area(clipped), [375, 0])
    assert B.valid(clipped).tolist() == [True, False]
    assert B.valid(clipped, min_size=20).tolist() == [False, False]


def test_encode_matches_formula_and_round_trips():
    rng = np.random.default_rng(3)
    proposals, targets = random_boxes(rng, 50), random_boxes(rng, 50)
    deltas = B.encode_deltas(proposals, targets)
    for p, g, d in zip(proposals.astype(float), targets.astype(float), deltas):
        pw, ph, gw, gh = p[2] - p[0], p[3] - p[1], g[2] - g[0], g[3] - g[1]
        expected = [((g[0] + gw / 2) - (p[0] + pw / 2)) / pw, ((g[1] + gh / 2) - (p[1] + ph / 2)) / ph,
                    np.log(gw / pw), np.log(gh / ph)]
        np.testing.assert_allclose(d, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(B.decode_deltas(proposals, deltas), targets, atol=1e-3)


def test_decode_clamps_huge_deltas():
    out = B.decode_deltas([[0, 0, 10, 10]], [[0, 0, 1e6, 1e6]])
    assert np.isfinite(out).all()


def test_mirror_boxes():
    """Pixel columns x1..x2-1 of a width-41 image land on 41-x2..40-x1 (the mask check of every
    flip and turn is tests/test_augmented_windows.py)."""
    np.testing.assert_array_equal(B.mirror_boxes([[3, 5, 10, 9]], 41), [[31, 5, 38, 9]])
    assert B.mirror_boxes([[3, 5, 10, 9]], 41).dtype == np.float32
    boxes = np.random.default_rng(4).uniform(0, 40, (6, 4))
    assert B.mirror_boxes(boxes, 41).dtype == np.float64
    np.testing.assert_allclose(B.mirror_boxes(B.mirror_boxes(boxes, 41), 41), boxes)
    assert B.mirror_boxes(np.zeros((0, 4)), 41).shape == (0, 4)
