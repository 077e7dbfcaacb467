"""``sppdet detect``: drawing, input expansion, and detection on new files with a tiny trained model."""

from __future__ import annotations

import json
import math
import shutil

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli.detect import detect
from sppdet.models.backbones import build_backbone
from sppdet.stages.train_bbox import run_train_bbox
from sppdet.config import DetectConfig, FinetuneConfig, ProposeConfig, SvmConfig
from sppdet.data.voc import write_split
from sppdet.stages.detect import (DEFAULT_SCORE_THRESHOLD, ImageDetector, check_names, detect_files,
                                  expand_inputs)
from sppdet.workdir.trained import load_detector, detect_split
from sppdet.structures.boxes import mirror_boxes
from sppdet.ops.views import view_boxes
from sppdet.models.features import compute_features
from sppdet.ops.spp import pool_windows
from sppdet.vis.draw import PALETTE, class_colour, draw_detections, line_thickness, write_image
from sppdet.errors import ConfigError, DatasetError, ModelError, WorkdirError
from sppdet.stages.extract import prepare_extract, run_extract
from sppdet.workdir.trained import rebuild_trunk
from sppdet.workdir.caches import feature_path, features_dir, features_info
from sppdet.stages.finetune import run_finetune
from sppdet.workdir.trained import finetuned_head
from sppdet.models.head import fc7_features
from sppdet.stages.propose import prepare_propose, run_propose
from sppdet.workdir.store import WorkDir
from sppdet.stages import train_svm as svm_stage
from sppdet.models.object_copies import augmented_windows
from sppdet.data.images import load_bgr
from sppdet.stages.train_svm import BALANCE_IMAGES, BALANCE_WINDOWS, run_train_svm
from sppdet.workdir.window_source import WindowSource

CLASSES = ("disc", "square")
TINY = dict(backbone="zf5", width=0.125, scales=(96,), device="cpu")


# ---------------------------------------------------------------------------------------------
# drawing


def test_draw_detections_draws_boxes_and_labels_only():
    image = np.full((120, 160, 3), 90, np.uint8)
    boxes = np.array([[20.0, 30.0, 80.0, 90.0]], np.float32)
    out = draw_detections(image, boxes, [0.9], [2], CLASSES)
    assert out.shape == (120, 160, 3) and out.dtype == np.uint8
    assert (image == 90).all(), "the input must not be modified"
    colour = class_colour(2)
    # the outline covers the box's pixels: columns 20..79, rows 30..89
    for y, x in [(60, 20), (60, 79), (89, 50), (30, 50)]:
        assert tuple(out[y, x]) == colour
    assert (out[40:80, 30:70] == 90).all(), "the box's inside stays untouched"
    assert (out[:30, 20:60] != 90).any(), "the label sits above the box"
    assert (out[95:, :] == 90).all() and (out[:, 100:] == 90).all()


def test_draw_detections_edge_cases():
    gray = np.full((60, 80), 200, np.uint8)
    empty = draw_detections(gray, np.zeros((0, 4)), [], [], CLASSES)
    assert empty.shape == (60, 80, 3) and (empty == 200).all()
    # a box at the top edge reaching past the image: clipped, label inside the box
    out = draw_detections(gray, [[-5.0, 0.0, 200.0, 50.0]], [1.5], [1], CLASSES)
    assert tuple(out[0, 40]) == class_colour(1) and tuple(out[49, 40]) == class_colour(1)
    assert tuple(out[30, 0]) == class_colour(1) and tuple(out[30, 79]) == class_colour(1)
    assert (out[5:15, :40] != 200).any()
    with pytest.raises(ValueError):
        draw_detections(gray, [[0, 0, 5, 5]], [1.0, 2.0], [1], CLASSES)


def test_colours_and_thickness():
    assert len({class_colour(k) for k in range(1, len(PALETTE) + 1)}) == len(PALETTE)
    assert class_colour(1) == class_colour(1 + len(PALETTE))
    assert [line_thickness(h, w) for h, w in ((120, 160), (300, 400), (750, 1000), (3000, 4000))] == [
        1, 2, 4, 17]


