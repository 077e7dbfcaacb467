"""VOC AP: hand-computed cases, a slow port of the devkit loop, results-file round trips."""

import json
import math

import numpy as np
import pytest

from sppdet.data.voc import Annotation, write_annotation, read_annotation
from sppdet.errors import ConfigError, DatasetError
from sppdet.evaluation.voc_ap import (VOC07_THRESHOLDS, Detections, average_precision, devkit_iou,
                             evaluate, stable_descending)
from sppdet.evaluation.results_io import (read_coco_json, read_detections, read_devkit_results,
                               results_path, write_coco_json, write_devkit_results,
                               write_summary_json)

CLASSES = ("cat", "dog")


def ann(image_id, boxes, names, difficult=None):
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    difficult = np.zeros(len(boxes), bool) if difficult is None else np.asarray(difficult, bool)
    return Annotation(image_id, 100, 100, boxes, tuple(names), difficult)


def dets(rows):
    """Detections from rows (image_id, label, score, box), kept in row order."""
    images = tuple(dict.fromkeys(r[0] for r in rows))
    return Detections(images, [images.index(r[0]) for r in rows], [r[3] for r in rows],
                      [r[2] for r in rows], [r[1] for r in rows])


def cat_ap(annotations, rows, metric="voc07", iou=0.5):
    return evaluate(annotations, dets(rows), CLASSES, metric, iou).classes[0]


# ------------------------------------------------------------------------------------------
# the slow reference: VOCevaldet.m's loops, in the devkit's 1-based inclusive coordinates

MATLAB_0_TO_1 = [0.0, 0.1, 0.2, 3 * 0.1, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]  # only 0.3 is off


def reference(annotations, rows, classes, metric, threshold):
    out = []
    for label, cls in enumerate(classes, start=1):
        gt = {}
        npos = 0
        for a in annotations:
            keep = [j for j, n in enumerate(a.names) if n == cls]
            bbs = [(b[0] + 1, b[1] + 1, b[2], b[3]) for b in a.boxes[keep].astype(float).tolist()]
            diff = [bool(a.difficult[j]) for j in keep]
            gt[a.image_id] = {"BB": bbs, "diff": diff, "det": [False] * len(keep)}
            npos += sum(not d for d in diff)
        mine = [r for r in rows if r[1] == label]
        mine = sorted(mine, key=lambda r: -r[2])  # Python's sort is stable, like MATLAB's
        tp, fp = [0] * len(mine), [0] * len(mine)
        for d, (image_id, _, _, box) in enumerate(mine):
            g = gt[image_id]
            bb = (box[0] + 1, box[1] + 1, box[2], box[3])
            ovmax, jmax = -math.inf, None
            for j, bbgt in enumerate(g["BB"]):
                bi = (max(bb[0], bbgt[0]), max(bb[1], bbgt[1]), min(bb[2], bbgt[2]), min(bb[3], bbgt[3]))
                iw, ih = bi[2] - bi[0] + 1, bi[3] - bi[1] + 1
                if iw > 0 and ih > 0:
                    ua = ((bb[2] - bb[0] + 1) * (bb[3] - bb[1] + 1)
                          + (bbgt[2] - bbgt[0] + 1) * (bbgt[3] - bbgt[1] + 1) - iw * ih)
                    ov = iw * ih / ua
                    if ov > ovmax:
                        ovmax, jmax = ov, j
            if ovmax >= threshold:
                if not g["diff"][jmax]:
                    if not g["det"][jmax]:
                        tp[d] = 1
                        g["det"][jmax] = True
                    else:
                        fp[d] = 1
            else:
                fp[d] = 1
        ctp, cfp, rec, prec = 0, 0, [], []
        for t, f in zip(tp, fp):
            ctp, cfp = ctp + t, cfp + f
            rec.append(ctp / npos if npos else math.nan)
            prec.append(ctp / (ctp + cfp) if ctp + cfp else 0.0)
        if npos == 0:
            ap = math.nan
        elif metric == "voc07":
            ap = 0.0
            for t in MATLAB_0_TO_1:
                p = max([p for p, r in zip(prec, rec) if r >= t], default=0.0)
                ap = ap + p / 11
        else:
            mrec, mpre = [0.0] + rec + [1.0], [0.0] + prec + [0.0]
            for i in range(len(mpre) - 2, -1, -1):
                mpre[i] = max(mpre[i], mpre[i + 1])
            ap = sum((mrec[i] - mrec[i - 1]) * mpre[i]
                     for i in range(1, len(mrec)) if mrec[i] != mrec[i - 1])
        out.append((ap, npos, len(mine), prec, rec))
    return out


