"""``sppdet export`` and ``sppdet detect --model``: a trained detector as one portable file, the same
detections from it as from its work directory, a work directory that still works after a move,
and one clear line for a file that is not a valid model."""

from __future__ import annotations

import io
import json
import shutil
import zipfile

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli.detect import detect
from cli.export import export
from sppdet.config import DetectConfig
from sppdet.errors import ModelError
from sppdet.data.voc import write_split
from sppdet.models.backbones import build_backbone
from sppdet.stages.detect import ImageDetector, detect_files
from sppdet.workdir.export import MANIFEST, MODEL_FORMAT_VERSION, read_model
from sppdet.workdir.records import SELECTION_RECORD
from sppdet.workdir.store import WorkDir

CLASSES = ("disc", "square")
TRUNK = ["--width", "0.125"]
ALL = DetectConfig(score_threshold=-1.0)  # keep every scored box: more boxes to compare

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shape_scene, write_scene_dataset, cli_runner):
    """(work directory, folder of new images) with every stage trained by both methods, the
    trunk's weights file inside the work directory (so a move must carry it along)."""
    base = tmp_path_factory.mktemp("export")
    root, work = base / "voc", base / "work"
    ids = write_scene_dataset(root, CLASSES, 8, np.random.default_rng(0), 96, 128, (26, 44))
    write_split(root, "trainval", ids)
    work.mkdir()
    torch.save(build_backbone("zf5", 0.125, seed=3).trunk.state_dict(), work / "trunk.pt")
    sppdet = cli_runner(work)
    sppdet("propose", "--data", str(root), "--max-proposals", "60", "--max-side", "128", "--workers", "1")
    sppdet("extract", *TRUNK, "--weights", str(work / "trunk.pt"), "--scales", "96", "--device", "cpu")
    sppdet("extract", *TRUNK, "--weights", str(work / "trunk.pt"), "--method", "rcnn", "--crop-size", "48",
           "--context", "6", "--device", "cpu")
    for method in ("spp", "rcnn"):
        sppdet("finetune", "--method", method, "--hidden", "32,32", "--epochs", "2")
        sppdet("train-svm", "--method", method, "--layer", "fc7")
        sppdet("train-bbox", "--method", method)
    new = base / "new"
    new.mkdir()
    for seed, (height, width) in ((1, (96, 128)), (2, (90, 120))):
        image, _, _ = shape_scene(np.random.default_rng(seed), CLASSES, height, width, (26, 44))
        cv2.imwrite(str(new / f"scene{seed}.png"), image)
    return work, new


def _run(command, *args, code=0):
    result = CliRunner().invoke(command, [*map(str, args)])
    assert result.exit_code == code, result.output
    return result


def _same_results(a, b):
    """Bit-identical detections: both runs do the same float32 arithmetic on the same arrays
    (trunk, head, SVM and regressor weights round-trip exactly through .npy) in one process on one
    thread, so nothing may differ by even one ulp."""
    assert [r.image_id for r in a.results] == [r.image_id for r in b.results] and not a.errors and not b.errors
    assert sum(len(r.scores) for r in a.results) > 0
    for x, y in zip(a.results, b.results):
        np.testing.assert_array_equal(x.boxes, y.boxes)
        np.testing.assert_array_equal(x.scores, y.scores)
        np.testing.assert_array_equal(x.labels, y.labels)


def test_model_file_detects_exactly_what_the_work_directory_detects(trained, tmp_path):
    work, new = trained
    copy = tmp_path / "work"
    shutil.copytree(work, copy)
    images = sorted(new.glob("*.png"))
    expected = detect_files(ImageDetector(copy, ALL, "cpu"), images)
    _run(detect, new / "*.png", "--workdir", copy, "--out", tmp_path / "a", "--score-threshold", -1,
         "--tta", "hflip", "--device", "cpu", "--quiet")
    model = tmp_path / "shapes.sppdet"
    result = _run(export, model, "--workdir", copy, "--score-threshold", -1, "--tta", "hflip")
    assert "wrote" in result.output and "2 classes" in result.output
    shutil.rmtree(copy)  # the file alone must do

    _same_results(expected, detect_files(ImageDetector.from_model_file(model, ALL, "cpu"), images))
    # the CLI: the file's saved threshold and views are the defaults, the outputs the same bytes
    result = _run(detect, new / "*.png", "--model", model, "--out", tmp_path / "b", "--device", "cpu", "--quiet")
    assert "2 of 2 images" in result.output
    assert (tmp_path / "a" / "detections.json").read_text() == (tmp_path / "b" / "detections.json").read_text()
    assert (tmp_path / "b" / "scene1.png").is_file()
    strict = _run(detect, new / "*.png", "--model", model, "--out", tmp_path / "c", "--score-threshold", 0.5,
                  "--device", "cpu", "--quiet")
    assert strict.exit_code == 0
    scores = [e["score"] for e in json.loads((tmp_path / "c" / "detections.json").read_text())]
    assert all(s >= 0.5 for s in scores)


