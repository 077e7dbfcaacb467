"""Error analysis: a scene where every error type is known by construction, a slow reference for the
vectorised matching, invariants on random scenes, and the files (figures, worst images) it writes."""

import csv
import json

import cv2
import numpy as np
import pytest

from sppdet.data.voc import Annotation
from sppdet.errors import ConfigError, DatasetError
from sppdet.evaluation.analysis import (BACKGROUND, CONFUSED, CONFUSION, CORRECT, DIFFICULT, DUPLICATE,
                                        FOUND, FP_TYPES, IGNORED, MISSED, analyze_errors, class_matches)
from sppdet.evaluation.voc_ap import Detections, devkit_iou
from sppdet.vis.analysis_plots import draw_analysis_image, write_analysis

CLASSES = ("cat", "dog")
WIDTH, HEIGHT = 120, 60
UNSAFE_ID = "../b"  # an image id that is no safe file name


def ann(image_id, boxes, names, difficult=None):
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    difficult = np.zeros(len(boxes), bool) if difficult is None else np.asarray(difficult, bool)
    return Annotation(image_id, WIDTH, HEIGHT, boxes, tuple(names), difficult)


def dets(rows, image_ids):
    """Detections from rows (image_id, label, score, box), kept in row order."""
    return Detections(tuple(image_ids), [image_ids.index(r[0]) for r in rows], [r[3] for r in rows],
                      [r[2] for r in rows], [r[1] for r in rows])


def scene():
    """Each error by construction (cat = 1, dog = 2; npos: cat 6, dog 2):

    a: cat A, dog B.   d1 cat 0.9 on A (correct), d2 cat 0.8 on A, IoU 0.905 (duplicate),
                       d3 cat 0.7 on B (confusion: B is found only as a cat)
    b: cat C, difficult cat E.   d4 cat 0.6 on C's top, IoU 0.35 (localisation), d5 cat 0.55 on E
                       (ignored), d6 cat 0.3 on C (correct)
    c: dog D.          d7 cat 0.5 on nothing (background), d8 dog 0.4 on nothing (background); D is missed
    d: cats F..I, each found by a cat 0.2 (so the cat ranking's best F1 is at its end)
    """
    annotations = [
        ann("a", [[10, 10, 50, 50], [60, 10, 100, 50]], ["cat", "dog"]),
        ann(UNSAFE_ID, [[10, 10, 50, 50], [60, 10, 100, 50]], ["cat", "cat"], [False, True]),
        ann("c", [[60, 20, 100, 60]], ["dog"]),
        ann("d", [[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10], [60, 0, 70, 10]], ["cat"] * 4),
    ]
    rows = [
        ("a", 1, 0.9, [10, 10, 50, 50]), ("a", 1, 0.8, [12, 10, 52, 50]), ("a", 1, 0.7, [60, 10, 100, 50]),
        (UNSAFE_ID, 1, 0.6, [10, 10, 50, 24]), (UNSAFE_ID, 1, 0.55, [60, 10, 100, 50]),
        (UNSAFE_ID, 1, 0.3, [10, 12, 50, 50]),
        ("c", 1, 0.5, [0, 0, 20, 20]), ("c", 2, 0.4, [0, 30, 20, 50]),
    ] + [("d", 1, 0.2, [x, 0, x + 10, 10]) for x in (0, 20, 40, 60)]
    return annotations, dets(rows, [a.image_id for a in annotations])


def test_scene_ious_are_what_the_docstring_says():
    assert devkit_iou(np.array([[12, 10, 52, 50.0]]), np.array([[10, 10, 50, 50.0]]))[0] == pytest.approx(1520 / 1680)
    assert devkit_iou(np.array([[10, 10, 50, 24.0]]), np.array([[10, 10, 50, 50.0]]))[0] == pytest.approx(0.35)


