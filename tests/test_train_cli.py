"""``sppdet train`` with no flags on a dataset of another generator (``sppdet scenery``), then
``eval --split test`` and ``status``; the test split's images are unreadable while it trains."""

from __future__ import annotations

import json
import shutil

import pytest

from sppdet.data.voc import read_split


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cli_runner):
    root = tmp_path_factory.mktemp("train")
    work, data = root / "work", root / "cells"
    sppdet = cli_runner(work)
    sppdet("scenery", str(data), "--look", "cells", "--images", "24", "--seed", "2", "--workers", "1")
    empty = sppdet("status").output
    # train must never open a test image: make them unreadable while it runs
    test_images = [p for p in (data / "JPEGImages").iterdir() if p.stem in set(read_split(data, "test"))]
    saved = root / "saved"
    saved.mkdir()
    for path in test_images:
        shutil.copy(path, saved / path.name)
        path.write_bytes(b"not an image")
    result = sppdet("train", "--data", str(data))
    for path in test_images:
        shutil.copy(saved / path.name, path)
    return sppdet, root, work, data, result, empty


def test_status_of_an_empty_work_directory(trained):
    empty = trained[5]
    assert empty.count(" no ") >= 6 and "next: sppdet propose --data DATASET" in empty


def test_train_chooses_on_val_and_eval_scores_test_above_chance(trained):
    sppdet, root, work, data, result, _ = trained
    assert "val mAP" in result.output and "chosen on val" in result.output
    summary = json.loads((work / "train-summary.json").read_text())
    assert summary["splits"]["carved"] and summary["splits"]["val"] == "val"  # scenery writes no val.txt
    assert {t["what"] for t in summary["selection"]["trials"]} >= {"start", "layer", "C"}
    val = read_split(data, "val", work / "splits")
    assert set(val) <= set(read_split(data, "trainval")) and not set(val) & set(read_split(data, "test"))
    sppdet("eval", "--split", "test", "--json", str(root / "test.json"))
    test = json.loads((root / "test.json").read_text())
    # random scores give an AP near the share of positives among the scored windows (< 0.05)
    assert test["mAP"] > 0.2, test


def test_status_of_a_finished_work_directory(trained):
    sppdet = trained[0]
    output = sppdet("status").output
    assert " no " not in output and "chosen on val: val mAP" in output and "next: sppdet eval" in output


def test_a_second_train_reuses_everything(trained):
    sppdet, _, work, data, _, _ = trained
    summary = (work / "train-summary.json").stat()
    again = sppdet("train", "--data", str(data)).output
    assert "pretrain: cached" in again and "0 images computed" in again
    after = (work / "train-summary.json").stat()  # the summary of the run that trained is kept
    assert (after.st_ino, after.st_mtime_ns) == (summary.st_ino, summary.st_mtime_ns)


def test_status_of_a_half_done_work_directory(trained, tmp_path, cli_runner):
    data = trained[3]
    sppdet = cli_runner(tmp_path / "half")
    sppdet("propose", "--data", str(data), "--split", "trainval", "--workers", "1", "--max-side", "160")
    output = sppdet("status").output
    assert "propose" in output and "next: sppdet pretrain" in output


def test_svm_variants_mined_together_equal_separate_runs(trained):
    import dataclasses
    import shutil as sh

    from sppdet.config import SvmConfig
    from sppdet.workdir.store import WorkDir
    from sppdet.stages.train_svm import MODEL_FILE, run_train_svm, train_svm_variants
    from sppdet.workdir.window_source import WindowSource

    work = WorkDir(trained[2])
    base = SvmConfig(layer="pool5", C=0.2)
    together = train_svm_variants(work, WindowSource(work, "train"), [base, dataclasses.replace(base, C=0.5)])
    assert [s.trained for s in together] == [True, True]
    model = together[1].folder / MODEL_FILE
    joint = model.read_bytes()
    sh.rmtree(together[1].folder)
    alone = run_train_svm(work, "train", dataclasses.replace(base, C=0.5))
    assert alone.folder == together[1].folder and (alone.folder / MODEL_FILE).read_bytes() == joint
    with pytest.raises(Exception, match="may differ only in"):
        train_svm_variants(work, WindowSource(work, "train"), [base, dataclasses.replace(base, layer="fc7")])


def test_print_config_is_toml_and_a_bad_config_is_one_line(trained, tmp_path):
    import tomllib

    sppdet, _, _, data, _, _ = trained
    printed = sppdet("train", "--data", str(data), "--print-config").output
    values = tomllib.loads(printed)
    assert values["augment"] == ["flip"] and "scales" in values["extract"] and "C" in values["train-svm"]
    assert "# data:" in printed  # each value says where it came from
    bad = tmp_path / "bad.toml"
    bad.write_text("[pretrain]\nepoch = 3\n")
    result = sppdet("train", "--data", str(data), "--config", str(bad), code=2)
    assert "unknown key 'epoch' in [pretrain]" in result.output and "Traceback" not in result.output