def random_case(seed):
    rng = np.random.default_rng(seed)
    annotations, rows = [], []
    for i in range(int(rng.integers(1, 9))):
        n = int(rng.integers(0, 6))
        xy = rng.integers(0, 60, (n, 2))
        boxes = np.concatenate([xy, xy + rng.integers(2, 40, (n, 2))], axis=1)
        names = [CLASSES[k] for k in rng.integers(0, 2, n)]
        if n and rng.random() < 0.5:  # a repeated box: every detection ties between the two
            boxes, names, n = np.concatenate([boxes, boxes[:1]]), names + names[:1], n + 1
        annotations.append(ann(f"im{i}", boxes, names, rng.random(n) < 0.2))
        for box, name in zip(boxes, names):  # hits, near-misses and duplicates
            for _ in range(int(rng.integers(0, 3))):
                jitter = rng.integers(-4, 5, 4) * rng.choice([0.5, 1.0, 0.25])
                rows.append((f"im{i}", CLASSES.index(name) + 1, float(rng.integers(0, 8)) / 8,
                             (box + jitter).tolist()))
        for _ in range(int(rng.integers(0, 4))):  # background false positives
            xy = rng.integers(0, 80, 2)
            rows.append((f"im{i}", int(rng.integers(1, 3)), float(rng.integers(0, 8)) / 8,
                         [*xy, *(xy + rng.integers(1, 30, 2))]))
    rng.shuffle(rows)
    return annotations, [tuple(r) for r in rows]


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("metric,threshold", [("voc07", 0.5), ("area", 0.5), ("voc07", 0.7)])
def test_matches_devkit_loop(seed, metric, threshold):
    annotations, rows = random_case(seed)
    result = evaluate(annotations, dets(rows), CLASSES, metric, threshold)
    expected = reference(annotations, rows, CLASSES, metric, threshold)
    for got, (ap, npos, ndet, prec, rec) in zip(result.classes, expected):
        assert (got.npos, got.ndet) == (npos, ndet)
        np.testing.assert_array_equal(got.precision, prec)
        np.testing.assert_array_equal(got.recall, rec)
        if math.isnan(ap):
            assert math.isnan(got.ap)
        else:
            assert got.ap == pytest.approx(ap, abs=1e-12)


@pytest.mark.parametrize("values", [np.random.default_rng(0).integers(0, 20, 3000) / 4,
                                    np.random.default_rng(1).random(3000), np.zeros(5),
                                    np.zeros(0), np.array([0.0, -0.0, 1.0, -1.0, 0.0])])
def test_stable_descending_is_a_stable_sort(values):
    np.testing.assert_array_equal(stable_descending(values), np.argsort(-values, kind="stable"))