def test_write_image_keeps_the_format(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    write_image(tmp_path / "a.png", image)
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "a.png")), image)
    write_image(tmp_path / "b.JPG", image)
    assert (tmp_path / "b.JPG").read_bytes()[:2] == b"\xff\xd8"
    with pytest.raises(DatasetError, match="cannot write .xyz"):
        write_image(tmp_path / "c.xyz", image)


# ---------------------------------------------------------------------------------------------
# inputs


def test_expand_inputs(tmp_path):
    folder = tmp_path / "photos"
    (folder / "deeper").mkdir(parents=True)
    for name in ("b.png", "a.JPG", "notes.txt", "deeper/c.jpeg"):
        (folder / name).write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    assert expand_inputs([folder]) == [folder / "a.JPG", folder / "b.png"]
    assert expand_inputs([str(folder / "*.png"), str(folder / "**" / "*.jpeg")]) == [
        folder / "b.png", folder / "deeper" / "c.jpeg"]
    # duplicates dropped (first mention wins); a named file is kept whatever its suffix or state
    assert expand_inputs([folder / "b.png", folder, folder / "notes.txt", tmp_path / "gone.jpg"]) == [
        folder / "b.png", folder / "a.JPG", folder / "notes.txt", tmp_path / "gone.jpg"]
    with pytest.raises(DatasetError, match="empty"):
        expand_inputs([tmp_path / "empty"])
    with pytest.raises(DatasetError, match=r"nothing\*\.png: pattern matches no image files"):
        expand_inputs([str(tmp_path / "nothing*.png")])


def test_expand_inputs_reads_at_lists(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a.png", "b.png", "c.jpg"):
        (folder / name).write_bytes(b"x")
    listing = tmp_path / "lists" / "images.txt"
    listing.parent.mkdir()
    listing.write_text(f"# a comment\n../photos/b.png\n\n  {folder / 'c.jpg'}  \n../photos/*.png\n")
    # relative entries from the list's folder; patterns expand; the first mention wins
    assert expand_inputs([f"@{listing}"]) == [folder / "b.png", folder / "c.jpg", folder / "a.png"]
    with pytest.raises(DatasetError, match="cannot read this list of images"):
        expand_inputs([f"@{tmp_path / 'absent.txt'}"])
    (tmp_path / "@odd.png").write_bytes(b"x")  # an existing file named with @ is a file
    assert expand_inputs([str(tmp_path / "@odd.png")]) == [tmp_path / "@odd.png"]


def test_check_names(tmp_path):
    with pytest.raises(DatasetError, match="share the image id 'x'"):
        check_names([tmp_path / "a" / "x.png", tmp_path / "b" / "x.jpg"], None)
    with pytest.raises(ConfigError, match="overwrite the input"):
        check_names([tmp_path / "x.png"], tmp_path)
    check_names([tmp_path / "x.png", tmp_path / "y.png"], tmp_path / "out")


# ---------------------------------------------------------------------------------------------
# a tiny trained work directory


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shape_scene, write_scene_dataset):
    """(work directory, dataset root, folder of new images) with every stage trained."""
    base = tmp_path_factory.mktemp("detect")
    root, work = base / "voc", base / "work"
    rng = np.random.default_rng(0)
    ids = write_scene_dataset(root, CLASSES, 8, rng, 120, 160, (28, 50))
    write_split(root, "trainval", ids)
    run_propose(prepare_propose(work, ProposeConfig(max_proposals=300), "trainval", root), workers=1)
    run_extract(prepare_extract(work, split="trainval", **TINY))
    workdir = WorkDir(work)
    run_finetune(workdir, "trainval", FinetuneConfig(hidden=(32, 32), epochs=2))
    run_train_svm(workdir, "trainval", SvmConfig(layer="fc7"))
    run_train_bbox(workdir, "trainval")

    new = base / "new"
    new.mkdir()
    image, _, _ = shape_scene(np.random.default_rng(1), CLASSES, 120, 160, (28, 50))
    cv2.imwrite(str(new / "gray.png"), cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))
    image, _, _ = shape_scene(np.random.default_rng(2), CLASSES, 100, 150, (28, 50))
    alpha = np.full((100, 150, 1), 255, np.uint8)
    alpha[:10] = 0
    cv2.imwrite(str(new / "rgba.png"), np.concatenate([image, alpha], axis=2))
    return work, root, new