def test_rcnn_model_file_detects_what_the_work_directory_detects(trained, tmp_path):
    work, new = trained
    copy = tmp_path / "work"
    shutil.copytree(work, copy)
    images = sorted(new.glob("*.png"))
    expected = detect_files(ImageDetector(copy, ALL, "cpu", method="rcnn"), images)
    model = tmp_path / "rcnn.sppdet"
    _run(export, model, "--workdir", copy, "--method", "rcnn")
    loaded = read_model(model)
    assert loaded.method == "rcnn" and loaded.info.config.crop_size == 48
    _same_results(expected, detect_files(ImageDetector(loaded, ALL, "cpu"), images))
    wrong = _run(detect, images[0], "--model", model, "--method", "spp", code=2)
    assert "holds an rcnn detector" in wrong.output


def test_a_moved_work_directory_detects_the_same(trained, tmp_path):
    """Records hold paths relative to the work directory (trunk weights, stage folders), so
    after ``mv`` it finds its trunk, models and detect cache at the new place."""
    work, new = trained
    before, after = tmp_path / "here", tmp_path / "elsewhere" / "there"
    shutil.copytree(work, before)
    assert WorkDir(before).config()["stages"]["extract"]["weights_source"] == "trunk.pt"
    images = sorted(new.glob("*.png"))
    first = detect_files(ImageDetector(before, ALL, "cpu"), images)
    after.parent.mkdir()
    shutil.move(before, after)
    moved = detect_files(ImageDetector(after, ALL, "cpu"), images)
    _same_results(first, moved)
    assert moved.computed == 0, "the detect cache moved along"
    _run(detect, *images, "--workdir", after, "--out", tmp_path / "out", "--device", "cpu", "--quiet")


def test_the_file_holds_arrays_and_json_only(trained, tmp_path):
    work, _ = trained
    model = tmp_path / "m.sppdet"
    _run(export, model, "--workdir", work)
    with zipfile.ZipFile(model) as archive:
        names = archive.namelist()
        manifest = json.loads(archive.read(MANIFEST))
        arrays = {}
        for name in names:
            assert name == MANIFEST or name.endswith(".npy"), name
            if name.endswith(".npy"):
                arrays[name[:-4]] = np.load(io.BytesIO(archive.read(name)), allow_pickle=False)
    assert manifest["format_version"] == MODEL_FORMAT_VERSION and manifest["classes"] == list(CLASSES)
    assert {name: {"shape": list(a.shape), "dtype": str(a.dtype)} for name, a in arrays.items()} == manifest["arrays"]
    assert {"svm/weights", "svm/biases", "bbox_reg/weights", "head/fc6.weight", "trunk/conv1.weight"} <= set(arrays)
    assert manifest["features"]["config"]["scales"] == [96] and manifest["svm"]["layer"] == "fc7"
    assert manifest["propose"]["max_proposals"] == 60 and manifest["detect"]["tta"] == []
    np.testing.assert_array_equal(arrays["trunk/conv1.weight"], torch.load(work / "trunk.pt")["conv1.weight"])
    assert str(tmp_path.parent) not in archive_text(model), "no path of this machine"
    again = tmp_path / "again.sppdet"
    _run(export, again, "--workdir", work)
    assert again.read_bytes() == model.read_bytes(), "an unchanged detector exports to identical bytes"


def archive_text(path) -> str:
    with zipfile.ZipFile(path) as archive:
        return archive.read(MANIFEST).decode()


def test_recorded_views_are_the_files_default(trained, tmp_path):
    work, _ = trained
    copy = tmp_path / "work"
    shutil.copytree(work, copy)
    WorkDir(copy).record_stage(SELECTION_RECORD, {"chosen": {"tta": ["hflip"]}})
    _run(export, tmp_path / "m.sppdet", "--workdir", copy)
    assert read_model(tmp_path / "m.sppdet").defaults.tta == ("hflip",)
    _run(export, tmp_path / "n.sppdet", "--workdir", copy, "--tta", "none")
    assert read_model(tmp_path / "n.sppdet").defaults.tta == ()