def test_devkit_iou_equals_inclusive_pixel_iou():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 50, (500, 2))
    b = rng.integers(0, 50, (500, 2))
    boxes_a = np.concatenate([a, a + rng.integers(1, 30, (500, 2))], 1).astype(np.float64)
    boxes_b = np.concatenate([b, b + rng.integers(1, 30, (500, 2))], 1).astype(np.float64)
    got = devkit_iou(boxes_a, boxes_b)
    for x, y, iou in zip(boxes_a + [1, 1, 0, 0], boxes_b + [1, 1, 0, 0], got):
        iw = min(x[2], y[2]) - max(x[0], y[0]) + 1
        ih = min(x[3], y[3]) - max(x[1], y[1]) + 1
        if iw > 0 and ih > 0:
            ua = (x[2] - x[0] + 1) * (x[3] - x[1] + 1) + (y[2] - y[0] + 1) * (y[3] - y[1] + 1) - iw * ih
            assert iou == iw * ih / ua
        else:
            assert iou == -np.inf


# ------------------------------------------------------------------------------------------
# hand-computed cases (class "cat", label 1)

def test_perfect_detections():
    gt = [ann("a", [[0, 0, 10, 10], [20, 20, 50, 40]], ["cat", "cat"]),
          ann("b", [[5, 5, 30, 30]], ["cat"])]
    rows = [("a", 1, 0.9, [0, 0, 10, 10]), ("b", 1, 0.8, [5, 5, 30, 30]),
            ("a", 1, 0.7, [20, 20, 50, 40])]
    # Every threshold has precision 1; the devkit adds 1/11 eleven times: 1.0000000000000002.
    assert cat_ap(gt, rows).ap == pytest.approx(1.0, abs=1e-15)
    assert cat_ap(gt, rows, "area").ap == pytest.approx(1.0, abs=1e-15)


def test_all_false_detections():
    gt = [ann("a", [[0, 0, 10, 10]], ["cat"])]
    rows = [("a", 1, 0.9, [50, 50, 60, 60]), ("a", 1, 0.8, [0, 0, 10, 4]), ("a", 2, 0.7, [0, 0, 10, 10])]
    result = cat_ap(gt, rows)  # IoU 0 and 0.4; the exact box is labelled dog
    assert (result.ap, result.ndet, result.npos) == (0.0, 2, 1)
    assert cat_ap(gt, rows, "area").ap == 0.0


def test_duplicate_detection_is_false_positive():
    gt = [ann("a", [[0, 0, 10, 10], [30, 30, 50, 50]], ["cat", "cat"])]
    rows = [("a", 1, 0.9, [0, 0, 10, 10]), ("a", 1, 0.8, [0, 0, 10, 9]), ("a", 1, 0.7, [30, 30, 50, 50])]
    # ranked TP, FP (box already claimed), TP: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1.
    result = cat_ap(gt, rows)
    np.testing.assert_allclose(result.precision, [1, 0.5, 2 / 3])
    assert result.ap == pytest.approx((6 * 1 + 5 * 2 / 3) / 11)  # t = 0..0.5 -> 1; 0.6..1 -> 2/3
    assert cat_ap(gt, rows, "area").ap == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert cat_ap(gt, rows[:1] + rows[2:]).ap == pytest.approx(1.0)


def test_detection_on_difficult_box_is_ignored():
    gt = [ann("a", [[0, 0, 10, 10], [30, 30, 50, 50]], ["cat", "cat"], [False, True])]
    rows = [("a", 1, 0.9, [30, 30, 50, 50]), ("a", 1, 0.8, [0, 0, 10, 10])]
    result = cat_ap(gt, rows)
    # npos excludes the difficult box; the first detection is neither TP nor FP.
    assert (result.npos, result.ndet) == (1, 2)
    np.testing.assert_array_equal(result.recall, [0, 1])
    np.testing.assert_array_equal(result.precision, [0, 1])
    assert result.ap == pytest.approx(1.0)  # counted as a FP it would be 0.5