def test_pool5_plus_fc7_svms_read_both_parts_balanced(trained, tmp_path):
    """--layer pool5+fc7: fc7 weighted by the mean-norm ratio of a seeded sample (loop reference),
    and the detector scores [pool5, weight * fc7] with the saved SVMs."""
    work, _, new = trained
    copy = tmp_path / "work"
    shutil.copytree(work, copy)
    workdir = WorkDir(copy)
    run_train_svm(workdir, "trainval", SvmConfig(layer="pool5+fc7", seed=3))
    record = workdir.config()["stages"]["train-svm"]
    source = WindowSource(workdir, "trainval")
    detector = load_detector(workdir, source.feature_hash, source.dim)
    detector_weight = detector.fc7_weight
    head, _ = finetuned_head(workdir, source.feature_hash, source.dim)
    rng, pool5_norms, fc7_norms = np.random.default_rng(3), [], []
    for image_id in rng.permutation(source.image_ids)[:BALANCE_IMAGES]:
        proposals = source.proposals(image_id)
        chosen = proposals[rng.permutation(len(proposals))[:BALANCE_WINDOWS]]
        for row in source.pool(image_id, chosen):
            pool5_norms.append(np.linalg.norm(row))
            fc7_norms.append(np.linalg.norm(fc7_features(head, row[None])[0]))
    assert record["layer"] == "pool5+fc7"
    assert detector_weight == pytest.approx(np.mean(pool5_norms) / np.mean(fc7_norms), rel=1e-4)
    image_id = source.image_ids[0]
    pooled = source.pool(image_id, source.proposals(image_id))
    features = np.concatenate([pooled, detector_weight * fc7_features(head, pooled)], axis=1)
    assert detector.svms.weights.shape[0] == source.dim + 32
    expected = features * detector.svms.feature_scale @ detector.svms.weights + detector.svms.biases
    np.testing.assert_allclose(detector.score(pooled), expected, rtol=1e-4, atol=1e-4)
    run = detect_files(ImageDetector(copy, device="cpu"), [new / "gray.png"])
    assert run.errors == [] and np.isfinite(run.results[0].scores).all()


def test_augmented_positives_add_copies_of_each_object(trained, tmp_path):
    """--augment-positives flip,rot90: each positive object adds its 7 copies, pooled as
    sppdet.models.object_copies pools them; unknown names and --method rcnn are refused up front."""
    work, _, _ = trained
    copy = tmp_path / "work"
    shutil.copytree(work, copy)
    workdir = WorkDir(copy)
    plain = run_train_svm(workdir, "trainval", SvmConfig(layer="pool5"))
    augmented = run_train_svm(workdir, "trainval", SvmConfig(layer="pool5", augment_positives=("flip", "rot90")))
    assert augmented.folder != plain.folder
    assert [r.positives for r in augmented.reports] == [8 * r.positives for r in plain.reports]
    source = WindowSource(workdir, "trainval")
    windows = svm_stage._positive_windows(source, source.image_ids[0], 0, None,
                                          SvmConfig(layer="pool5", augment_positives=("flip",)),
                                          rebuild_trunk(workdir, source.features_folder, source.info))
    gt_boxes, gt_labels, _ = source.ground_truth(source.image_ids[0])
    expected, _ = augmented_windows(rebuild_trunk(workdir, source.features_folder, source.info),
                                    load_bgr(source.dataset.image_path(source.image_ids[0])), gt_boxes[gt_labels > 0],
                                    source.info.config.scales, ("flip",), np.random.default_rng(0),
                                    source.info.config.target)
    np.testing.assert_allclose(windows.features[-len(expected):], expected, rtol=1e-6)
    before = sorted(p.name for p in copy.iterdir())
    with pytest.raises(ConfigError, match="--augment-positives shear"):
        run_train_svm(workdir, "trainval", SvmConfig(layer="pool5", augment_positives=("shear",)))
    assert sorted(p.name for p in copy.iterdir()) == before


