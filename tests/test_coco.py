"""COCO: results files COCO tools load, COCO AP50 against VOC's ``area`` AP, ``eval --metric coco``."""

import dataclasses
import json
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from cli.eval import eval_command
from sppdet.data.voc import Annotation, write_annotation, write_split
from sppdet.errors import DatasetError
from sppdet.evaluation.results_io import mapping_path, read_coco_json, read_detections, write_coco_json
from sppdet.evaluation.voc_ap import Detections, evaluate

CLASSES = ("cat", "dog")


def ann(image_id, boxes, names, difficult=None, size=(100, 100), filename=None):
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    difficult = np.zeros(len(boxes), bool) if difficult is None else np.asarray(difficult, bool)
    return Annotation(image_id, size[0], size[1], boxes, tuple(names), difficult, filename)


def dets(rows):
    """Detections over the images of rows (image_id, label, score, box), in row order."""
    images = tuple(dict.fromkeys(r[0] for r in rows))
    return Detections(images, [images.index(r[0]) for r in rows], [r[3] for r in rows],
                      [r[2] for r in rows], [r[1] for r in rows])


def quiet(call, *args):
    """pycocotools prints progress; keep the test output clean."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        return call(*args)


# ------------------------------------------------------------------------------------------
# (a) files that COCO tools load, and their round trip

GROUND_TRUTH = [
    ann("b7", [[10.5, 20, 50, 60.25], [0, 0, 30, 30]], ["cat", "dog"], [0, 1], size=(120, 80),
        filename="b7.png"),
    ann("a1", [[5, 5, 40, 45], [1, 1, 9, 9]], ["dog", "zebra"]),  # zebra: no class of CLASSES
    ann("c0", [], []),
]
DETECTIONS = dets([("b7", 1, 0.9, [10, 20, 50, 60]), ("a1", 2, 0.75, [4.5, 5, 40, 44.5]),
                   ("b7", 2, 0.5, [0, 0, 29, 31]), ("a1", 1, 0.25, [60, 60, 99.5, 99])])


def test_written_files_load_in_pycocotools(tmp_path):
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from sppdet.evaluation.coco_metric import evaluate_coco

    path = tmp_path / "dets.json"
    mapping = write_coco_json(path, DETECTIONS, CLASSES, ground_truth=GROUND_TRUTH)
    assert mapping == tmp_path / "dets.images.json" == mapping_path(path)
    gt = quiet(COCO, str(mapping))
    # ids: 1 + position among the sorted names a1 < b7 < c0, whatever the split's order
    assert [(i["id"], i["sppdet_id"], i["file_name"], i["width"], i["height"]) for i in gt.dataset["images"]] == [
        (1, "a1", "a1.jpg", 100, 100), (2, "b7", "b7.png", 120, 80), (3, "c0", "c0.jpg", 100, 100)]
    assert gt.loadCats(gt.getCatIds()) == [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    annotations = gt.loadAnns(gt.getAnnIds())
    assert [(a["image_id"], a["category_id"], a["bbox"], a["area"], a["iscrowd"]) for a in annotations] == [
        (1, 2, [5, 5, 35, 40], 1400, 0),
        (2, 1, [10.5, 20, 39.5, 40.25], 39.5 * 40.25, 0),
        (2, 2, [0, 0, 30, 30], 900, 1)]  # difficult -> crowd; the zebra is left out
    results = quiet(gt.loadRes, str(path))
    assert sorted((a["image_id"], a["category_id"], a["score"]) for a in results.loadAnns(results.getAnnIds())) == [
        (1, 1, 0.25), (1, 2, 0.75), (2, 1, 0.9), (2, 2, 0.5)]
    assert results.loadAnns(results.getAnnIds(imgIds=[2], catIds=[1]))[0]["bbox"] == [10, 20, 40, 40]

    # scoring the files with plain pycocotools gives what the in-memory route gives
    evaluator = COCOeval(gt, results, "bbox")
    quiet(evaluator.evaluate)
    quiet(evaluator.accumulate)
    quiet(evaluator.summarize)
    stats = evaluate_coco(GROUND_TRUTH, DETECTIONS, CLASSES).stats
    np.testing.assert_allclose([np.nan if v < 0 else v for v in evaluator.stats], list(stats.values()))

    back = read_coco_json(path, "test", CLASSES, ["b7", "a1", "c0"])
    assert [back.images[i] for i in back.image_index] == [DETECTIONS.images[i] for i in DETECTIONS.image_index]
    np.testing.assert_array_equal(back.boxes, DETECTIONS.boxes)
    np.testing.assert_array_equal(back.scores, DETECTIONS.scores)
    np.testing.assert_array_equal(back.labels, DETECTIONS.labels)


def test_detect_style_images_and_old_string_form(tmp_path):
    # detect's images: (name, file name, width, height) tuples and no ground truth
    path = tmp_path / "run.json"
    write_coco_json(path, DETECTIONS, CLASSES, images=[("b7", "b7.png", 120, 80), ("a1", "a1.jpg", 64, 48)])
    mapping = json.loads(mapping_path(path).read_text())
    assert "annotations" not in mapping and [i["id"] for i in mapping["images"]] == [1, 2]
    entries = json.loads(path.read_text())
    assert [e["image_id"] for e in entries] == [2, 1, 2, 1]
    back = read_detections(path, "test", CLASSES, ["a1", "b7"])
    np.testing.assert_array_equal(back.boxes, DETECTIONS.boxes)
    assert [back.images[i] for i in back.image_index] == ["b7", "a1", "b7", "a1"]

    # without images: string ids and no mapping file; a stale mapping beside it is not consulted
    assert write_coco_json(path, DETECTIONS, CLASSES) is None
    assert [e["image_id"] for e in json.loads(path.read_text())] == ["b7", "a1", "b7", "a1"]
    assert len(read_coco_json(path, "test", CLASSES, ["a1", "b7"])) == 4


def test_mapping_errors_name_the_file(tmp_path):
    path = tmp_path / "d.json"
    with pytest.raises(DatasetError, match="'zz', which is not among the 1 images"):
        write_coco_json(path, dets([("zz", 1, 0.5, [0, 0, 1, 1])]), CLASSES, images=[("a", "a.jpg", 9, 9)])
    assert not path.exists() and not mapping_path(path).exists()  # nothing half-written
    write_coco_json(path, dets([("a", 1, 0.5, [0, 0, 1, 1])]), CLASSES, images=[("a", "a.jpg", 9, 9)])
    path.write_text(json.dumps([{"image_id": 5, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1}]))
    with pytest.raises(DatasetError, match=r"d.json: entry 0: image_id 5 is not an id of .*d.images.json"):
        read_coco_json(path, "test", CLASSES, ["a"])
    mapping_path(path).write_text(json.dumps({"images": [{"id": 1}]}))
    with pytest.raises(DatasetError, match=r"d.images.json: images\[0\] needs a unique integer id"):
        read_coco_json(path, "test", CLASSES, ["a"])
    with pytest.raises(DatasetError, match="d.images.json: this is COCO ground truth"):
        read_coco_json(mapping_path(path), "test", CLASSES, ["a"])
    with pytest.raises(DatasetError, match="'a' appears twice"):
        write_coco_json(path, dets([]), CLASSES, images=[("a", "a.jpg", 9, 9), ("a", "b.jpg", 9, 9)])


# ------------------------------------------------------------------------------------------
# (b) COCO's AP at IoU 0.5 against sppdet's VOC "area" AP


def disjoint_case(seed, images=6, cells=3, cell=100):
    """Ground truth with disjoint boxes (one per grid cell) and detections around them.

    Each class has 4 or 5 positives, so every recall k/npos is a point of COCO's grid (in floating
    point too: npos 10 would not be, as 7/10 < linspace(0, 1, 101)[70]). Detections: jittered
    copies of the boxes (IoU spread around 0.5), boxes shrunk to IoU 0.5 +- 0.03 (one pixel of
    width moves them across), copies with the wrong label and random boxes; distinct scores;
    fewer than 100 per image and class."""
    rng = np.random.default_rng(seed)
    npos = rng.choice([4, 5], len(CLASSES))
    slots = rng.permutation(images * cells * cells)[:npos.sum()]
    labels = np.repeat(np.arange(1, len(CLASSES) + 1), npos)
    image, cell_index = slots // (cells * cells), slots % (cells * cells)
    corner = np.stack([cell_index % cells, cell_index // cells], 1) * cell + rng.uniform(2, 20, (len(slots), 2))
    boxes = np.concatenate([corner, corner + rng.uniform(25, 75, (len(slots), 2))], 1)
    annotations = [ann(f"im{m}", boxes[image == m], [CLASSES[k - 1] for k in labels[image == m]],
                       size=(cells * cell, cells * cell)) for m in range(images)]
    rows = []
    for m, k, box in zip(image, labels, boxes):
        size = box[2:] - box[:2]
        for _ in range(rng.integers(0, 4)):
            jitter = rng.normal(0, 0.18, 4) * np.concatenate([size, size])
            rows.append((f"im{m}", int(k), box + jitter))
        if rng.random() < 0.5:  # concentric, inside, IoU = area ratio within 0.03 of 0.5
            ratio = 0.5 + rng.choice([-1, 1]) * rng.uniform(0.002, 0.03)
            centre = (box[:2] + box[2:]) / 2
            half = size / 2 * np.sqrt(ratio)
            rows.append((f"im{m}", int(k), np.concatenate([centre - half, centre + half])))
        if rng.random() < 0.3:
            rows.append((f"im{m}", 3 - int(k), box + rng.normal(0, 2, 4)))
    for _ in range(rng.integers(3, 10)):
        xy = rng.uniform(0, cells * cell - 40, 2)
        box = np.concatenate([xy, xy + rng.uniform(10, 60, 2)])
        rows.append((f"im{rng.integers(images)}", int(rng.integers(1, 3)), box))
    scores = rng.permutation(len(rows)) / len(rows) + 0.001
    detections = dets([(m, k, s, b.tolist()) for (m, k, b), s in zip(rows, scores)])
    return annotations, detections


def coco_ap50_from_area(voc_class) -> float:
    """COCO's AP50 implied by VOC's area AP when every recall lies on COCO's 0.01 grid.

    The area AP is (1/100) sum over t = .01, .02, .., 1 of env(t), the precision envelope at
    recall >= t (0 past the last recall); COCO's 101-point AP adds t = 0, whose env is the
    highest precision reached, and divides by 101."""
    best = float(np.max(voc_class.precision, initial=0.0))
    return (100 * voc_class.ap + best) / 101


def disagreements(voc, coco, tolerance=1e-9) -> list[str]:
    return [v.name for v, c in zip(voc.classes, coco.classes)
            if not abs(coco_ap50_from_area(v) - c.ap50) <= tolerance]


def max_iou_near_half(annotations, detections):
    """min over detections of |IoU - 0.5| against any box of its image (the premise that
    floating point cannot flip a match)."""
    gaps = []
    for i, box in zip(detections.image_index, detections.boxes):
        for g in annotations[int(detections.images[i][2:])].boxes.astype(np.float64):
            iw = max(0.0, min(box[2], g[2]) - max(box[0], g[0]))
            ih = max(0.0, min(box[3], g[3]) - max(box[1], g[1]))
            inter = iw * ih
            union = np.prod(box[2:] - box[:2]) + np.prod(g[2:] - g[:2]) - inter
            gaps.append(abs(inter / union - 0.5))
    return min(gaps)


def test_coco_ap50_agrees_with_voc_area_ap():
    """An independent check of ``voc_ap.evaluate`` (metric "area", IoU 0.5) by pycocotools.

    The rules agree on these cases, so the numbers must match to rounding (1e-9):
    - Interpolation: COCO samples the precision envelope at the 101 recalls 0:.01:1, VOC's area
      rule integrates it. With every recall on that grid (npos 4 or 5) the two are tied exactly
      by :func:`coco_ap50_from_area`; off the grid they differ by up to ~0.01.
    - Matching: COCO gives a detection the best *unmatched* box with IoU >= .5, VOC its best box
      (FP if taken); with disjoint boxes a detection reaches IoU .5 with at most one box, so both
      agree. No difficult boxes (COCO crowd boxes are matched by intersection over the
      detection's area), no IoU within 1e-6 of 0.5 (pycocotools' C IoU vs numpy's), distinct
      scores (tie order), fewer than 100 detections per image and class (COCO's maxDets).
    - Pixels: COCO's IoU uses w * h, VOC's devkit adds 1 to inclusive widths; sppdet's
      continuous boxes already carry that +1, so the same boxes go to both.
    The check can fail: VOC07's 11-point AP, the raw (non-envelope) precision's area and ground
    truth one pixel wider (the +1 counted twice) each break it on some of these cases.
    """
    pytest.importorskip("pycocotools")
    from sppdet.evaluation.coco_metric import evaluate_coco

    caught = {"voc07": 0, "raw precision": 0, "+1 twice": 0}
    for seed in range(8):
        annotations, detections = disjoint_case(seed)
        assert max_iou_near_half(annotations, detections) > 1e-6
        voc = evaluate(annotations, detections, CLASSES, "area", 0.5)
        coco = evaluate_coco(annotations, detections, CLASSES)
        assert [c.npos for c in voc.classes] == [c.npos for c in coco.classes]
        assert all(0 < c.ap < 1 for c in voc.classes), "a case too easy to tell rules apart"
        assert disagreements(voc, coco) == [], seed
        assert coco.stats["AP50"] == pytest.approx(np.mean([c.ap50 for c in coco.classes]), abs=1e-12)

        voc07 = evaluate(annotations, detections, CLASSES, "voc07", 0.5)
        raw = dataclasses.replace(voc, classes=tuple(
            dataclasses.replace(c, ap=float(np.sum(np.diff(c.recall, prepend=0.0) * c.precision)))
            for c in voc.classes))
        wider = [ann(a.image_id, a.boxes + np.float32([0, 0, 1, 1]), a.names, size=(a.width, a.height))
                 for a in annotations]
        caught["voc07"] += bool(disagreements(voc07, coco))
        caught["raw precision"] += bool(disagreements(raw, coco))
        caught["+1 twice"] += bool(disagreements(voc, evaluate_coco(wider, detections, CLASSES)))
    assert all(caught.values()), caught


# ------------------------------------------------------------------------------------------
# (c) the command

# circle: t1 exact (TP), t2's difficult box exact (ignored: crowd), t2 exact (TP) -> AP 1
# square: t3 nothing there (FP, top score), t1 exact (TP) -> precision .5 at every recall: AP .5
# sizes: circles 40x40 = 1600 px (medium), the square 30x30 = 900 px (small), no large box; the
# FP is small too (a medium FP would be ignored by "AP small": COCO drops unmatched detections
# outside the size range)
TEST = {"t1": ([[10, 10, 50, 50], [60, 60, 90, 90]], ["circle", "square"], [0, 0]),
        "t2": ([[0, 0, 20, 20], [30, 30, 70, 70]], ["circle", "circle"], [1, 0]),
        "t3": ([], [], [])}
ROWS = [("t3", 2, 0.95, [5, 5, 25, 25]), ("t1", 1, 0.9, [10, 10, 50, 50]), ("t2", 1, 0.85, [0, 0, 20, 20]),
        ("t2", 1, 0.8, [30, 30, 70, 70]), ("t1", 2, 0.7, [60, 60, 90, 90])]


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "voc"
    annotations = []
    for image_id, (boxes, names, difficult) in TEST.items():
        annotations.append(ann(image_id, boxes, names, difficult))
        write_annotation(root / "Annotations" / f"{image_id}.xml", annotations[-1])
    write_split(root, "test", list(TEST))
    write_split(root, "trainval", list(TEST))
    classes = ("circle", "square")
    write_coco_json(tmp_path / "d.json", dets(ROWS), classes, ground_truth=annotations)
    return tmp_path, root


def run(tmp_path, *args):
    result = CliRunner().invoke(eval_command, ["--workdir", str(tmp_path / "work"), *args])
    assert "Traceback" not in result.output
    return result


def test_eval_metric_coco(dataset):
    pytest.importorskip("pycocotools")
    tmp_path, root = dataset
    result = run(tmp_path, "--data", str(root), "--metric", "coco", "--detections", str(tmp_path / "d.json"),
                 "--json", str(tmp_path / "coco.json"), "--quiet")
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "coco.json").read_text())
    assert (data["metric"], data["split"]) == ("coco", "test")
    assert data["classes"]["circle"] == {"ap": pytest.approx(1.0), "ap50": pytest.approx(1.0),
                                         "ap75": pytest.approx(1.0), "npos": 2, "ndet": 3}
    assert data["classes"]["square"]["ap"] == pytest.approx(0.5)
    stats = data["stats"]
    assert stats["AP"] == stats["AP50"] == stats["AP75"] == pytest.approx(0.75)
    assert (stats["AP_small"], stats["AP_medium"], stats["AP_large"]) == (pytest.approx(0.5), pytest.approx(1.0), None)
    assert stats["AR100"] == pytest.approx(1.0)
    assert "AP @ IoU .50:.95" in result.output and "0.7500" in result.output and "circle" in result.output


def test_eval_metric_coco_option_errors(dataset):
    tmp_path, root = dataset
    common = ["--data", str(root), "--metric", "coco", "--detections", str(tmp_path / "d.json")]
    assert run(tmp_path, *common, "--iou", "0.7").exit_code == 2
    assert run(tmp_path, *common, "--plots", str(tmp_path / "plots")).exit_code == 2


def test_eval_metric_coco_without_the_library(dataset, monkeypatch):
    tmp_path, root = dataset
    for name in ("pycocotools", "pycocotools.coco", "pycocotools.cocoeval"):
        monkeypatch.setitem(sys.modules, name, None)  # import now raises ImportError
    result = run(tmp_path, "--data", str(root), "--metric", "coco", "--detections", str(tmp_path / "d.json"))
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and "pip install 'sppdet[coco]'" in result.output
    # the VOC metrics do not need it
    assert run(tmp_path, "--data", str(root), "--detections", str(tmp_path / "d.json"), "--quiet").exit_code == 0