def test_tied_scores_keep_row_order():
    gt = [ann("a", [[0, 0, 10, 10]], ["cat"]), ann("b", [], [])]
    hit, miss = ("a", 1, 0.5, [0, 0, 10, 10]), ("b", 1, 0.5, [0, 0, 10, 10])
    # hit first: TP, FP -> precision 1 at recall 1 -> AP 1
    assert cat_ap(gt, [hit, miss]).ap == pytest.approx(1.0)
    # miss first (as MATLAB's stable sort keeps a file's line order): FP, TP -> AP 0.5
    assert cat_ap(gt, [miss, hit]).ap == pytest.approx(0.5)


def test_iou_exactly_at_threshold_is_a_hit():
    gt = [ann("a", [[0, 0, 10, 10]], ["cat"])]
    half = [0, 0, 10, 5]  # devkit: (1,1,10,10) vs (1,1,10,5): 50 / 100, exactly 0.5
    assert devkit_iou(np.array([half], float), np.array([[0, 0, 10, 10]], float))[0] == 0.5
    assert cat_ap(gt, [("a", 1, 0.9, half)]).ap == pytest.approx(1.0)
    assert cat_ap(gt, [("a", 1, 0.9, half)], iou=np.nextafter(0.5, 1)).ap == 0.0
    assert cat_ap(gt, [("a", 1, 0.9, [0, 0, 10, 4.999])]).ap == 0.0


def test_overlap_tie_goes_to_first_box():
    # The detection overlaps both boxes with IoU 50 / 150; the devkit keeps the first best box
    # (strict ">" in its loop), which is difficult, so the detection is ignored, not a TP.
    gt = [ann("a", [[0, 0, 10, 10], [10, 0, 20, 10]], ["cat", "cat"], [True, False])]
    result = cat_ap(gt, [("a", 1, 0.9, [5, 0, 15, 10])], iou=0.3)
    assert (result.npos, result.ndet, result.ap) == (1, 1, 0.0)
    np.testing.assert_array_equal(result.recall, [0.0])


def test_eleven_point_and_area_differ():
    gt = [ann("a", [[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10], [60, 0, 70, 10]], ["cat"] * 4)]
    rows = [("a", 1, 0.9, [0, 0, 10, 10])]  # recall 1/4 at precision 1
    assert cat_ap(gt, rows).ap == pytest.approx(3 / 11)  # t = 0, 0.1, 0.2
    assert cat_ap(gt, rows, "area").ap == pytest.approx(0.25)


def test_eleven_point_thresholds_are_matlabs():
    assert VOC07_THRESHOLDS[3] == 0.30000000000000004 and VOC07_THRESHOLDS[6:8] == (0.6, 0.7)
    # recall exactly 0.3 (3 of 10) misses MATLAB's t = 0.30000000000000004: 3/11, not 4/11
    assert average_precision([0.1, 0.2, 3 / 10], [1, 1, 1]) == pytest.approx(3 / 11)
    # recall exactly 0.6 (3 of 5) reaches t = 0.6 (np.arange's 0.6000000000000001 would not)
    assert average_precision([0.2, 0.4, 3 / 5], [1, 1, 1]) == pytest.approx(7 / 11)


def test_average_precision_edges():
    assert average_precision([], []) == 0.0
    assert average_precision([], [], "area") == 0.0
    with pytest.raises(ConfigError):
        average_precision([1], [1], "coco")


def test_no_positives_and_no_detections():
    gt = [ann("a", [[0, 0, 10, 10]], ["dog"]), ann("b", [[0, 0, 10, 10]], ["cat"], [True])]
    result = evaluate(gt, dets([("a", 1, 0.9, [0, 0, 10, 10])]), CLASSES)
    cat, dog = result.classes
    assert math.isnan(cat.ap) and cat.npos == 0 and cat.ndet == 1  # only a difficult cat
    assert dog.ap == 0.0 and dog.npos == 1 and dog.ndet == 0
    assert result.mAP == 0.0  # the mean leaves out the class without positives