def _rewrite(source, target, change):
    """Copy the zip ``source`` to ``target`` with ``change(members)`` applied (name -> bytes)."""
    with zipfile.ZipFile(source) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    change(members)
    with zipfile.ZipFile(target, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def _edit_manifest(edit):
    def change(members):
        manifest = json.loads(members[MANIFEST])
        edit(manifest)
        members[MANIFEST] = json.dumps(manifest).encode()
    return change


def _npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _wider_svms(members):
    """SVM weights one row too long, the manifest saying so too: only the settings disagree."""
    manifest = json.loads(members[MANIFEST])
    weights = np.load(io.BytesIO(members["svm/weights.npy"]))
    members["svm/weights.npy"] = _npy(np.concatenate([weights, weights[:1]]))
    manifest["arrays"]["svm/weights"]["shape"][0] += 1
    members[MANIFEST] = json.dumps(manifest).encode()


BROKEN = {
    "truncated": (lambda path, target: target.write_bytes(path.read_bytes()[: path.stat().st_size // 2]),
                  "not a zip archive"),
    "not a zip": (lambda path, target: target.write_bytes(b"hello"), "not a zip archive"),
    "damaged": (lambda path, target: target.write_bytes(_flip_byte(path.read_bytes())), "damaged archive"),
    "wrong version": (lambda path, target: _rewrite(path, target, _edit_manifest(
        lambda m: m.update(format_version=MODEL_FORMAT_VERSION + 1))), "format version 2"),
    "missing member": (lambda path, target: _rewrite(path, target, lambda m: m.pop("svm/biases.npy")),
                       "svm/biases.npy is missing"),
    "array unlike manifest": (lambda path, target: _rewrite(path, target, lambda m: m.update(
        {"svm/biases.npy": _npy(np.zeros(5, np.float32))})), "the manifest says"),
    "settings unlike arrays": (lambda path, target: _rewrite(path, target, _wider_svms), "svm/weights is"),
    "trunk of another width": (lambda path, target: _rewrite(path, target, _edit_manifest(
        lambda m: m["features"]["config"].update(width=0.25))), "trunk arrays do not fit"),
    "pickled array": (lambda path, target: _rewrite(path, target, lambda m: m.update(
        {"svm/biases.npy": _pickled()})), "not a readable array"),
    "member larger than its array": (lambda path, target: _rewrite(path, target, lambda m: m.update(
        {"svm/biases.npy": _npy(np.zeros(100_000, np.float32))})), "not the size of the array"),
    "manifest claims a huge array": (lambda path, target: _rewrite(path, target, _edit_manifest(
        lambda m: m["arrays"]["svm/biases"].update(shape=[10**12]))), "not the size of the array"),
    "manifest not json": (lambda path, target: _rewrite(path, target, lambda m: m.update(
        {MANIFEST: b"{oops"})), "is not JSON"),
    "manifest missing a setting": (lambda path, target: _rewrite(path, target, _edit_manifest(
        lambda m: m.pop("levels"))), "malformed manifest.json: no 'levels'"),
}


def _flip_byte(data: bytes) -> bytes:
    """``data`` with one byte inside the first array member changed (its CRC no longer matches)."""
    position = data.index(b"\x93NUMPY") + 200
    return data[:position] + bytes([data[position] ^ 0xFF]) + data[position + 1:]


def _pickled() -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def model_file(trained, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "good.sppdet"
    _run(export, path, "--workdir", trained[0])
    return path


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_bad_model_file_is_one_line(trained, model_file, tmp_path, case):
    _, new = trained
    make, message = BROKEN[case]
    bad = tmp_path / "bad.sppdet"
    make(model_file, bad)
    with pytest.raises(ModelError, match=message):
        read_model(bad)
    result = CliRunner().invoke(detect, [str(new / "scene1.png"), "--model", str(bad), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "sppdet export" in lines[0], result.stderr
    assert not (tmp_path / "out").exists()


def test_refusals_on_the_command_line(trained, model_file, tmp_path):
    work, new = trained
    empty = tmp_path / "empty"
    result = _run(export, tmp_path / "m.sppdet", "--workdir", empty, code=1)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no trained detector" in lines[0] and "Traceback" not in result.output
    assert not (tmp_path / "m.sppdet").exists() and not list(tmp_path.glob(".m.sppdet*"))
    both = _run(detect, new / "scene1.png", "--model", model_file, "--workdir", work, code=2)
    assert "--model and --workdir" in both.output
    _run(export, tmp_path / "r.sppdet", "--workdir", work, "--method", "rcnn", "--tta", "hflip", code=2)