def test_extract_tta_caches_each_views_features(trained, tmp_path):
    work, root, _ = trained
    copy = tmp_path / "work"
    shutil.copytree(work, copy)
    workdir = WorkDir(copy)
    job = prepare_extract(copy, split="trainval", views=("hflip", "rot180"), **TINY)
    before = {p.name: p.stat().st_mtime_ns for p in job.folder.glob("*.npz")}
    summary = run_extract(job)
    assert summary.computed == len(job.image_ids)  # only the views were missing
    assert {p.name: p.stat().st_mtime_ns for p in job.folder.glob("*.npz")} == before
    assert run_extract(job).computed == 0
    image_id = job.image_ids[0]
    bgr = cv2.imread(str(job.dataset.image_path(image_id)))
    source = WindowSource(workdir, "trainval")
    proposals = source.proposals(image_id)
    for view, turned in (("hflip", bgr[:, ::-1]), ("rot180", bgr[::-1, ::-1])):
        cached = np.load(feature_path(job.folder, image_id, view))
        maps, _ = compute_features(job.backbone, np.ascontiguousarray(turned), TINY["scales"])
        np.testing.assert_array_equal(cached["map_0"], maps[0])
        expected = pool_windows(maps, cached["scale_factors"], view_boxes(proposals, bgr.shape[:2], view),
                                source.info.stride, source.info.offset).numpy()
        np.testing.assert_array_equal(source.pool(image_id, proposals, view), expected)


def test_tta_detections_follow_the_image(trained, tmp_path):
    """With test-time views the detector treats an image and its mirror image alike: scoring
    the mirror (its windows mirrored, the two views swapped) gives the same scores and mirrored
    boxes; detect_split averages over the views."""
    work, _, _ = trained
    copy = tmp_path / "work"
    shutil.copytree(work, copy)
    workdir = WorkDir(copy)
    run_extract(prepare_extract(copy, split="trainval", views=("hflip", "vflip"), **TINY))
    source = WindowSource(workdir, "trainval")
    detector = load_detector(workdir, source.feature_hash, source.dim,
                                     DetectConfig(score_threshold=-5.0))
    image_id = source.image_ids[0]
    annotation = source.dataset.annotation(image_id)
    hw = (annotation.height, annotation.width)
    windows = source.proposals(image_id)
    pooled, mirrored = source.pool(image_id, windows), source.pool(image_id, windows, "hflip")
    boxes, scores, labels = detector.detect(pooled, windows, hw, [("hflip", mirrored)])
    boxes_m, scores_m, labels_m = detector.detect(mirrored, mirror_boxes(windows, hw[1]), hw, [("hflip", pooled)])
    np.testing.assert_allclose(scores_m, scores, rtol=1e-6)
    np.testing.assert_array_equal(labels_m, labels)
    np.testing.assert_allclose(mirror_boxes(boxes_m, hw[1]), boxes, atol=1e-3)
    plain = detector.detect(pooled, windows, hw)
    assert not np.array_equal(plain[1], scores)
    both = np.round((detector.score(pooled) + detector.score(mirrored)).ravel() / 2, 4)
    assert set(np.round(scores, 4)) <= set(both)
    flipped = source.pool(image_id, windows, "vflip")
    three = detector.detect(pooled, windows, hw, [("hflip", mirrored), ("vflip", flipped)])
    mean = (detector.score(pooled) + detector.score(mirrored) + detector.score(flipped)) / 3
    assert set(np.round(three[1], 4)) <= set(np.round(mean.ravel(), 4))
    run = detect_split(workdir, "trainval", DetectConfig(tta=("hflip", "vflip")))
    assert run.scores.size and np.isfinite(run.scores).all()


def test_tta_without_view_features_says_what_to_run(trained):
    work, _, _ = trained
    with pytest.raises(WorkdirError, match="extract --tta rot180"):
        detect_split(WorkDir(work), "trainval", DetectConfig(tta=("rot180",)))
    with pytest.raises(ConfigError, match="--tta spin"):
        detect_split(WorkDir(work), "trainval", DetectConfig(tta=("spin",)))


def test_image_detector_tta_caches_every_view(trained, tmp_path):
    work, _, new = trained
    copy = tmp_path / "work"
    shutil.copytree(work, copy)
    detector = ImageDetector(copy, DetectConfig(tta=("hflip",), score_threshold=-5.0), device="cpu")
    first = detect_files(detector, [new / "gray.png"]).results[0]
    assert first.computed and len(list(detector.cache_folder.glob("*.hflip.npz"))) == 1
    second = detect_files(detector, [new / "gray.png"]).results[0]
    assert not second.computed
    np.testing.assert_array_equal(second.scores, first.scores)
    plain = detect_files(ImageDetector(copy, DetectConfig(score_threshold=-5.0), device="cpu"),
                         [new / "gray.png"]).results[0]
    assert not np.array_equal(plain.scores, first.scores)