def test_unknown_image_and_bad_labels():
    gt = [ann("a", [[0, 0, 10, 10]], ["cat"])]
    with pytest.raises(DatasetError, match="'zzz'"):
        evaluate(gt, dets([("zzz", 1, 0.9, [0, 0, 10, 10])]), CLASSES)
    with pytest.raises(DatasetError, match="1..2"):
        evaluate(gt, dets([("a", 3, 0.9, [0, 0, 10, 10])]), CLASSES)
    with pytest.raises(ConfigError):
        evaluate(gt, dets([]), CLASSES, metric="coco")


# ------------------------------------------------------------------------------------------
# results files

def random_detections(annotations, seed, n=300):
    rng = np.random.default_rng(seed)
    xy = rng.random((n, 2)).astype(np.float32) * 60
    boxes = np.concatenate([xy, xy + 1 + rng.random((n, 2)).astype(np.float32) * 40], 1)
    per_image = {}
    for i, a in enumerate(annotations):
        rows = rng.random(n) < 1 / len(annotations)
        per_image[a.image_id] = (boxes[rows], rng.random(rows.sum()).astype(np.float32),
                                 rng.integers(1, 3, rows.sum()))
    return Detections.from_images(per_image)


@pytest.mark.parametrize("fmt", ["devkit", "coco"])
def test_results_round_trip(tmp_path, fmt):
    annotations, _ = random_case(3)
    detections = random_detections(annotations, 0)
    ids = [a.image_id for a in annotations]
    if fmt == "devkit":
        write_devkit_results(tmp_path, "test", detections, CLASSES)
        back = read_detections(tmp_path, "test", CLASSES, ids)
    else:
        write_coco_json(tmp_path / "d.json", detections, CLASSES)
        back = read_detections(tmp_path / "d.json", "test", CLASSES, ids)
    assert len(back) == len(detections)
    for metric in ("voc07", "area"):
        before = evaluate(annotations, detections, CLASSES, metric)
        after = evaluate(annotations, back, CLASSES, metric)
        for x, y in zip(before.classes, after.classes):
            assert (x.npos, x.ndet) == (y.npos, y.ndet)
            assert abs(x.ap - y.ap) <= 1e-12


def test_devkit_file_uses_one_based_voc_pixels(tmp_path):
    # A box read from VOC XML (xmin=5, ymin=7, xmax=20, ymax=30) goes back out as the same numbers.
    gt = ann("000005", [[4, 6, 20, 30]], ["cat"])
    write_annotation(tmp_path / "000005.xml", gt)
    box = read_annotation(tmp_path / "000005.xml").boxes
    write_devkit_results(tmp_path, "val", dets([("000005", 1, 0.25, box[0].tolist())]), CLASSES)
    assert results_path(tmp_path, "val", "cat").read_text() == "000005 0.25 5.0 7.0 20.0 30.0\n"
    assert results_path(tmp_path, "val", "dog").read_text() == ""


def write_lines(folder, name, text):
    path = results_path(folder, "test", name)
    path.write_text(text)
    return path


@pytest.mark.parametrize("text,message", [
    ("a 0.9 1 1 10 10\na 0.8 1 1 10\n", ":2: expected '<image_id> <score>"),
    ("a 0.9 1 1 10 10\n\na high 1 1 10 10\n", ":3: expected"),
    ("a 0.9 1 1 10 nan\n", ":1: expected"),
    ("a 0.9 1 1 10 10\nq 0.8 1 1 10 10\n", ":2: image 'q' is not in split 'test'"),
])
def test_devkit_reader_errors_name_file_and_line(tmp_path, text, message):
    path = write_lines(tmp_path, "cat", text)
    with pytest.raises(DatasetError) as error:
        read_devkit_results(tmp_path, "test", CLASSES, ["a"])
    assert str(error.value).startswith(str(path)) and message in str(error.value)