def test_confusion_matrix_with_best_f1_cut():
    annotations, detections = scene()
    analysis = analyze_errors(annotations, detections, CLASSES)
    # rows cat, dog, duplicate, background; columns cat, dog, missed. The dog class never has a TP,
    # so its best-F1 cut keeps none of its detections (d8 is not counted).
    np.testing.assert_array_equal(analysis.confusion, [[6, 0, 0], [1, 0, 1], [1, 0, 0], [2, 0, 0]])
    np.testing.assert_array_equal(analysis.npos, [6, 2])
    np.testing.assert_array_equal(analysis.thresholds, [0.2, np.inf])
    np.testing.assert_allclose(analysis.f1, [12 / 16, 0.0])
    # confident detections in decreasing score order: d1 d2 d3 d4 d5 d7 d6, then the four of image d
    np.testing.assert_array_equal(analysis.detection_rows, [0, 1, 2, 3, 4, 6, 5, 8, 9, 10, 11])
    np.testing.assert_array_equal(analysis.detection_outcome, [CORRECT, DUPLICATE, CONFUSION, BACKGROUND, IGNORED,
                                                               BACKGROUND] + [CORRECT] * 5)
    np.testing.assert_array_equal(analysis.object_outcome, [FOUND, CONFUSED, FOUND, DIFFICULT, MISSED] + [FOUND] * 4)
    np.testing.assert_array_equal(analysis.object_detected_as, [0, 1, 0, 0, 0, 0, 0, 0, 0])
    # missed, confused, duplicate, background per image
    np.testing.assert_array_equal(analysis.image_counts, [[0, 1, 1, 0], [0, 0, 0, 1], [1, 0, 0, 1], [0, 0, 0, 0]])
    np.testing.assert_array_equal(analysis.worst_images(8), [0, 2, 1])  # a and c tie at 2: split order
    np.testing.assert_array_equal(analysis.worst_images(1), [0])


def test_confusion_matrix_with_a_fixed_score_threshold():
    annotations, detections = scene()
    analysis = analyze_errors(annotations, detections, CLASSES, score_threshold=0.0)
    np.testing.assert_array_equal(analysis.confusion, [[6, 0, 0], [1, 0, 1], [1, 0, 0], [2, 1, 0]])
    np.testing.assert_array_equal(analysis.thresholds, [0.2, 0.4])
    np.testing.assert_array_equal(analysis.worst_images(8), [2, 0, 1])
    above = analyze_errors(annotations, detections, CLASSES, score_threshold=0.65)  # d1, d2, d3 only
    np.testing.assert_array_equal(above.confusion, [[1, 0, 5], [1, 0, 1], [1, 0, 0], [0, 0, 0]])


def test_false_positive_breakdown():
    annotations, detections = scene()
    cat, dog = analyze_errors(annotations, detections, CLASSES).false_positives
    # cat: the top 6 decided detections (npos = 6; d5 is ignored, so 7 ranks) are d1 d2 d3 d4 d7 d6
    assert (cat.npos, cat.considered, cat.true_positives) == (6, 6, 2)
    assert dict(zip(FP_TYPES, cat.counts.tolist())) == {"localisation": 1, "duplicate": 1, "confusion": 1,
                                                        "background": 1}
    # dog: npos 2 but only one detection, d8, far from everything
    assert (dog.considered, dog.true_positives) == (1, 0)
    assert dict(zip(FP_TYPES, dog.counts.tolist())) == {"localisation": 0, "duplicate": 0, "confusion": 0,
                                                        "background": 1}


def test_false_positive_breakdown_stops_at_npos():
    annotations, detections = scene()
    annotations[3] = ann("d", [[0, 0, 10, 10]], ["cat"])  # cat npos 3: top 3 decided are d1 d2 d3
    cat = analyze_errors(annotations, detections, CLASSES).false_positives[0]
    assert (cat.considered, cat.true_positives) == (3, 1)
    assert dict(zip(FP_TYPES, cat.counts.tolist()))["duplicate"] == 1
    assert dict(zip(FP_TYPES, cat.counts.tolist()))["confusion"] == 1


def test_touch_threshold_is_inclusive():
    """Localisation needs same-class IoU >= 0.1; below, an object of another class at IoU >= 0.1
    makes it a confusion; below that too, background."""
    annotations = [ann("x", [[0, 0, 10, 10], [50, 0, 60, 10]], ["cat", "dog"]),
                   ann("y", [[0, 0, 10, 10]], ["cat"])]
    # [0, 0, 10, 1] has IoU exactly 0.1 with the cat; [0, 0, 10, 0.99] just below it
    rows = [("x", 1, 0.9, [0, 0, 10, 1]), ("x", 1, 0.8, [50, 0, 60, 1]), ("x", 1, 0.7, [50, 0, 60, 0.99]),
            ("y", 1, 0.1, [0, 0, 10, 10])]
    annotations += [ann(f"z{i}", [[0, 0, 10, 10]], ["cat"]) for i in range(2)]
    detections = dets(rows, [a.image_id for a in annotations])
    cat = analyze_errors(annotations, detections, CLASSES).false_positives[0]
    assert dict(zip(FP_TYPES, cat.counts.tolist())) == {"localisation": 1, "duplicate": 0, "confusion": 1,
                                                        "background": 1}