def _cache_mtimes(folder):
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p.suffix in (".npy", ".npz")}


def test_detect_command_writes_images_and_json(trained, tmp_path):
    work, _, new = trained
    out = tmp_path / "out"
    result = CliRunner().invoke(detect, [str(new / "*.png"), "--workdir", str(work), "--out", str(out),
                                         "--score-threshold", "-1", "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "s per image" in result.stdout and "rgba.png" in result.stdout
    for name, hw in (("gray.png", (120, 160)), ("rgba.png", (100, 150))):
        annotated = cv2.imread(str(out / name), cv2.IMREAD_UNCHANGED)
        assert annotated.shape == (*hw, 3), name
    entries = json.loads((out / "detections.json").read_text())
    mapping = json.loads((out / "detections.images.json").read_text())  # COCO tools' ground-truth file
    names = {image["id"]: image["sppdet_id"] for image in mapping["images"]}
    assert sorted(names.values()) == ["gray", "rgba"] and all(isinstance(i, int) for i in names)
    assert [(i["file_name"], i["width"], i["height"]) for i in sorted(mapping["images"], key=lambda i: i["id"])] == [
        ("gray.png", 160, 120), ("rgba.png", 150, 100)]
    assert [c["name"] for c in mapping["categories"]] == list(CLASSES)
    for entry in entries:
        entry["image_id"] = names[entry["image_id"]]
    assert entries and {e["image_id"] for e in entries} <= {"gray", "rgba"}
    for entry in entries:
        assert set(entry) == {"image_id", "category_id", "category", "bbox", "score"}
        assert 1 <= entry["category_id"] <= len(CLASSES)
        assert entry["category"] == CLASSES[entry["category_id"] - 1]
        x, y, w, h = entry["bbox"]
        height, width = (120, 160) if entry["image_id"] == "gray" else (100, 150)
        assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= width + 1e-3 and y + h <= height + 1e-3
        assert math.isfinite(entry["score"]) and entry["score"] >= -1


def test_second_run_uses_the_cache(trained, tmp_path):
    work, _, new = trained
    paths = [new / "gray.png", new / "rgba.png"]
    detector = ImageDetector(work, DetectConfig(score_threshold=-1.0), "cpu")
    first = detect_files(detector, paths, tmp_path / "a", tmp_path / "a.json")
    before = _cache_mtimes(first.cache_folder)
    assert len(before) == 4  # proposals and features of each image
    second = detect_files(ImageDetector(work, DetectConfig(score_threshold=-1.0), "cpu"), paths,
                          tmp_path / "b", tmp_path / "b.json")
    assert second.computed == 0 and not second.errors and len(second.detections()) > 0
    assert _cache_mtimes(second.cache_folder) == before
    for a, b in zip(first.results, second.results):
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.scores, b.scores)
    # a higher threshold reuses the cache and keeps a subset
    strict = detect_files(ImageDetector(work, DetectConfig(score_threshold=DEFAULT_SCORE_THRESHOLD), "cpu"),
                          paths)
    assert strict.computed == 0
    assert all((r.scores >= 0).all() for r in strict.results)
    assert len(strict.detections()) <= len(second.detections())


def test_outputs_other_tools_read_and_a_class_filter(trained, tmp_path):
    """--save-txt (YOLO), --save-xml (VOC), --csv and --classes hold the same detections as the
    run's results, in each format's convention."""
    import csv

    from sppdet.data.voc import read_annotation
    from sppdet.errors import ConfigError as Refused

    work, _, new = trained
    paths = [new / "gray.png", new / "rgba.png"]
    detector = ImageDetector(work, DetectConfig(score_threshold=-1.0), "cpu")
    out = tmp_path / "out"
    run = detect_files(detector, paths, out, None, save_txt=True, save_xml=True, csv_path=tmp_path / "d.csv")
    total = sum(len(r.scores) for r in run.results)
    assert total > 0
    rows = list(csv.DictReader((tmp_path / "d.csv").open()))
    assert len(rows) == total and {r["class"] for r in rows} <= set(CLASSES)
    for result in run.results:
        height, width = result.image_hw
        lines = (out / "labels" / f"{result.image_id}.txt").read_text().splitlines()
        assert len(lines) == len(result.scores)
        for line, box, score, label in zip(lines, result.boxes, result.scores, result.labels):
            k, cx, cy, w, h, conf = line.split()
            assert int(k) == label - 1 and abs(float(conf) - score) < 1e-5
            assert abs(float(cx) * width - (box[0] + box[2]) / 2) < 1e-3
            assert abs(float(h) * height - (box[3] - box[1])) < 1e-3
        xml = read_annotation(out / "xml" / f"{result.image_id}.xml")
        assert xml.names == tuple(CLASSES[label - 1] for label in result.labels)
        assert (xml.width, xml.height) == (width, height)
        np.testing.assert_allclose(xml.boxes, result.boxes, atol=1.0)  # VOC stores whole pixels
    only = CLASSES[int(run.results[0].labels[0]) - 1]
    kept = detect_files(detector, paths, keep_classes=[only])
    assert all((r.labels == CLASSES.index(only) + 1).all() for r in kept.results)
    assert sum(len(r.scores) for r in kept.results) == sum(
        int((r.labels == CLASSES.index(only) + 1).sum()) for r in run.results)
    with pytest.raises(Refused, match="not classes of this detector"):
        detect_files(detector, paths, keep_classes=["unicorn"])
    with pytest.raises(Refused, match="give --out"):
        detect_files(detector, paths, save_txt=True)


def test_same_detections_as_the_split_pipeline(trained, tmp_path):
    """A dataset image detected as a new file gets exactly the detections of ``detect_split``:
    same proposals, same trunk, same pooling."""
    work, root, _ = trained
    copy = tmp_path / "renamed.png"
    shutil.copy(root / "JPEGImages" / "003.png", copy)
    config = DetectConfig(score_threshold=-1.0)
    run = detect_files(ImageDetector(work, config, "cpu"), [copy])
    split = detect_split(WorkDir(work), "trainval", config)
    rows = split.image_index == split.images.index("003")
    (result,) = run.results
    assert len(result.scores) > 0
    np.testing.assert_allclose(result.boxes, split.boxes[rows], atol=1e-4)
    np.testing.assert_allclose(result.scores, split.scores[rows], atol=1e-5)
    np.testing.assert_array_equal(result.labels, split.labels[rows])


def test_unreadable_file_is_one_error_line(trained, tmp_path):
    work, _, new = trained
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    out = tmp_path / "out"
    result = CliRunner().invoke(detect, [str(broken), str(new / "gray.png"), "--workdir", str(work),
                                         "--out", str(out), "--device", "cpu", "--quiet"])
    assert result.exit_code == 1
    error_lines = result.stderr.strip().splitlines()
    assert len(error_lines) == 1 and "broken.png" in error_lines[0], result.stderr
    assert (out / "gray.png").is_file() and not (out / "broken.png").exists()
    assert "1 of 2 images" in result.stdout
    images = json.loads((out / "detections.images.json").read_text())["images"]
    assert [i["sppdet_id"] for i in images] == ["gray"]  # the broken image has no entry
    assert {e["image_id"] for e in json.loads((out / "detections.json").read_text())} <= {images[0]["id"]}
    run = detect_files(ImageDetector(work, device="cpu"), [tmp_path / "gone.jpg", new / "rgba.png"])
    assert [r.image_id for r in run.results] == ["rgba"]
    assert len(run.errors) == 1 and "gone.jpg: cannot read image" in run.errors[0].message


def test_missing_pattern_and_untrained_workdir(trained, tmp_path):
    work, _, new = trained
    result = CliRunner().invoke(detect, [str(tmp_path / "none*.jpg"), "--workdir", str(work)])
    assert result.exit_code == 1 and "matches no image files" in result.stderr
    result = CliRunner().invoke(detect, [str(new / "gray.png"), "--workdir", str(tmp_path / "empty")])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "train-svm" in lines[0] and "Traceback" not in result.output


def test_rebuilt_trunk_must_match_the_features(trained, tmp_path):
    _, root, _ = trained
    weights = tmp_path / "trunk.pt"
    torch.save(build_backbone("zf5", 0.125, seed=3).trunk.state_dict(), weights)
    work = WorkDir(tmp_path / "work")
    job = prepare_extract(work.root, split="trainval", weights=weights, data_root=root, **TINY)
    run_extract(job)
    folder = features_dir(work)
    info = features_info(folder)
    assert rebuild_trunk(work, folder, info).weights_id == info.config.weights
    torch.save(build_backbone("zf5", 0.125, seed=4).trunk.state_dict(), weights)
    with pytest.raises(ModelError, match="is not the one that computed"):
        rebuild_trunk(work, folder, info)
    weights.unlink()
    with pytest.raises(ModelError, match="are missing"):
        rebuild_trunk(work, folder, info)


def test_spp_scales_table_counts_every_object_once(trained):
    """benchmarks/spp_scales.py (issue 20's per-scale diagnosis) on the trained split: every
    non-difficult object lands in exactly one scale's row, and the shares are shares."""
    import spp_scales
    from sppdet.data.voc import VocDataset

    work, root, _ = trained
    result = spp_scales.scale_table(WorkDir(work), "trainval")
    objects = sum(int((~a.difficult).sum()) for a in VocDataset(root, "trainval", check_images=False).annotations())
    assert sum(row["objects"] for row in result["rows"]) == objects > 0
    assert [row["scale"] for row in result["rows"]] == sorted(row["scale"] for row in result["rows"])
    for row in result["rows"]:
        assert row["scale"] in result["scales"] and row["cells"] > 0
        assert all(0.0 <= row[key] <= 1.0 for key in ("border", "top1", "recall"))


def test_pooled_stats_compares_every_object_both_ways(trained, tmp_path):
    """benchmarks/pooled_stats.py (issue 20): with a pretrained trunk, every non-difficult object
    is pooled as an SPP window and as an R-CNN crop; the rcnn vectors are rcnn_pooled's, the
    shares are shares and the pyramid levels split the vector exactly."""
    import pooled_stats
    from sppdet.config import PretrainConfig
    from sppdet.data.voc import VocDataset
    from sppdet.models.crops import rcnn_pooled
    from sppdet.stages.pretrain import prepare_pretrain, run_pretrain

    work, root, _ = trained
    copy = tmp_path / "work"
    shutil.copytree(work, copy)
    workdir = WorkDir(copy)
    config = PretrainConfig(width=0.125, sizes=(48,), epochs=1, hidden=(32, 32), windows="random")
    run_pretrain(prepare_pretrain(copy, config, split="trainval", device="cpu"))
    run_extract(prepare_extract(workdir, split="trainval", scales=(96,), device="cpu"))
    run_finetune(workdir, "trainval", FinetuneConfig(hidden=(32, 32), epochs=1))
    summary = pooled_stats.compare(workdir, "trainval")
    objects = sum(int((~a.difficult).sum()) for a in VocDataset(root, "trainval", check_images=False).annotations())
    assert summary["objects"] == objects > 0 and summary["crop_side"] == 48
    assert sum(row["objects"] for row in summary["by_scale"]) == objects
    for row in summary["ways"].values():
        assert all(0.0 <= row[key] <= 1.0 for key in ("pretrain_top1", "tuned_top1", "nonzero"))
    assert -1.0 <= summary["cosine"] <= 1.0 and list(summary["cosine_by_level"]) == ["1x1", "2x2", "3x3", "6x6"]
    channels = features_info(features_dir(workdir)).channels
    assert pooled_stats._level_slices(channels)[-1][1].stop == WindowSource(workdir, "trainval").dim
    source = WindowSource(workdir, "trainval")
    trunk = rebuild_trunk(workdir, features_dir(workdir), features_info(features_dir(workdir)))
    assert not trunk.lrn  # the pretrained trunk runs as it trained
    norms = []
    for image_id in source.image_ids:
        boxes, labels, difficult = source.ground_truth(image_id)
        keep = (labels > 0) & ~difficult
        if keep.any():
            vectors = rcnn_pooled(trunk, load_bgr(source.dataset.image_path(image_id)), boxes[keep],
                                  source.levels, 48, config.context * 48 / 224)
            norms.append(np.linalg.norm(vectors, axis=1))
    assert summary["ways"]["rcnn"]["norm"] == pytest.approx(float(np.concatenate(norms).mean()), rel=1e-5)
