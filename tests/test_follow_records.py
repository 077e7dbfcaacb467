"""Later stages follow earlier ones: extract takes the trained trunk, refuses a contradicting
flag, warns about random weights, and reuses the recorded scales (sppdet.workdir.records)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli.extract import extract
from sppdet.models.backbones import build_backbone
from sppdet.data.voc import Annotation, write_annotation, write_split
from sppdet.errors import ConfigError
from sppdet.stages.extract import prepare_extract
from sppdet.models.features import auto_precision
from sppdet.fileio import file_hash
from sppdet.workdir.store import WorkDir


@pytest.fixture()
def voc(tmp_path):
    """Three 80 x 100 random images with one 20-40 px object each, all in trainval."""
    root = tmp_path / "voc"
    rng = np.random.default_rng(1)
    (root / "JPEGImages").mkdir(parents=True)
    for index, side in enumerate((20, 30, 40)):
        image_id = f"i{index}"
        cv2.imwrite(str(root / "JPEGImages" / f"{image_id}.png"), rng.integers(0, 256, (80, 100, 3), dtype=np.uint8))
        write_annotation(root / "Annotations" / f"{image_id}.xml", Annotation(
            image_id=image_id, width=100, height=80, boxes=np.array([[5, 5, 5 + side, 5 + side]], np.float32),
            names=("dot",), difficult=np.zeros(1, bool), filename=f"{image_id}.png"))
    write_split(root, "trainval", ["i0", "i1", "i2"])
    return root


def _pretrained(tmp_path, width=0.125) -> str:
    """A trunk recorded as sppdet pretrain's (crops 48 px); returns its path."""
    work = WorkDir(tmp_path / "work")
    trunk = work.root / "pretrain-x" / "trunk.pt"
    trunk.parent.mkdir(parents=True)
    torch.save(build_backbone("zf5", width, seed=3).trunk.state_dict(), trunk)
    work.record_stage("pretrain", {"folder": "pretrain-x", "weights": "pretrain-x/trunk.pt", "backbone": "zf5",
                                   "width": width, "split": "trainval", "config": {"sizes": [48, 40]}})
    return str(trunk)


def test_extract_without_flags_uses_the_pretrained_trunk(tmp_path, voc):
    trunk = _pretrained(tmp_path)
    job = prepare_extract(tmp_path / "work", data_root=voc, device="cpu")
    assert (job.config.backbone, job.config.width, job.config.weights) == ("zf5", 0.125, file_hash(trunk))
    assert job.config.target == 72 and job.settings.sources["width"] == "recorded (pretrain)"
    assert job.settings.sources["scales"] == "data (objects of trainval)" and not job.settings.warnings
    # objects of 20-40 px in 80 px images want 72 * 80 / side: 144-288 px
    assert 128 <= min(job.config.scales) and max(job.config.scales) <= 304


def test_a_contradicting_width_is_an_error_not_random_features(tmp_path, voc):
    _pretrained(tmp_path)
    with pytest.raises(ConfigError, match="--width 1.0: the trunk trained in .* width 0.125"):
        prepare_extract(tmp_path / "work", data_root=voc, width=1.0, device="cpu")
    result = CliRunner().invoke(extract, ["--workdir", str(tmp_path / "work"), "--data", str(voc), "--width", "1",
                                          "--quiet"])
    assert result.exit_code == 2 and "leave out --width" in result.output and "Traceback" not in result.output
    random = prepare_extract(tmp_path / "work", data_root=voc, width=1.0, weights="none", device="cpu")
    assert random.config.weights == "none" and not random.settings.warnings  # asked for: no warning


def test_no_trunk_means_a_visible_warning(tmp_path, voc):
    job = prepare_extract(tmp_path / "work", data_root=voc, width=0.125, device="cpu")
    assert job.config.weights == "none" and "RANDOM weights" in job.settings.warnings[0]
    result = CliRunner().invoke(extract, ["--workdir", str(tmp_path / "work2"), "--data", str(voc), "--width",
                                          "0.125", "--scales", "64", "--quiet"])
    assert result.exit_code == 0 and "warning:" in result.output and "RANDOM weights" in result.output


def test_a_second_extract_reuses_the_recorded_scales(tmp_path, voc):
    _pretrained(tmp_path)
    first = prepare_extract(tmp_path / "work", data_root=voc, scales=(64, 96), precision="float32", device="cpu")
    from sppdet.stages.extract import run_extract
    run_extract(first)
    again = prepare_extract(tmp_path / "work", device="cpu")
    assert again.config.scales == (64, 96) and again.folder == first.folder
    assert again.settings.sources["scales"] == "recorded (extract)"


def test_auto_precision_follows_the_hardware(tmp_path):
    flags = tmp_path / "cpuinfo"
    flags.write_text("flags : fpu sse avx512f avx512_bf16\n")
    assert auto_precision("cpu", str(flags)) == "bfloat16"
    flags.write_text("flags : fpu sse avx2\n")
    assert auto_precision("cpu", str(flags)) == "float32"
    assert auto_precision("cpu", str(tmp_path / "missing")) == "float32"


def test_cli_pretrain_then_extract_without_width_uses_the_trunk(tmp_path, voc, cli_runner):

    sppdet = cli_runner(tmp_path / "cli-work")
    sppdet("pretrain", "--data", str(voc), "--width", "0.125", "--epochs", "1", "--sizes", "48,40",
           "--hidden", "16,16", "--windows", "random", "--batch-size", "8")
    result = sppdet("extract", "--scales", "64")
    record = WorkDir(tmp_path / "cli-work").config()["stages"]["extract"]
    assert record["config"]["width"] == 0.125 and record["weights_source"].endswith("trunk.pt")
    assert "RANDOM" not in result.output and "warning" not in result.output
    wrong = sppdet("extract", "--scales", "64", "--width", "1", code=2)
    assert "leave out --width" in wrong.output and "Traceback" not in wrong.output
