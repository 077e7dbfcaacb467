"""``sppdet data import | check | show``: formats read back pixel-exact through VocDataset, safe
ids, repeatable stratified splits, all-or-nothing output, the check report and the drawings."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from cli.data import data
from sppdet.data.check import check_dataset
from sppdet.data.importers import parse_yaml_names
from sppdet.data.stratify import parse_ratios, stratified_split
from sppdet.data.voc import Annotation, VocDataset, read_split, write_annotation, write_split
from sppdet.data.voc_import import image_ids
from sppdet.errors import ConfigError, DatasetError
from sppdet.fileio import safe_file_stem
from sppdet.vis.draw import class_colour
from sppdet.vis.ground_truth import draw_annotation


def _write_image(path: Path, width: int = 100, height: int = 80, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), image)


def _run(*args: str, code: int = 0):
    result = CliRunner().invoke(data, [*args, "--quiet"], catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result


def _read_all(root: Path) -> dict[str, Annotation]:
    """Every image of the imported dataset (train, val, test) as VocDataset reads it."""
    found = {}
    for split in ("train", "val", "test"):
        if (root / "ImageSets" / "Main" / f"{split}.txt").is_file():
            dataset = VocDataset(root, split)
            for annotation in dataset.annotations():
                assert dataset.image_path(annotation.image_id).is_file()
                found[annotation.image_id] = annotation
    return found


def _invoke(*args: str):
    return CliRunner().invoke(data, [*args, "--quiet"])


def _assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code != 0
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)  # not a bug's exception
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert all(fragment in lines[0] for fragment in fragments), lines[0]


# ---------------------------------------------------------------------------------------------
# COCO


def _coco_source(root: Path, images: int = 12) -> tuple[Path, dict[str, list]]:
    """``images`` 100 x 80 images with cats and dogs (integer boxes), one crowd box, one box
    reaching outside, one empty box and one image without annotations; returns the JSON and
    the expected boxes per file stem (x1, y1, x2, y2, name, difficult)."""
    entries, annotations, expected = [], [], {}
    for i in range(images):
        name = f"img{i:02d}.{'png' if i % 3 == 0 else 'jpg'}"
        _write_image(root / "images" / name, seed=i)
        entries.append({"id": 100 + i, "file_name": name, "width": 100, "height": 80})
        expected[f"img{i:02d}"] = []
        if i == images - 1:
            continue  # a negative
        for k, category in enumerate((1, 2) if i % 2 else (1,)):
            x, y, w, h = 5 + 3 * i + 20 * k, 4 + 2 * i, 20 + k, 15 + i
            crowd = int(i == 2 and k == 0)
            annotations.append({"id": len(annotations) + 1, "image_id": 100 + i, "category_id": category,
                                "bbox": [x, y, w, h], "iscrowd": crowd})
            expected[f"img{i:02d}"].append((x, y, x + w, y + h, "cat" if category == 1 else "dog", bool(crowd)))
    annotations.append({"id": 900, "image_id": 101, "category_id": 2, "bbox": [90, 70, 30, 30], "iscrowd": 0})
    expected["img01"].append((90, 70, 100, 80, "dog", False))  # clipped
    annotations.append({"id": 901, "image_id": 103, "category_id": 2, "bbox": [10, 10, 0, 5], "iscrowd": 0})
    path = root / "instances.json"
    path.write_text(json.dumps({"images": entries, "annotations": annotations,
                                "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]}))
    return path, expected


def test_coco_import_reads_back_pixel_exact(tmp_path):
    source, expected = _coco_source(tmp_path / "coco")
    out = tmp_path / "voc"
    result = _run("import", str(source), str(out), "--format", "coco")
    assert "1 box(es) clipped" in result.output and "1 empty box(es) dropped" in result.output
    assert "1 image(s) without objects" in result.output
    found = _read_all(out)
    assert set(found) == set(expected)
    for image_id, boxes in expected.items():
        annotation = found[image_id]
        assert (annotation.width, annotation.height) == (100, 80)
        got = sorted(zip(annotation.boxes.tolist(), annotation.names, annotation.difficult.tolist()))
        want = sorted(([float(v) for v in row[:4]], row[4], row[5]) for row in boxes)
        assert got == want, image_id
    assert found["img02"].difficult.any()  # iscrowd -> difficult
    assert (out / "JPEGImages" / "img00.png").is_file() and (out / "JPEGImages" / "img01.jpg").is_file()
    assert os.stat(out / "JPEGImages" / "img01.jpg").st_ino == os.stat(tmp_path / "coco/images/img01.jpg").st_ino
    record = json.loads((out / "import.json").read_text())
    assert record["format"] == "coco" and record["images"] == 12


def test_imported_coco_has_disjoint_stratified_splits_train_accepts(tmp_path):
    source, _ = _coco_source(tmp_path / "coco", images=15)
    out = tmp_path / "voc"
    _run("import", str(source), str(out), "--format", "coco", "--copy")
    splits = {name: read_split(out, name) for name in ("train", "val", "test", "trainval")}
    assert sorted(splits["trainval"]) == sorted(splits["train"] + splits["val"])
    everything = splits["train"] + splits["val"] + splits["test"]
    assert len(everything) == len(set(everything)) == 15
    for name in ("train", "val", "test"):  # both classes in every split
        names = {n for i in splits[name] for n in VocDataset(out, name).annotation(i).names}
        assert names == {"cat", "dog"}, name
    assert os.stat(out / "JPEGImages" / "img01.jpg").st_ino != os.stat(tmp_path / "coco/images/img01.jpg").st_ino
    result = _run("check", str(out), "--json", str(tmp_path / "check.json"))  # what sppdet train would do with it
    train = json.loads((tmp_path / "check.json").read_text())["train"]
    assert train["splits"].startswith("val: the dataset's val.txt"), train
    assert {"propose.max_side", "pretrain.epochs", "extract.scales", "extract.target"} <= set(train["settings"])
    assert "sppdet train would choose" in result.output


def test_split_is_repeatable_and_follows_the_seed(tmp_path):
    source, _ = _coco_source(tmp_path / "coco", images=15)
    for name, seed in (("a", "0"), ("b", "0"), ("c", "5")):
        _run("import", str(source), str(tmp_path / name), "--format", "coco", "--seed", seed)
    files = {name: [(tmp_path / name / "ImageSets/Main" / f"{s}.txt").read_text() for s in ("train", "val", "test")]
             for name in "abc"}
    assert files["a"] == files["b"] and files["a"] != files["c"]


def test_stratified_split_rule():
    rng = np.random.default_rng(0)
    names = {f"i{k:03d}": tuple(rng.choice(["a", "b", "c"], size=int(rng.integers(0, 3)))) for k in range(60)}
    names["rare1"], names["rare2"], names["rare3"] = ("r",), ("r", "a"), ("r",)
    names["pair1"], names["pair2"] = ("p",), ("p",)
    names["solo"] = ("s",)
    splits = stratified_split(names, (0.6, 0.2, 0.2), seed=3)
    shuffled = dict(sorted(names.items(), key=lambda item: item[0][::-1]))  # input order does not matter
    assert stratified_split(shuffled, (0.6, 0.2, 0.2), seed=3) == splits
    where = {i: split for split, ids in splits.items() for i in ids}
    assert sorted(where) == sorted(names)
    assert {where["rare1"], where["rare2"], where["rare3"]} == {"train", "val", "test"}
    assert sorted(where[i] for i in ("pair1", "pair2")) == ["train", "val"] and where["solo"] == "train"
    for name in "abc":
        assert all(any(name in names[i] for i in splits[s]) for s in ("train", "val", "test"))
    assert 0.5 < len(splits["train"]) / len(names) < 0.7
    assert parse_ratios("0.7,0.3,0") == (0.7, 0.3, 0.0)
    for bad in ("0.5,0.5", "0.6,0.2,0.3", "0,0.5,0.5", "a,b,c", "nan,0.5,0.5"):
        with pytest.raises(ConfigError):
            parse_ratios(bad)


# ---------------------------------------------------------------------------------------------
# YOLO, labelme, voc-flat


def test_yolo_import_keeps_shipped_split_and_reads_back_pixel_exact(tmp_path):
    src = tmp_path / "yolo"
    src.mkdir()
    (src / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\nnames:\n  0: person  # people\n"
                                   "  1: 'traffic light'\n")
    boxes = {"train/a": [(0, 10, 20, 50, 60), (1, 0, 0, 100, 80)], "train/b": [(1, 30, 8, 70, 24)],
             "val/a": [(0, 60, 40, 90, 72)], "train/empty": []}
    for name, rows in boxes.items():
        _write_image(src / "images" / f"{name}.jpg", seed=len(name))
        if name != "train/empty":  # no label file: a negative
            lines = [f"{c} {(x1 + x2) / 200} {(y1 + y2) / 160} {(x2 - x1) / 100} {(y2 - y1) / 80}"
                     for c, x1, y1, x2, y2 in rows]
            (src / "labels" / name).parent.mkdir(parents=True, exist_ok=True)
            (src / "labels" / f"{name}.txt").write_text("\n".join(lines) + "\n")
    (src / "labels/train/b.txt").write_text("1 0.1 0.1 0.7 0.1 0.7 0.3 0.1 0.3\n")  # a polygon
    boxes["train/b"] = [(1, 10, 8, 70, 24)]
    out = tmp_path / "voc"
    result = _run("import", str(src), str(out), "--format", "yolo")
    assert "source's own train/val/test" in result.output
    found = _read_all(out)
    ids = {"train/a": "train_a", "val/a": "val_a", "train/b": "b", "train/empty": "empty"}
    assert set(found) == set(ids.values())
    classes = ("person", "traffic light")
    for name, rows in boxes.items():
        annotation = found[ids[name]]
        assert annotation.boxes.tolist() == [[float(v) for v in row[1:]] for row in rows], name
        assert annotation.names == tuple(classes[row[0]] for row in rows)
    assert read_split(out, "val") == ["val_a"] and read_split(out, "train") == ["b", "empty", "train_a"]
    assert not (out / "ImageSets/Main/test.txt").exists()
    again = _run("import", str(src), str(tmp_path / "resplit"), "--format", "yolo", "--resplit")
    assert "stratified by class" in again.output and len(read_split(tmp_path / "resplit", "trainval")) == 4


@pytest.mark.parametrize("text, names", [
    ("names: [cat, 'dog, big', \"bird\"]\n", ["cat", "dog, big", "bird"]),
    ("nc: 2\nnames: {0: cat, 1: dog}\n", ["cat", "dog"]),
    ("names:\n  - cat\n  - 'it''s'\nnc: 2\n", ["cat", "it's"]),
    ("names:\n  1: dog\n  0: cat\n", ["cat", "dog"]),
    ("train: x\n", None),
])
def test_yaml_names_forms(text, names):
    assert parse_yaml_names(text, Path("data.yaml")) == names


def test_yaml_names_with_a_gap_is_an_error():
    with pytest.raises(DatasetError, match="not 0..1"):
        parse_yaml_names("names:\n  0: cat\n  2: dog\n", Path("data.yaml"))


def test_labelme_import_with_unsafe_names(tmp_path):
    src = tmp_path / "labelme"
    _write_image(tmp_path / "pictures" / "x.png", width=60, height=40)
    shapes = [{"label": "car", "points": [[50, 30], [10, 5]], "shape_type": "rectangle"},
              {"label": "tree", "points": [[2, 3], [20, 1], [12, 25]], "shape_type": "polygon", "difficult": True},
              {"label": "road", "points": [[0, 0], [5, 5]], "shape_type": "line"},
              {"label": "sun", "points": [[55, 35], [59, 35]], "shape_type": "circle"}]
    (src / "sub dir").mkdir(parents=True)
    for name in ("we ird;name", "sub dir/../../x"):  # the second is a file name, however odd
        path = src / ("sub dir" if "/" in name else "") / f"{name.rsplit('/', 1)[-1]}.json"
        path.write_text(json.dumps({"shapes": shapes, "imagePath": "../pictures/x.png" if "/" not in name
                                    else "..\\..\\pictures\\x.png", "imageWidth": 60, "imageHeight": 40}))
    out = tmp_path / "voc"
    result = _run("import", str(src), str(out), "--format", "labelme", "--split-ratios", "1,0,0")
    assert "skipped 2 labelme line shapes" in result.output
    found = _read_all(out)
    assert set(found) == {safe_file_stem("we ird;name"), "x"}
    annotation = found[safe_file_stem("we ird;name")]
    assert annotation.names == ("car", "tree", "sun")
    assert annotation.boxes.tolist() == [[10, 5, 50, 30], [2, 1, 20, 25], [51, 31, 59, 39]]
    assert annotation.difficult.tolist() == [False, True, False]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labelme", "pictures", "voc"]


def test_voc_flat_import(tmp_path):
    src = tmp_path / "flat"
    for i, suffix in enumerate((".jpg", ".bmp")):
        _write_image(src / "nested" / f"p{i}{suffix}", seed=i)
        write_annotation(src / "nested" / f"p{i}.xml", Annotation(
            f"p{i}", 100, 80, np.array([[1, 2, 30, 40]], np.float32), ("thing",), np.array([i == 1]), "ignored.jpg"))
    _write_image(src / "unlabelled.png")
    out = tmp_path / "voc"
    result = _run("import", str(src), str(out), "--format", "voc-flat", "--split-ratios", "0.5,0.5,0")
    assert "skipped 1 images without an XML" in result.output
    found = _read_all(out)
    assert found["p0"].boxes.tolist() == [[1, 2, 30, 40]] and found["p1"].difficult.tolist() == [True]
    assert VocDataset(out, "trainval").image_path("p1").name == "p1.bmp"


def test_image_ids_are_safe_and_unique():
    assert image_ids(["x/a", "y/a", "b", "B", "c/d", "c_d"]) == ["x_a", "y_a", "b", "B-2", "d", "c_d"]
    ids = image_ids(["../../etc/passwd", "a b/..", "..", ""])
    assert len({i.casefold() for i in ids}) == 4
    assert all(i == safe_file_stem(i) and "/" not in i and not i.startswith(".") for i in ids)


# ---------------------------------------------------------------------------------------------
# bad input: one line, nothing written


def _nothing_written(tmp_path: Path, before: set[str]) -> bool:
    return {p.name for p in tmp_path.iterdir()} == before


def test_bad_input_is_one_line_and_writes_nothing(tmp_path):
    source, _ = _coco_source(tmp_path / "coco", images=5)
    data_json = json.loads(source.read_text())
    before = {p.name for p in tmp_path.iterdir()}
    out = str(tmp_path / "out")
    cases = []
    (tmp_path / "coco/broken.json").write_text("{not json")
    cases.append(("broken.json", "not valid UTF-8 JSON"))
    bad = json.loads(json.dumps(data_json))
    bad["annotations"][0]["category_id"] = 7
    (tmp_path / "coco/category.json").write_text(json.dumps(bad))
    cases.append(("category.json", "category_id 7"))
    bad = json.loads(json.dumps(data_json))
    bad["images"][0]["width"] = 99
    (tmp_path / "coco/size.json").write_text(json.dumps(bad))
    cases.append(("size.json", "99 x 80 but the image is 100 x 80"))
    bad = json.loads(json.dumps(data_json))
    bad["images"][1]["file_name"] = "missing.jpg"
    (tmp_path / "coco/missing.json").write_text(json.dumps(bad))
    cases.append(("missing.json", "missing.jpg: image not found"))
    for name, message in cases:
        result = _invoke("import", str(tmp_path / "coco" / name), out, "--format", "coco")
        _assert_one_line_error(result, message)
        assert _nothing_written(tmp_path, before), name
    yolo = tmp_path / "yolo"
    _write_image(yolo / "images" / "a.jpg")
    (yolo / "labels").mkdir()
    (yolo / "labels" / "a.txt").write_text("3 0.5 0.5 0.1 0.1\n")
    (yolo / "classes.txt").write_text("cat\n")
    _assert_one_line_error(_invoke("import", str(yolo), out, "--format", "yolo"),
                           "a.txt:1", "class in 0..0")
    (yolo / "labels" / "a.txt").write_text("0 0.5 0.5 0.1 0.1\n0 nan 0.5 0.1 0.1\n")
    _assert_one_line_error(_invoke("import", str(yolo), out, "--format", "yolo"), "a.txt:2")
    assert not Path(out).exists()
    Path(out).mkdir()
    (Path(out) / "keep.txt").write_text("x")
    _assert_one_line_error(_invoke("import", str(source), out, "--format", "coco"),
                           "not empty")
    bad_ratio = _invoke("import", str(source), str(tmp_path / "o2"), "--format", "coco",
                                          "--split-ratios", "0.5,0.6,0")
    assert bad_ratio.exit_code == 2 and "sum to 1" in bad_ratio.output and not (tmp_path / "o2").exists()


def test_failure_while_writing_leaves_nothing(tmp_path, monkeypatch):
    import sppdet.data.voc_import as voc_import

    source, _ = _coco_source(tmp_path / "coco", images=4)
    calls = []

    def failing(path, annotation):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(28, "No space left on device", str(path))
        write_annotation(path, annotation)

    monkeypatch.setattr(voc_import, "write_annotation", failing)
    result = _invoke("import", str(source), str(tmp_path / "out"), "--format", "coco")
    _assert_one_line_error(result, "No space left on device")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coco"]


# ---------------------------------------------------------------------------------------------
# check and show


def _voc_dataset(root: Path) -> list[str]:
    """Six 100 x 80 images with two classes, listed in trainval (4) and test (2)."""
    ids = [f"{i:02d}" for i in range(6)]
    for i, image_id in enumerate(ids):
        _write_image(root / "JPEGImages" / f"{image_id}.jpg", seed=i)
        write_annotation(root / "Annotations" / f"{image_id}.xml", Annotation(
            image_id, 100, 80, np.array([[10, 10, 50, 50], [60, 20, 70, 30]], np.float32)[:1 + i % 2],
            ("big", "small")[:1 + i % 2], np.array([False, i == 3])[:1 + i % 2]))
    write_split(root, "trainval", ids[:4])
    write_split(root, "test", ids[4:])
    return ids


def test_check_reports_classes_and_problems(tmp_path):
    root = tmp_path / "voc"
    _voc_dataset(root)
    clean = check_dataset(root)
    assert clean.errors == 0 and clean.images == 6 and clean.splits == {"test": 2, "trainval": 4}
    small = next(c for c in clean.classes if c.name == "small")
    assert (small.objects, small.images, small.tiny, small.difficult, small.side_p50) == (3, 3, 3, 1, 10.0)
    _run("check", str(root))

    (root / "JPEGImages" / "01.jpg").write_bytes(b"not an image")
    (root / "JPEGImages" / "02.jpg").write_bytes((root / "JPEGImages" / "00.jpg").read_bytes())
    xml = root / "Annotations" / "03.xml"
    xml.write_text(xml.read_text().replace("<xmax>70</xmax>", "<xmax>130</xmax>")
                   .replace("<truncated>0</truncated>", "<truncated>1</truncated>", 1))
    result = _run("check", str(root), "--json", str(tmp_path / "report.json"), code=1)
    assert "corrupt images" in result.output and "4 problem" not in result.output
    report = json.loads((tmp_path / "report.json").read_text())["dataset"]
    assert [p["image_id"] for p in report["corrupt"]] == ["01"]
    assert report["duplicates"] == [["00", "02"]]
    assert [p["image_id"] for p in report["outside"]] == ["03"] and report["errors"] == 2
    big = next(c for c in report["classes"] if c["name"] == "big")
    assert big["truncated"] == 1


def test_check_names_a_missing_image_and_a_dataset_train_would_refuse(tmp_path):
    root = tmp_path / "voc"
    _voc_dataset(root)
    (root / "JPEGImages" / "05.jpg").unlink()
    (root / "ImageSets/Main/trainval.txt").rename(root / "ImageSets/Main/other.txt")
    result = _run("check", str(root), code=1)
    assert "missing files" in result.output and "would refuse" in result.output


def test_show_draws_one_image_per_input(tmp_path):
    root = tmp_path / "voc"
    _voc_dataset(root)
    _run("show", str(root), "--out", str(tmp_path / "gt"), "--limit", "0")
    assert sorted(p.name for p in (tmp_path / "gt").iterdir()) == [f"{i:02d}.jpg" for i in range(4)]
    _run("show", str(root), "--out", str(tmp_path / "two"), "--split", "test", "--limit", "1")
    assert [p.name for p in (tmp_path / "two").iterdir()] == ["04.jpg"]
    missing = _invoke("show", str(root), "--out", str(tmp_path / "x"), "--split", "val")
    _assert_one_line_error(missing, "val.txt", "split file not found")


def test_difficult_boxes_are_dashed():
    image = np.full((120, 160, 3), 128, np.uint8)
    annotation = Annotation("x", 160, 120, np.array([[10, 40, 70, 100], [90, 40, 150, 100]], np.float32),
                            ("a", "b"), np.array([False, True]))
    canvas = draw_annotation(image, annotation, ("a", "b"))
    solid = (canvas[99, 10:70] == class_colour(1)).all(axis=1)
    dashed = (canvas[99, 90:150] == class_colour(2)).all(axis=1)
    assert solid.all() and 0.3 < dashed.mean() < 0.8
    assert (image == 128).all()


def test_image_in_another_format_is_converted_to_jpeg(tmp_path):
    _write_image(tmp_path / "coco" / "odd.ppm", width=40, height=30)
    (tmp_path / "coco" / "instances.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "odd.ppm", "width": 40, "height": 30}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [2, 3, 10, 12]}],
        "categories": [{"id": 3, "name": "x"}]}))
    result = _run("import", str(tmp_path / "coco" / "instances.json"), str(tmp_path / "voc"), "--format", "coco")
    assert "1 image(s) converted to JPEG" in result.output
    dataset = VocDataset(tmp_path / "voc", "train")
    assert dataset.image_path("odd").name == "odd.jpg"
    assert cv2.imread(str(dataset.image_path("odd"))).shape == (30, 40, 3)
    assert dataset.annotation("odd").boxes.tolist() == [[2, 3, 12, 15]]
