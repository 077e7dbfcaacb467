"""The command-line options the accuracy ablation (benchmarks/ablation.py) relies on, on a tiny
work directory: ``finetune --epochs 0`` (the pretrained head, untouched), ``train-svm --levels``
(another pyramid, followed by eval and detect) and ``eval --no-bbox-reg``."""

from __future__ import annotations

import json

import pytest
import torch

from sppdet.workdir.store import WorkDir
from sppdet.models.svm import SvmModel

TINY = ["--width", "0.125"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, cli_runner):
    root = tmp_path_factory.mktemp("ablation-cli")
    work, data = root / "work", root / "data"
    sppdet = cli_runner(work)

    sppdet("synth", str(data), "--images", "16", "--seed", "5")
    sppdet("propose", "--data", str(data), "--split", "trainval", "--max-side", "160", "--workers", "1")
    sppdet("propose", "--split", "test", "--max-side", "160", "--workers", "1")
    sppdet("pretrain", *TINY, "--sizes", "48,40", "--epochs", "2", "--hidden", "32,32",
           "--batch-size", "32", "--lr", "0.05")
    for split in ("trainval", "test"):
        sppdet("extract", "--split", split, *TINY, "--scales", "160")
    return sppdet, root, WorkDir(work), data


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state"]


def test_finetune_epochs_zero_keeps_the_pretrained_head(workdir):
    sppdet, _, work, _ = workdir
    sppdet("finetune", "--hidden", "32,32", "--epochs", "0")
    stages = work.config()["stages"]
    kept, pretrained = _state(work.root / stages["finetune"]["head"]), _state(work.root / stages["pretrain"]["head"])
    assert kept.keys() == pretrained.keys()
    assert all(torch.equal(kept[k], pretrained[k]) for k in kept)
    sppdet("train-svm", "--layer", "fc7")
    assert work.config()["stages"]["train-svm"]["layer"] == "fc7"


def test_finetune_epochs_zero_without_a_matching_head_is_a_usage_error(workdir):
    sppdet = workdir[0]
    result = sppdet("finetune", "--hidden", "16,16", "--epochs", "0", code=2)
    assert "--epochs 0 keeps the head of `sppdet pretrain`" in result.output
    assert "Traceback" not in result.output


def test_levels_are_recorded_and_followed_by_eval_and_detect(workdir):
    sppdet, root, work, data = workdir
    sppdet("train-bbox")
    sppdet("train-svm", "--layer", "pool5", "--levels", "6")
    record = work.config()["stages"]["train-svm"]
    assert record["levels"] == [6] and ":L6:pool5" in record["feature_hash"]
    svms = SvmModel.load(work.root / record["model"])
    channels = work.config()["stages"]["extract"]["channels"]
    assert svms.weights.shape[0] == channels * 36
    # the box regressors read the default pyramid: eval must be told to score without them
    refused = sppdet("eval", "--split", "test", code=1)
    assert "Traceback" not in refused.output
    sppdet("eval", "--split", "test", "--no-bbox-reg", "--json", str(root / "levels6.json"))
    assert 0.0 <= json.loads((root / "levels6.json").read_text())["mAP"] <= 1.0
    sppdet("train-svm", "--layer", "pool5", "--levels", "1,2,3,6")
    image = sorted((data / "JPEGImages").glob("*.jpg"))[0]
    sppdet("detect", str(image), "--out", str(root / "detections"))


def test_no_bbox_reg_scores_the_proposals_themselves(workdir):
    sppdet, root, work, _ = workdir
    sppdet("train-svm", "--layer", "pool5")
    sppdet("train-bbox")
    sppdet("eval", "--split", "test", "--json", str(root / "bb.json"))
    moved = (work.root / "results").glob("comp4_det_test_*.txt")
    with_bb = {p.name: p.read_text() for p in moved}
    sppdet("eval", "--split", "test", "--no-bbox-reg", "--json", str(root / "plain.json"))
    without = {p.name: p.read_text() for p in (work.root / "results").glob("comp4_det_test_*.txt")}
    assert with_bb.keys() == without.keys() and with_bb != without


def test_bad_levels_are_usage_errors(workdir):
    sppdet = workdir[0]
    result = sppdet("train-svm", "--levels", "0,2", code=2)
    assert "pyramid levels >= 1" in result.output