def test_a_pretraining_budget_cuts_epochs_once_and_is_remembered(trained, monkeypatch):
    import dataclasses

    import sppdet.pipelines.train as train_stage
    from sppdet.config import PretrainConfig
    from sppdet.stages.pretrain import prepare_pretrain
    from sppdet.workdir.store import WorkDir

    work = WorkDir(trained[2])
    config = dataclasses.replace(PretrainConfig(), windows="random", epochs=30, width=0.125, hidden=(32, 32))
    job = prepare_pretrain(work, config, split="train", device="cpu")
    seconds = train_stage.estimate_epoch_seconds(job)
    assert seconds > 0
    assert train_stage.budget_epochs(work, job, 30 * seconds / 60 * 10) == 30  # fits: the planned epochs
    assert train_stage.budget_epochs(work, job, 1e-4) == 4  # never fewer than MIN_PRETRAIN_EPOCHS

    def no_probe(job):
        raise AssertionError("the decision should have been remembered")

    monkeypatch.setattr(train_stage, "estimate_epoch_seconds", no_probe)
    assert train_stage.budget_epochs(work, job, 1e-4) == 4


def test_pooled_memo_gives_the_same_detections_and_svms(trained, tmp_path):
    import numpy as np

    from sppdet.config import DetectConfig, SvmConfig
    from sppdet.workdir.trained import detect_split
    from sppdet.workdir.store import WorkDir
    from sppdet.models.svm import SvmModel
    from sppdet.stages.train_svm import train_svm_variants
    from sppdet.workdir.window_source import PooledMemo, WindowSource

    work = WorkDir(trained[2])
    memo = PooledMemo(budget=1e9)
    plain = detect_split(work, "val", DetectConfig())
    for _ in range(2):  # the second pass reads the memo
        cached = detect_split(work, "val", DetectConfig(), source=WindowSource(work, "val", memo=memo))
        assert all(np.array_equal(getattr(plain, f), getattr(cached, f)) for f in plain.__dataclass_fields__)
    assert memo.held > 0
    empty = WindowSource(work, "val", memo=PooledMemo(budget=0))
    assert empty.pool(empty.image_ids[0], np.zeros((0, 4), np.float32)).shape[0] == 0
    # SVMs mined through a memo (filled by an earlier pass) have the bytes of SVMs mined without one
    config = SvmConfig(layer="pool5", C=0.02)
    source = WindowSource(work, "train", memo=memo)
    (first,) = train_svm_variants(work, source, [config])
    reference = (first.folder / "svm.npz").read_bytes()
    (first.folder / "svm.npz").unlink()
    assert memo.held > 0
    (again,) = train_svm_variants(work, source, [config])  # every window from the memo
    assert (again.folder / "svm.npz").read_bytes() == reference
    model = SvmModel.load(again.folder / "svm.npz")
    assert model.weights.shape[1] == len(model.class_names)


def test_fc7_scale_multiplies_the_balanced_weight(trained):
    from sppdet.config import SvmConfig
    from sppdet.workdir.store import WorkDir
    from sppdet.models.svm import SvmModel
    from sppdet.stages.train_svm import train_svm_variants
    from sppdet.workdir.window_source import WindowSource

    work = WorkDir(trained[2])
    source = WindowSource(work, "train")
    weights = []
    for scale in (1.0, 2.0):
        (summary,) = train_svm_variants(work, source, [SvmConfig(layer="pool5+fc7", C=0.02, fc7_scale=scale)])
        weights.append(SvmModel.load(summary.folder / "svm.npz").metadata["fc7_weight"])
    assert weights[1] == 2 * weights[0] > 0


def test_readme_python_api_example_runs(trained, tmp_path, monkeypatch, capsys):
    """The README's Python API block, run as written in a folder holding a trained
    ``sppdet-work`` and a ``photo.jpg``."""
    from pathlib import Path

    _, _, work, data, _, _ = trained
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    block = readme.split("<!-- api-example: tests/test_train_cli.py runs this block -->", 1)[1]
    code = block.split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "sppdet-work").symlink_to(work, target_is_directory=True)
    test_id = read_split(data, "test")[0]
    shutil.copy(data / "JPEGImages" / f"{test_id}.jpg", tmp_path / "photo.jpg")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SPPDET_WORKDIR", raising=False)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    result = namespace["result"]
    assert result.boxes.shape == (len(result.scores), 4) and len(result.labels) == len(result.scores)
    printed = capsys.readouterr().out.splitlines()
    assert printed, "the example should find the cells in a test image"
    assert len(printed) == len(result.scores)
    assert all(line.split()[0] in namespace["detector"].classes for line in printed)


def test_train_with_a_trained_trunk_recomputes_val_features(trained, tmp_path, cli_runner):
    """``[finetune] train_conv = true``: the trunk is fine-tuned on train, and the val split's
    features are recomputed with it before the selection scores them (else val is missing from
    the new features folder)."""
    from sppdet.workdir.caches import features_dir
    from sppdet.workdir.records import TUNED_TRUNK_RECORD
    from sppdet.workdir.store import WorkDir

    _, _, work, data, _, _ = trained
    copy = tmp_path / "work"
    shutil.copytree(work, copy)
    config = tmp_path / "conv.toml"
    config.write_text("[finetune]\ntrain_conv = true\nepochs = 1\n")
    output = cli_runner(copy)("train", "--data", str(data), "--config", str(config)).output
    assert "extract val (trained trunk)" in output and "chosen on val" in output
    workdir = WorkDir(copy)
    tuned = workdir.config()["stages"][TUNED_TRUNK_RECORD]
    folder = features_dir(workdir)
    assert folder.name == tuned["features"]
    for split in ("train", "val"):
        ids = read_split(data, split, copy / "splits")
        assert all((folder / f"{image_id}.npz").is_file() for image_id in ids), split