def test_higher_score_claims_a_confused_object_and_difficult_objects_are_ignored():
    classes = ("cat", "dog", "cow")
    annotations = [ann("x", [[0, 0, 40, 40], [50, 0, 90, 40]], ["cow", "dog"], [False, True])]
    rows = [("x", 1, 0.6, [0, 0, 40, 40]), ("x", 2, 0.8, [0, 0, 40, 40]),  # both on the cow
            ("x", 1, 0.7, [50, 0, 90, 40])]  # a cat on the difficult dog
    analysis = analyze_errors(annotations, dets(rows, ["x"]), classes, score_threshold=0.0)
    # rows cat, dog, cow, duplicate, background; columns cat, dog, cow, missed
    np.testing.assert_array_equal(analysis.confusion, [[0] * 4, [0] * 4, [0, 1, 0, 0], [1, 0, 0, 0], [0] * 4])
    np.testing.assert_array_equal(analysis.detection_outcome, [CONFUSION, IGNORED, DUPLICATE])
    np.testing.assert_array_equal(analysis.object_detected_as, [2, 0])


def test_no_detections_and_no_objects():
    annotations = [ann("x", [[0, 0, 10, 10]], ["dog"]), ann("y", [], [])]
    analysis = analyze_errors(annotations, dets([], ["x", "y"]), CLASSES)
    np.testing.assert_array_equal(analysis.confusion, [[0, 0, 0], [0, 0, 1], [0, 0, 0], [0, 0, 0]])
    assert [fp.considered for fp in analysis.false_positives] == [0, 0]
    np.testing.assert_array_equal(analysis.worst_images(8), [0])
    assert analysis.to_json(8)["classes"]["cat"]["f1"] is None  # no positives


def test_bad_input_is_one_clear_error():
    annotations, detections = scene()
    with pytest.raises(DatasetError, match="not in the evaluated split"):
        analyze_errors(annotations[:1], detections, CLASSES)
    with pytest.raises(DatasetError, match="labels must lie in 1..1"):
        analyze_errors(annotations, detections, CLASSES[:1])
    with pytest.raises(ConfigError, match="IoU threshold"):
        analyze_errors(annotations, detections, CLASSES, iou_threshold=1.5)


# ------------------------------------------------------------------------------------------
# the vectorised matching against loops


def slow_class_matches(det_image, det_boxes, det_labels, gt_image, gt_boxes, gt_labels):
    out = []
    for i, box, label in zip(det_image, det_boxes, det_labels):
        best = {True: (-np.inf, -1), False: (-np.inf, -1)}
        for g, (image, gt_box, gt_label) in enumerate(zip(gt_image, gt_boxes, gt_labels)):
            if image != i:
                continue
            iou = devkit_iou(box[None], gt_box[None])[0]
            same = bool(gt_label == label)
            if iou > best[same][0]:
                best[same] = (iou, g)
        out.append((*best[True], *best[False]))
    return [np.array(column) for column in zip(*out)] if out else [np.zeros(0)] * 4


def test_class_matches_equals_loops():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n, g, m = rng.integers(0, 12), rng.integers(0, 10), rng.integers(1, 4)
        corner = rng.integers(0, 20, (n + g, 2)).astype(float)
        boxes = np.concatenate([corner, corner + rng.integers(1, 12, (n + g, 2))], axis=1)
        det_image, gt_image = rng.integers(0, m, n), np.sort(rng.integers(0, m, g))
        det_labels, gt_labels = rng.integers(1, 3, n), rng.integers(1, 3, g)
        fast = class_matches(det_image, boxes[:n], det_labels, gt_image, boxes[n:], gt_labels)
        slow = slow_class_matches(det_image, boxes[:n], det_labels, gt_image, boxes[n:], gt_labels)
        for a, b in zip(fast, slow):
            np.testing.assert_array_equal(a, b)


def test_random_scenes_keep_the_matrix_invariants():
    rng = np.random.default_rng(1)
    for score_threshold in (None, 0.3):
        annotations, rows = [], []
        for m in range(15):
            corner = rng.integers(0, 60, (4, 2)).astype(float)
            boxes = np.concatenate([corner, corner + rng.integers(5, 40, (4, 2))], axis=1)
            g = int(rng.integers(0, 4))
            annotations.append(ann(f"{m}", boxes[:g], [CLASSES[i] for i in rng.integers(0, 2, g)], rng.random(g) < 0.2))
            for box in boxes[:g]:
                for _ in range(int(rng.integers(0, 3))):
                    rows.append((f"{m}", int(rng.integers(1, 3)), float(rng.random()), box + rng.normal(0, 4, 4)))
            rows.append((f"{m}", int(rng.integers(1, 3)), float(rng.random()), [0, 0, 30, 30]))
        analysis = analyze_errors(annotations, dets(rows, [a.image_id for a in annotations]), CLASSES,
                                  score_threshold=score_threshold)
        np.testing.assert_array_equal(analysis.confusion[:2].sum(axis=1), analysis.npos)
        counted = analysis.detection_outcome != IGNORED
        np.testing.assert_array_equal(analysis.confusion[:, :2].sum(axis=0),
                                      np.bincount(analysis.detection_labels[counted], minlength=3)[1:])
        assert analysis.image_counts.sum() == analysis.confusion.sum() - np.trace(analysis.confusion[:2])
        for fp in analysis.false_positives:
            assert fp.considered == fp.true_positives + fp.counts.sum() <= fp.npos


