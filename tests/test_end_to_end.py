"""The whole chain through the command line on a few synth images, with a tiny trunk.

synth -> propose -> pretrain -> extract -> finetune -> train-svm -> train-bbox -> eval -> detect,
each through ``CliRunner`` as a user would type it; then a second eval reuses every cache.
"""

from __future__ import annotations

import json

import pytest


TINY = ["--width", "0.125"]
SCALE = ["--scales", "160"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cli_runner):
    root = tmp_path_factory.mktemp("e2e")
    work, data = root / "work", root / "data"
    sppdet = cli_runner(work)

    sppdet("synth", str(data), "--images", "24", "--seed", "3")
    sppdet("propose", "--data", str(data), "--split", "trainval", "--max-side", "200", "--workers", "1")
    sppdet("propose", "--split", "test", "--max-side", "200", "--workers", "1")
    sppdet("pretrain", *TINY, "--sizes", "48,40", "--epochs", "3", "--hidden", "64,64",
           "--batch-size", "32", "--lr", "0.05")
    for split in ("trainval", "test"):
        sppdet("extract", "--split", split, *TINY, *SCALE)
    sppdet("finetune", "--hidden", "64,64", "--epochs", "3")
    sppdet("train-svm", "--layer", "pool5", "--extra-positives", "2")
    sppdet("train-bbox")
    return sppdet, root, work, data


@pytest.mark.parametrize("split", ["trainval", "test"])
def test_eval_gives_finite_ap(trained, split):
    sppdet, root, work, _ = trained
    sppdet("eval", "--split", split, "--json", str(root / f"ap-{split}.json"))
    summary = json.loads((root / f"ap-{split}.json").read_text())
    assert set(summary) == {"metric", "iou", "split", "mAP", "classes"}
    aps = [c["ap"] for c in summary["classes"].values() if c["ap"] is not None]
    assert aps and all(0.0 <= ap <= 1.0 for ap in aps)
    assert list((work / "results").glob(f"comp4_det_{split}_*.txt"))
    if split == "trainval":
        # 14 training images are too few to generalise, but the detector must at least have
        # learned its training windows: random scores give an AP near the positives' share of
        # the detections (< 0.01 here).
        assert summary["mAP"] > 0.2


def test_detect_writes_image_and_json(trained):
    sppdet, root, _, data = trained
    image = sorted((data / "JPEGImages").glob("*.jpg"))[0]
    out = root / "detections"
    sppdet("detect", str(image), "--out", str(out), "--score-threshold", "-1")
    entries = json.loads((out / "detections.json").read_text())
    assert (out / image.name).is_file()
    assert all(set(e) >= {"image_id", "category", "bbox", "score"} for e in entries)


def test_second_run_reuses_caches(trained):
    sppdet, _, _, _ = trained
    result = sppdet("finetune", "--hidden", "64,64", "--epochs", "3")
    assert "already trained" in result.output
    assert "already trained" in sppdet("train-svm", "--layer", "pool5", "--extra-positives", "2").output