def test_devkit_reader_skips_blank_lines_and_keeps_line_order(tmp_path):
    write_lines(tmp_path, "dog", "b 0.5 1 1 10 10\n\n  \na 0.5 2 2 20 20\n")
    got = read_devkit_results(tmp_path, "test", CLASSES, ["a", "b"])
    assert [got.images[i] for i in got.image_index] == ["b", "a"]
    np.testing.assert_array_equal(got.boxes, [[0, 0, 10, 10], [1, 1, 20, 20]])
    np.testing.assert_array_equal(got.labels, [2, 2])


def test_devkit_reader_unknown_class_and_empty_folder(tmp_path):
    with pytest.raises(DatasetError, match="no comp4_det_test_<class>.txt"):
        read_devkit_results(tmp_path, "test", CLASSES, ["a"])
    write_lines(tmp_path, "cat", "a 0.9 1 1 10 10\n")
    results_path(tmp_path, "val", "zebra").write_text("")  # another split: ignored
    assert len(read_devkit_results(tmp_path, "test", CLASSES, ["a"])) == 1
    write_lines(tmp_path, "zebra", "a 0.9 1 1 10 10\n")
    with pytest.raises(DatasetError, match="unknown class 'zebra'"):
        read_devkit_results(tmp_path, "test", CLASSES, ["a"])


@pytest.mark.parametrize("entry,message", [
    ({"image_id": "q", "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1}, "image 'q'"),
    ({"image_id": "a", "category": "zebra", "bbox": [0, 0, 1, 1], "score": 1}, "unknown category"),
    ({"image_id": "a", "category_id": 3, "bbox": [0, 0, 1, 1], "score": 1}, "category_id 3"),
    ({"image_id": "a", "category_id": 1, "category": "dog", "bbox": [0, 0, 1, 1], "score": 1},
     "but category"),
    ({"image_id": "a", "category_id": 1, "bbox": [0, 0, 1], "score": 1}, "bbox"),
    ({"image_id": "a", "bbox": [0, 0, 1, 1], "score": 1}, "category_id or category"),
])
def test_coco_reader_errors_name_entry(tmp_path, entry, message):
    good = {"image_id": "a", "category": "cat", "bbox": [0, 0, 1, 1], "score": 0.5}
    (tmp_path / "d.json").write_text(json.dumps([good, entry]))
    with pytest.raises(DatasetError, match=f"d.json: entry 1: .*{message}"):
        read_coco_json(tmp_path / "d.json", "test", CLASSES, ["a"])


def test_coco_reader_converts_xywh_names_and_integer_ids(tmp_path):
    entries = [{"image_id": 7, "category": "dog", "bbox": [1.5, 2, 10, 20.25], "score": 0.5},
               {"image_id": "a", "category_id": 1, "bbox": [0, 0, 1, 1], "score": 2}]
    (tmp_path / "d.json").write_text(json.dumps(entries))
    got = read_coco_json(tmp_path / "d.json", "test", CLASSES, ["a", "7"])
    assert [got.images[i] for i in got.image_index] == ["7", "a"]
    np.testing.assert_array_equal(got.boxes, [[1.5, 2, 11.5, 22.25], [0, 0, 1, 1]])
    np.testing.assert_array_equal(got.labels, [2, 1])
    np.testing.assert_array_equal(got.scores, [0.5, 2.0])


def test_summary_json_schema(tmp_path):
    gt = [ann("a", [[0, 0, 10, 10]], ["cat"])]
    result = evaluate(gt, dets([("a", 1, 0.9, [0, 0, 10, 10])]), CLASSES, "area")
    write_summary_json(tmp_path / "ap.json", result, "test")
    data = json.loads((tmp_path / "ap.json").read_text())
    assert data == {"metric": "area", "iou": 0.5, "split": "test", "mAP": 1.0,
                    "classes": {"cat": {"ap": 1.0, "npos": 1, "ndet": 1},
                                "dog": {"ap": None, "npos": 0, "ndet": 0}}}
    assert list(data["classes"]) == list(CLASSES)