# ------------------------------------------------------------------------------------------
# pictures and files


def write_images(folder, annotations):
    folder.mkdir()
    paths = {}
    for i, a in enumerate(annotations):
        paths[a.image_id] = folder / f"{i}.png"
        cv2.imwrite(str(paths[a.image_id]), np.full((HEIGHT, WIDTH, 3), 128, np.uint8))
    return paths


def test_draw_analysis_image_marks_each_outcome():
    annotations, detections = scene()
    analysis = analyze_errors(annotations, detections, CLASSES, score_threshold=0.0)
    image = np.full((200, 400, 3), 128, np.uint8)
    drawn = draw_analysis_image(image, analysis, 2)  # image c: dog D missed, d7 and d8 background
    bar = drawn.shape[0] - 200
    assert drawn.shape[1:] == (400, 3) and bar > 0 and (image == 128).all()
    assert (drawn[:bar, :2] == 0).all()  # the bar is black at its left edge
    colours = {tuple(c) for c in drawn[bar:].reshape(-1, 3).tolist()}
    assert (0, 0, 255) in colours  # missed object, dashed
    assert (0, 0, 220) in colours  # background detections
    assert (0, 170, 0) not in colours  # no correct detection in image c
    np.testing.assert_array_equal(drawn[bar + 59, 99], [0, 0, 255])  # D's bottom-right corner


def test_write_analysis_writes_every_file(tmp_path):
    annotations, detections = scene()
    paths = write_images(tmp_path / "images", annotations)
    out = tmp_path / "analysis"
    report = write_analysis(out, annotations, detections, CLASSES, paths.__getitem__, top=8)
    names = sorted(p.name for p in report.paths)
    worst = [p.name for p in report.worst_images]
    assert worst[:2] == ["worst_01_a.png", "worst_02_c.png"] and worst[2].startswith("worst_03__b-")
    assert names == sorted(["analysis.json", "confusion_matrix.csv", "confusion_matrix.png",
                            "false_positives.png", *worst])
    assert sorted(p.name for p in out.iterdir()) == names  # nothing else, nothing outside
    for path in report.paths:
        assert path.parent == out and path.stat().st_size > 0
    for path in [*report.worst_images, out / "confusion_matrix.png", out / "false_positives.png"]:
        assert cv2.imread(str(path)) is not None
    summary = json.loads((out / "analysis.json").read_text())
    assert summary["confusion_matrix"]["counts"] == [[6, 0, 0], [1, 0, 1], [1, 0, 0], [2, 0, 0]]
    assert summary["classes"]["cat"]["false_positives"] == {"considered": 6, "true_positives": 2,
                                                           "localisation": 1, "duplicate": 1, "confusion": 1,
                                                           "background": 1}
    assert summary["classes"]["dog"]["score_threshold"] is None
    assert [w["image_id"] for w in summary["worst_images"]] == ["a", "c", UNSAFE_ID]
    with open(out / "confusion_matrix.csv", newline="") as handle:
        table = list(csv.reader(handle))
    assert table[0] == ["ground truth \\ detected", "cat", "dog", "missed"]
    assert table[4] == ["background", "2", "0", "0"]


def test_write_analysis_without_images_or_with_top_zero(tmp_path):
    annotations, detections = scene()
    report = write_analysis(tmp_path / "a", annotations, detections, CLASSES, None)
    assert report.worst_images == () and len(report.paths) == 4
    report = write_analysis(tmp_path / "b", annotations, detections, CLASSES, lambda i: tmp_path / "none", top=0)
    assert report.worst_images == ()


def test_unreadable_image_writes_nothing(tmp_path):
    annotations, detections = scene()
    out = tmp_path / "analysis"
    with pytest.raises(DatasetError, match="missing.png"):
        write_analysis(out, annotations, detections, CLASSES, lambda image_id: tmp_path / "missing.png")
    assert not out.exists()
    with pytest.raises(ConfigError, match="top -1"):
        write_analysis(out, annotations, detections, CLASSES, None, top=-1)
