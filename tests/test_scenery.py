"""The scenery generator: determinism, valid VOC output per look, splits, ground-truth rules, CLI."""

from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from cli.scenery import scenery as scenery_command
from sppdet.data import scenery
from sppdet.data.voc import VocDataset, read_annotation, read_split, split_path
from sppdet.errors import ConfigError, DatasetError

SIZES = {"glyphs": ((320, 640), (320, 640)), "signs": ((400, 800), (300, 600)), "cells": ((256, 384), (256, 384))}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, tuple[Path, scenery.ScenerySummary]]:
    out = {}
    for look in scenery.LOOKS:
        root = tmp_path_factory.mktemp(look)
        out[look] = root, scenery.write_scenery(root, look, images=6, seed=0)
    return out


@pytest.mark.parametrize("look", scenery.LOOKS)
def test_same_seed_gives_identical_bytes_and_prefixes(look, built, tmp_path):
    root, summary = built[look]
    again = scenery.write_scenery(tmp_path / "again", look, images=6, seed=0)
    assert _files(tmp_path / "again") == _files(root)
    assert (again.objects, again.difficult, again.splits) == (summary.objects, summary.difficult, summary.splits)
    scenery.write_scenery(tmp_path / "four", look, images=4, seed=0)  # the first 4 of 6 images
    four = {k: v for k, v in _files(tmp_path / "four").items() if k.startswith(("JPEGImages", "Annotations"))}
    assert len(four) == 8 and four == {k: v for k, v in _files(root).items() if k in four}


def test_workers_write_the_same_bytes(built, tmp_path):
    scenery.write_scenery(tmp_path, "signs", images=6, seed=0, workers=2)
    assert _files(tmp_path) == _files(built["signs"][0])


def test_other_seed_and_other_look_differ(built, tmp_path):
    scenery.write_scenery(tmp_path, "cells", images=6, seed=1)
    ours, theirs = _files(tmp_path), _files(built["cells"][0])
    images = [name for name in ours if name.startswith("JPEGImages")]
    assert images and all(ours[name] != theirs.get(name) for name in images)
    first, _ = scenery.render_image("glyphs", 0, 1)
    assert first.shape != scenery.render_image("signs", 0, 1)[0].shape


@pytest.mark.parametrize("look", scenery.LOOKS)
def test_annotations_round_trip_through_voc(look, built):
    root, summary = built[look]
    (low_w, high_w), (low_h, high_h) = SIZES[look]
    suffixes = set()
    for split in ("trainval", "test"):
        dataset = VocDataset(root, split)
        assert dataset.classes == scenery.CLASSES[look]
        for image_id in dataset.image_ids:
            annotation = dataset.annotation(image_id)
            path = dataset.image_path(image_id)
            suffixes.add(path.suffix)
            image = cv2.imread(str(path))
            assert image is not None and image.shape == (annotation.height, annotation.width, 3)
            assert low_w <= annotation.width <= high_w and low_h <= annotation.height <= high_h
            b = annotation.boxes
            assert len(b) >= 1 and set(annotation.names) <= set(scenery.CLASSES[look])
            assert np.all(b[:, :2] >= 0) and np.all(b[:, 2:] <= (annotation.width, annotation.height))
            assert np.all(b[:, :2] < b[:, 2:]) and np.array_equal(b, np.round(b))
            easy = b[~annotation.difficult]
            assert np.all(np.sqrt((easy[:, 2] - easy[:, 0]) * (easy[:, 3] - easy[:, 1])) >= scenery.DIFFICULT_SIZE)
            _, rendered = scenery.render_image(look, 0, int(image_id))
            assert rendered.names == annotation.names and rendered.filename == path.name
            assert np.array_equal(rendered.boxes, b) and np.array_equal(rendered.difficult, annotation.difficult)
    assert suffixes <= {".jpg", ".png"}
    assert sum(summary.objects.values()) == sum(
        len(a.names) for split in ("trainval", "test") for a in VocDataset(root, split).annotations())


def test_formats_are_mixed():
    suffixes = [scenery.image_suffix("signs", 0, i) for i in range(1, 41)]
    assert 3 <= suffixes.count(".png") <= 20 and ".jpg" in suffixes


@pytest.mark.parametrize("look", scenery.LOOKS)
def test_default_splits_are_trainval_and_test_only(look, built):
    root, summary = built[look]
    assert sorted(p.name for p in (root / "ImageSets" / "Main").iterdir()) == ["test.txt", "trainval.txt"]
    trainval, test = read_split(root, "trainval"), read_split(root, "test")
    assert len(test) == 2 and not set(trainval) & set(test)
    assert set(trainval) | set(test) == {scenery.image_id(i) for i in range(1, 7)}
    assert summary.splits == {"trainval": 4, "test": 2}


def test_with_val_adds_train_and_val_and_a_plain_rebuild_removes_them(built, tmp_path):
    root = tmp_path / "d"
    summary = scenery.write_scenery(root, "cells", images=6, seed=0, with_val=True)
    split = {name: read_split(root, name) for name in ("train", "val", "trainval", "test")}
    assert summary.splits == {name: len(ids) for name, ids in split.items()} and summary.splits["val"] == 2
    assert set(split["train"]) | set(split["val"]) == set(split["trainval"])
    assert not set(split["train"]) & set(split["val"])
    plain = built["cells"][0]
    assert split["trainval"] == read_split(plain, "trainval") and split["test"] == read_split(plain, "test")
    scenery.write_scenery(root, "cells", images=6, seed=0)
    assert _files(root) == _files(plain)
    assert not split_path(root, "val").exists()


