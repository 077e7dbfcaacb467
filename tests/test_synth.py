"""The built-in demo dataset: determinism, valid VOC output, splits, drawing convention, CLI."""

from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from cli.main import cli
from sppdet.data import synth
from sppdet.data.voc import VocDataset, read_annotation, read_split
from sppdet.errors import ConfigError, DatasetError


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def forty(tmp_path_factory) -> tuple[Path, synth.SynthSummary]:
    root = tmp_path_factory.mktemp("synth40")
    return root, synth.write_dataset(root, images=40, seed=0)


@pytest.fixture(scope="module")
def twelve(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth12")
    synth.write_dataset(root, images=12, seed=0)
    return root


def test_same_seed_gives_identical_bytes(twelve, tmp_path):
    synth.write_dataset(tmp_path, images=12, seed=0)
    assert _files(tmp_path) == _files(twelve)
    assert len(_files(twelve)) == 12 * 2 + len(synth.SPLITS) + 1


def test_workers_write_the_same_bytes(twelve, tmp_path):
    summary = synth.write_dataset(tmp_path, images=12, seed=0, workers=2)
    assert _files(tmp_path) == _files(twelve)
    reused = synth.write_dataset(twelve, images=12, seed=0)
    assert (summary.objects, summary.difficult, summary.splits) == (reused.objects, reused.difficult, reused.splits)


def test_images_depend_only_on_seed_and_index(twelve, forty):
    root40 = forty[0]
    for index in range(1, 13):
        name = f"JPEGImages/{synth.image_id(index)}.jpg"
        assert (twelve / name).read_bytes() == (root40 / name).read_bytes()


def test_other_seed_differs(twelve, tmp_path):
    synth.write_dataset(tmp_path, images=12, seed=1)
    ours, theirs = _files(tmp_path), _files(twelve)
    changed = [name for name in ours if name.startswith("JPEGImages") and ours[name] != theirs[name]]
    assert len(changed) == 12


def test_boxes_inside_images_and_files_agree(forty):
    root, _ = forty
    dataset = VocDataset(root, "trainval")
    for image_id in read_split(root, "trainval") + read_split(root, "test"):
        annotation = dataset.annotation(image_id)
        image = cv2.imread(str(dataset.image_path(image_id)))
        assert image is not None and image.shape == (annotation.height, annotation.width, 3)
        assert 300 <= annotation.width <= 500 and 300 <= annotation.height <= 500
        b = annotation.boxes
        assert np.all(b[:, 0] >= 0) and np.all(b[:, 1] >= 0)
        assert np.all(b[:, 2] <= annotation.width) and np.all(b[:, 3] <= annotation.height)
        assert np.all(b[:, 0] < b[:, 2]) and np.all(b[:, 1] < b[:, 3])
        assert np.array_equal(b, np.round(b))


def test_xml_round_trip_is_exact(forty):
    root, _ = forty
    for index in (1, 7, 23):
        _, rendered = synth.render_image(0, index)
        read = read_annotation(root / "Annotations" / f"{synth.image_id(index)}.xml")
        assert read.names == rendered.names and (read.width, read.height) == (rendered.width, rendered.height)
        assert np.array_equal(read.boxes, rendered.boxes)
        assert np.array_equal(read.difficult, rendered.difficult)


def test_every_class_present_and_difficult_rule(forty):
    root, summary = forty
    assert VocDataset(root, "trainval").classes == synth.CLASSES
    assert all(summary.objects[name] > 0 for name in synth.CLASSES)
    annotations = [a for split in ("trainval", "test") for a in VocDataset(root, split).annotations()]
    assert sum(len(a.names) for a in annotations) == sum(summary.objects.values())
    assert sum(int(a.difficult.sum()) for a in annotations) == sum(summary.difficult.values()) > 0
    for a in annotations:
        easy = a.boxes[~a.difficult]
        assert np.all(np.minimum(easy[:, 2] - easy[:, 0], easy[:, 3] - easy[:, 1]) >= synth.DIFFICULT_SIDE)


def test_splits_consistent(forty):
    root, summary = forty
    split = {name: read_split(root, name) for name in synth.SPLITS}
    assert set(split["trainval"]) == set(split["train"]) | set(split["val"])
    assert not set(split["train"]) & set(split["val"])
    assert not set(split["trainval"]) & set(split["test"])
    assert set(split["trainval"]) | set(split["test"]) == {synth.image_id(i) for i in range(1, 41)}
    assert len(split["test"]) == 16 and summary.splits == {name: len(ids) for name, ids in split.items()}


@pytest.mark.parametrize("name", ["circle", "square", "cross"])
def test_polygon_mask_follows_box_convention(name):
    """A pixel is in the mask iff its centre (i + .5, j + .5) is inside the polygon; a slow
    per-pixel point-in-polygon loop is the reference (pixels within 0.5 px of an edge excused;
    shapes without acute corners, where anti-aliasing smears further)."""
    angle = 0.4
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    polygon = (synth.UNIT_SHAPES[name] * np.array([21.3, 17.9])) @ rotation.T + np.array([30.25, 25.6])
    alpha, _, top_left = synth._polygon_mask(polygon, pad=1)
    contour = polygon.astype(np.float32).reshape(-1, 1, 2)
    for row in range(alpha.shape[0]):
        for col in range(alpha.shape[1]):
            centre = (float(top_left[0] + col + 0.5), float(top_left[1] + row + 0.5))
            distance = cv2.pointPolygonTest(contour, centre, True)
            if abs(distance) > 0.5:
                assert (alpha[row, col] >= 128) == (distance > 0), (row, col, distance)


@pytest.mark.parametrize("seed", [0, 3])  # seed 3 draws an outline, seed 0 does not
def test_draw_object_box_is_tight_and_clipped(seed):
    canvas = np.zeros((60, 80, 3), np.uint8)
    owner = np.zeros((60, 80), np.int32)
    square = np.array([(10.3, 20.7), (50.6, 20.7), (50.6, 40.2), (10.3, 40.2)])
    for shift, expected in ((0.0, (10, 20, 51, 41)), (40.0, (50, 20, 80, 41))):
        owner[:] = 0
        rng = np.random.default_rng(seed)
        box, full, inside = synth._draw_object(rng, canvas, owner, 1, square + (shift, 0))
        if seed == 0:
            assert tuple(box) == expected
        else:  # an outline of width t widens the box by ceil(t / 2) at most, never past the image
            grow = np.array(box) - expected
            assert np.all(np.abs(grow) <= 2) and box[2] <= 80 and box[0] < expected[0]
        rows, cols = np.nonzero(owner == 1)
        assert box[0] <= cols.min() and cols.max() + 1 <= box[2]
        assert box[1] <= rows.min() and rows.max() + 1 <= box[3]
        assert inside == (owner == 1).sum() and (inside == full) == (shift == 0)


def test_refuses_foreign_folder_and_regenerates_own(tmp_path, twelve):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError, match=str(tmp_path)):
        synth.write_dataset(tmp_path, images=5)
    with pytest.raises(ConfigError):
        synth.write_dataset(tmp_path / "new", images=2)
    again = tmp_path / "again"
    synth.write_dataset(again, images=20, seed=0)
    synth.write_dataset(again, images=12, seed=0)  # shrinking drops the stale images
    assert _files(again) == _files(twelve)


