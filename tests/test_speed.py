"""``sppdet bench speed``: window top-up, the report's JSON schema, the model choice and the CLI."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from cli.main import cli
from sppdet.config import FinetuneConfig, ProposeConfig, SvmConfig
from sppdet.data.voc import Annotation, write_annotation, write_split
from sppdet.errors import ConfigError
from sppdet.stages.extract import prepare_extract, run_extract
from sppdet.stages.finetune import run_finetune
from sppdet.stages.propose import prepare_propose, run_propose
from sppdet.bench.speed import bench_speed, run_speed, top_up
from sppdet.bench.speed_config import METHODS, PARTS, SpeedConfig
from sppdet.bench.speed_model import random_model, trained_model
from sppdet.workdir.store import WorkDir
from sppdet.models.svm import SvmModel
from sppdet.stages.train_svm import run_train_svm

TINY = SpeedConfig(proposals=12, scales_1=(64,), scales_5=(48, 64), rcnn_windows=5, rcnn_size=32,
                   rcnn_context=4, rcnn_batch=3)
TOP_KEYS = {*METHODS, "speedup_conv_1", "speedup_total_1", "speedup_conv_5", "speedup_total_5"}
TINY_ARGS = ["--proposals", "12", "--scale", "64", "--scales", "48,64", "--rcnn-windows", "5",
             "--crop-size", "32", "--context", "4", "--width", "0.125", "--hidden", "16,16",
             "--device", "cpu", "--quiet"]


def _scene(rng: np.random.Generator, height: int = 72, width: int = 96):
    """A small image with two filled rectangles, their boxes and class names."""
    image = np.full((height, width, 3), 200, np.uint8)
    image += rng.integers(0, 20, image.shape, dtype=np.uint8)
    boxes = []
    for colour in ((30, 30, 220), (220, 40, 40)):
        w, h = rng.integers(16, 32, 2)
        x, y = rng.integers(0, width - w), rng.integers(0, height - h)
        image[y:y + h, x:x + w] = colour
        boxes.append([x, y, x + w, y + h])
    return image, np.array(boxes, np.float32), ("disc", "square")


def _voc(root, count: int = 3, split: str = "test"):
    rng = np.random.default_rng(0)
    ids = [f"{i:03d}" for i in range(count)]
    (root / "JPEGImages").mkdir(parents=True)
    for image_id in ids:
        image, boxes, names = _scene(rng)
        cv2.imwrite(str(root / "JPEGImages" / f"{image_id}.png"), image)
        write_annotation(root / "Annotations" / f"{image_id}.xml", Annotation(
            image_id=image_id, width=image.shape[1], height=image.shape[0], boxes=boxes, names=names,
            difficult=np.zeros(len(names), bool), filename=f"{image_id}.png"))
    write_split(root, split, ids)
    return root


def _check_schema(result: dict, proposals: int, rcnn_timed: int) -> None:
    assert set(result) == TOP_KEYS | {"settings"}
    for method in METHODS:
        parts = result[method]
        assert set(parts) == {*PARTS, "total", "proposals"}
        assert all(math.isfinite(v) and v > 0 for v in parts.values()), (method, parts)
        assert parts["total"] == pytest.approx(sum(parts[p] for p in PARTS))
    assert result["spp_1"]["proposals"] == result["rcnn"]["proposals"]
    for n in (1, 5):
        for part in ("conv", "total"):
            assert result[f"speedup_{part}_{n}"] == pytest.approx(
                result["rcnn"][part] / result[f"spp_{n}"][part])
    settings = result["settings"]
    assert settings["proposals"] == proposals and settings["rcnn_windows_timed"] == rcnn_timed
    json.dumps(result)


# ---------------------------------------------------------------------------------------------
# top-up


def test_top_up_adds_random_boxes_inside_the_image():
    found = np.array([[1, 2, 30, 40], [5, 5, 25, 50]], np.float32)
    boxes, added = top_up(found, 500, (60, 80), np.random.default_rng(0))
    assert boxes.shape == (500, 4) and boxes.dtype == np.float32 and added == 498
    np.testing.assert_array_equal(boxes[:2], found)
    extra = boxes[2:]
    assert (extra[:, :2] >= 0).all() and (extra[:, 2] <= 80 + 1e-3).all() and (extra[:, 3] <= 60 + 1e-3).all()
    sides = extra[:, 2:] - extra[:, :2]
    assert (sides >= 16 - 1e-3).all()
    assert sides[:, 0].max() > 60 and sides[:, 0].min() < 24, "sides spread from 16 px to the image"
    again, _ = top_up(found, 500, (60, 80), np.random.default_rng(0))
    np.testing.assert_array_equal(boxes, again)


def test_top_up_keeps_the_first_boxes_and_handles_tiny_images():
    found = np.arange(40, dtype=np.float32).reshape(10, 4)
    kept, added = top_up(found, 6, (100, 100), np.random.default_rng(0))
    np.testing.assert_array_equal(kept, found[:6])
    assert added == 0
    boxes, added = top_up(np.zeros((0, 4)), 5, (10, 12), np.random.default_rng(1))
    assert added == 5
    np.testing.assert_allclose(boxes, [[0, 0, 12, 10]] * 5, atol=1e-4)  # smaller than min_size


# ---------------------------------------------------------------------------------------------
# the library


def test_run_speed_reports_every_part(tmp_path):
    root = _voc(tmp_path / "voc", count=2)
    paths = sorted((root / "JPEGImages").glob("*.png"))
    model = random_model("zf5", 0.125, (16, 16), num_classes=2)
    report = run_speed(paths, model, TINY, "cpu")
    result = report.to_json()
    _check_schema(result, proposals=12, rcnn_timed=5)
    settings = result["settings"]
    assert settings["images"] == 2 and settings["image_hw_mean"] == [72.0, 96.0]
    assert settings["topped_up_mean"] == 12 - settings["selective_search_boxes_mean"]
    assert "random init" in settings["model"]


def test_run_speed_rejects_bad_settings(tmp_path):
    model = random_model("zf5", 0.125, (16, 16), num_classes=2)
    with pytest.raises(ConfigError):
        run_speed([], model, TINY, "cpu")
    with pytest.raises(ConfigError):
        run_speed([tmp_path / "x.png"], model, SpeedConfig(proposals=0), "cpu")


def test_bench_speed_uses_a_trained_work_directory(tmp_path):
    root = _voc(tmp_path / "voc", count=4, split="trainval")
    write_split(root, "test", ["000"])
    work = tmp_path / "work"
    run_propose(prepare_propose(work, ProposeConfig(max_proposals=40), "trainval", root), workers=1)
    run_extract(prepare_extract(work, split="trainval", backbone="zf5", width=0.125, scales=(64,),
                                device="cpu"))
    workdir = WorkDir(work)
    run_finetune(workdir, "trainval", FinetuneConfig(hidden=(16, 24), epochs=1))
    run_train_svm(workdir, "trainval", SvmConfig(layer="fc7"))

    model = trained_model(work)
    assert model is not None and model.head.hidden == (16, 24)
    svms = SvmModel.load(work / workdir.config()["stages"]["train-svm"]["model"])
    np.testing.assert_array_equal(model.svm_weights, svms.weights)
    assert model.feature_scale == svms.feature_scale
    assert trained_model(tmp_path / "empty") is None

    report = bench_speed(1, TINY, workdir=work, device="cpu")  # images: the work directory's dataset
    assert report.settings["model"].startswith("trained: ")
    assert report.settings["images_source"].endswith("split test")
    _check_schema(report.to_json(), proposals=12, rcnn_timed=5)


# ---------------------------------------------------------------------------------------------
# the command line


def test_bench_speed_command_writes_the_json(tmp_path):
    root = _voc(tmp_path / "voc", count=1)
    out = tmp_path / "speed.json"
    result = CliRunner().invoke(cli, ["bench", "speed", "--data", str(root), "--images", "1",
                                      "--json", str(out), "--workdir", str(tmp_path / "w"), *TINY_ARGS])
    assert result.exit_code == 0, result.output
    assert "SPP 1-scale" in result.output and "random init" in result.output
    _check_schema(json.loads(out.read_text()), proposals=12, rcnn_timed=5)


def test_bench_speed_command_on_synth_images(tmp_path):
    result = CliRunner().invoke(cli, ["bench", "speed", "--images", "1", "--workdir", str(tmp_path / "w"),
                                      "--rcnn-windows", "50", *TINY_ARGS])
    assert result.exit_code == 0, result.output
    assert "synth" in result.output and "12 windows each" in result.output


def test_bench_speed_command_errors(tmp_path):
    root = _voc(tmp_path / "voc", count=1)
    runner = CliRunner()
    missing = runner.invoke(cli, ["bench", "speed", "--data", str(root), "--split", "nosuch",
                                  "--workdir", str(tmp_path / "w"), *TINY_ARGS])
    assert missing.exit_code == 1 and "nosuch" in missing.output and "Traceback" not in missing.output
    bad = runner.invoke(cli, ["bench", "speed", "--workdir", str(tmp_path / "w"), *TINY_ARGS,
                              "--hidden", "8,8,8"])
    assert bad.exit_code == 2 and "--hidden" in bad.output