def test_refuses_foreign_folder_bad_options_and_regenerates_own(built, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError, match=str(tmp_path)):
        scenery.write_scenery(tmp_path, "cells", images=5)
    with pytest.raises(DatasetError, match="scenery.json"):
        scenery.check_output(tmp_path)
    with pytest.raises(ConfigError, match="--look"):
        scenery.write_scenery(tmp_path / "new", "trees", images=5)
    with pytest.raises(ConfigError, match="--images"):
        scenery.write_scenery(tmp_path / "new", "cells", images=2, with_val=True)
    with pytest.raises(ConfigError, match="--seed"):
        scenery.write_scenery(tmp_path / "new", "cells", images=4, seed=-1)
    assert not (tmp_path / "new").exists()
    again = tmp_path / "again"
    scenery.write_scenery(again, "signs", images=8, seed=3)
    scenery.write_scenery(again, "glyphs", images=6, seed=0)  # another look: stale files go
    assert _files(again) == _files(built["glyphs"][0])


def test_finished_build_is_reused(tmp_path):
    first = scenery.write_scenery(tmp_path, "cells", images=3, seed=2)
    image = next((tmp_path / "JPEGImages").iterdir())
    stamp = image.stat().st_mtime_ns
    assert scenery.write_scenery(tmp_path, "cells", images=3, seed=2) == first
    assert image.stat().st_mtime_ns == stamp
    image.unlink()
    assert scenery.write_scenery(tmp_path, "cells", images=3, seed=2) == first and image.is_file()


def test_box_is_tight_and_clipped():
    """A pixel is in the box if the object covers at least about a quarter of it (every edge
    pixel covers half or more here), and the box is cut at the image border."""
    square = np.array([(10.3, 20.5), (50.6, 20.5), (50.6, 40.5), (10.3, 40.5)])
    for shift, expected in ((0.0, (10, 20, 51, 41)), (55.0, (65, 20, 80, 41))):
        scene = scenery._Scene(np.zeros((60, 80, 3), np.float32))
        scene.paste(scenery._raster([([square + (shift, 0)], (200, 100, 50))]), "thing")
        assert scene.boxes == [expected]
        rows, cols = np.nonzero(scene.owner == 1)
        assert expected[0] <= cols.min() and cols.max() + 1 <= expected[2]
        assert expected[1] <= rows.min() and rows.max() + 1 <= expected[3]
        _, annotation = scene.finish(np.random.default_rng(0), (1.0, 1.0), "000001", ".jpg")
        assert annotation.difficult.tolist() == [shift > 0]  # cut to 15 of 40 px wide: under 60% inside


@pytest.mark.parametrize("cover, expected", [(0.0, [False]), (0.7, [True]), (0.98, [])])
def test_occlusion_marks_difficult_or_drops(cover, expected):
    scene = scenery._Scene(np.zeros((60, 80, 3), np.float32))
    square = np.array([(10.0, 10.0), (50.0, 10.0), (50.0, 50.0), (10.0, 50.0)])
    scene.paste(scenery._raster([([square], (200, 200, 200))]), "thing")
    if cover:
        right = 50 - 40 * cover
        scene.paste(scenery._raster([([np.array([(right, 5.0), (55, 5), (55, 55), (right, 55)])], (0, 0, 255))]))
    _, annotation = scene.finish(np.random.default_rng(0), (1.0, 1.0), "000001", ".jpg")
    assert annotation.difficult.tolist() == expected


def test_xml_names_the_image_file(built):
    root, _ = built["signs"]
    for xml in (root / "Annotations").iterdir():
        assert (root / "JPEGImages" / read_annotation(xml).filename).is_file()


def test_cli_writes_and_reports(tmp_path):
    out = tmp_path / "data"
    result = CliRunner().invoke(scenery_command, [str(out), "--look", "cells", "--images", "4", "--seed", "2",
                                                  "--quiet", "--workers", "1"])
    assert result.exit_code == 0, result.output
    for word in (*scenery.CLASSES["cells"], "difficult", "trainval", "test", str(out)):
        assert word in result.output
    assert "│ val " not in result.output and not split_path(out, "val").exists()
    result = CliRunner().invoke(scenery_command, [str(out), "--look", "cells", "--images", "4", "--seed", "2",
                                                  "--quiet", "--workers", "1", "--with-val"])
    assert result.exit_code == 0, result.output
    assert len(read_split(out, "train")) + len(read_split(out, "val")) == len(read_split(out, "trainval"))


def test_cli_errors(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    result = CliRunner().invoke(scenery_command, [str(tmp_path), "--look", "glyphs", "--images", "5"])
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1 and str(tmp_path) in result.output
    runner = CliRunner()
    assert runner.invoke(scenery_command, [str(tmp_path / "x"), "--look", "glyphs", "--images", "2",
                                           "--with-val"]).exit_code == 2
    assert runner.invoke(scenery_command, [str(tmp_path / "x"), "--look", "trees"]).exit_code == 2
    assert runner.invoke(scenery_command, [str(tmp_path / "x")]).exit_code == 2