def test_cli_writes_and_reports(tmp_path):
    out = tmp_path / "data"
    result = CliRunner().invoke(cli, ["synth", str(out), "--images", "5", "--seed", "2", "--quiet"])
    assert result.exit_code == 0, result.output
    for word in (*synth.CLASSES, "difficult", *synth.SPLITS, str(out)):
        assert word in result.output
    assert len(read_split(out, "trainval")) + len(read_split(out, "test")) == 5


def test_cli_refuses_foreign_folder_in_one_line(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    result = CliRunner().invoke(cli, ["synth", str(tmp_path), "--images", "5"])
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1 and str(tmp_path) in result.output
    assert CliRunner().invoke(cli, ["synth", str(tmp_path / "x"), "--images", "2"]).exit_code == 2


def test_finished_build_is_reused_unless_incomplete(tmp_path):
    root = tmp_path / "d"
    first = synth.write_dataset(root, images=6, seed=2)
    image = root / "JPEGImages" / "000003.jpg"
    stamp = image.stat().st_mtime_ns
    assert synth.write_dataset(root, images=6, seed=2) == first
    assert image.stat().st_mtime_ns == stamp  # not re-rendered
    image.unlink()  # an incomplete dataset is rebuilt
    assert synth.write_dataset(root, images=6, seed=2) == first and image.is_file()
