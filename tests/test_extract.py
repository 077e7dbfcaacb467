"""One-pass features, the cache file format, and the ``extract`` stage and command."""

from __future__ import annotations

import json
import math
import re
import zipfile

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli.extract import extract
from sppdet.models.backbones import build_backbone
from sppdet.data.voc import Annotation, write_annotation, write_split
from sppdet.errors import ConfigError, ModelError, WorkdirError
from sppdet.stages.extract import prepare_extract, resolve_target, run_extract
from sppdet.workdir.records import resolve_weights
from sppdet.workdir.caches import feature_path, features_dir, features_info, load_features
from sppdet.models.features import compute_features, load_feature_file, resize_to_scale, save_feature_file
from sppdet.fileio import file_hash
from sppdet.workdir.store import WorkDir

SIZES = {"a": (60, 80), "b": (90, 70), "c": (64, 64), "d": (50, 120)}  # id -> (H, W)
TINY = dict(backbone="zf5", width=0.125, scales=(96,), device="cpu")


@pytest.fixture()
def voc(tmp_path):
    """A four-image VOC dataset (random PNGs) split into trainval (a, b, c) and test (d)."""
    root = tmp_path / "voc"
    rng = np.random.default_rng(0)
    for image_id, (height, width) in SIZES.items():
        (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "JPEGImages" / f"{image_id}.png"),
                    rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        write_annotation(root / "Annotations" / f"{image_id}.xml", Annotation(
            image_id=image_id, width=width, height=height,
            boxes=np.array([[2, 3, 30, 40]], np.float32), names=("cat",),
            difficult=np.zeros(1, bool), filename=f"{image_id}.png"))
    write_split(root, "trainval", ["a", "b", "c"])
    write_split(root, "test", ["d"])
    return root


def _extract(tmp_path, voc, **options):
    job = prepare_extract(tmp_path / "work", data_root=voc, **{**TINY, **options})
    return job, run_extract(job)


def test_compute_features_matches_the_trunk_per_scale():
    backbone = build_backbone("zf5", 0.125)
    bgr = np.random.default_rng(1).integers(0, 256, (50, 75, 3), dtype=np.uint8)
    maps, factors = compute_features(backbone, bgr, (64, 96), "cpu")
    np.testing.assert_allclose(factors, [64 / 50, 96 / 50])
    assert factors.dtype == np.float32
    for scale, fmap in zip((64, 96), maps):
        resized = cv2.resize(bgr, (round(75 * scale / 50), round(50 * scale / 50)),
                             interpolation=cv2.INTER_LINEAR)
        assert resized.shape[:2] == (scale, round(75 * scale / 50))
        with torch.inference_mode():
            expected = backbone.trunk(backbone.preprocess(resized)[None])[0].half().numpy()
        assert fmap.dtype == np.float16 and fmap.shape == (32, math.ceil(scale / 16),
                                                           math.ceil(resized.shape[1] / 16))
        np.testing.assert_array_equal(fmap, expected)


def test_resize_shorter_side():
    bgr = np.zeros((30, 101, 3), np.uint8)
    resized, factor = resize_to_scale(bgr, 45)
    assert resized.shape == (45, round(101 * 1.5), 3) and factor == 1.5


def test_feature_file_round_trip_is_memory_mapped(tmp_path):
    rng = np.random.default_rng(2)
    maps = [rng.standard_normal((8, 3, 5)).astype(np.float16),
            rng.standard_normal((8, 6, 9)).astype(np.float16)]
    path = tmp_path / "x.npz"
    save_feature_file(path, maps, [0.5, 1.0], (40, 70))
    loaded = load_feature_file(path)
    for saved, mapped in zip(maps, loaded.maps):
        assert isinstance(mapped.base, np.memmap) and not mapped.flags.writeable
        assert mapped.dtype == np.float16
        np.testing.assert_array_equal(mapped, saved)
    np.testing.assert_array_equal(loaded.scale_factors, np.float32([0.5, 1.0]))
    np.testing.assert_array_equal(loaded.image_hw, [40, 70])
    with zipfile.ZipFile(path) as archive:  # a plain .npz: every member stored, none pickled
        assert {i.compress_type for i in archive.infolist()} == {zipfile.ZIP_STORED}
    with np.load(path, allow_pickle=False) as plain:
        np.testing.assert_array_equal(plain["map_1"], maps[1])


def test_compressed_fallback_and_bad_files(tmp_path):
    fmap = np.arange(24, dtype=np.float16).reshape(2, 3, 4)
    path = tmp_path / "z.npz"
    np.savez_compressed(path, scale_factors=np.float32([1.0]), image_hw=np.int64([3, 4]), map_0=fmap)
    np.testing.assert_array_equal(load_feature_file(path).maps[0], fmap)
    save_feature_file(path, [fmap], [1.0], (3, 4))
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(WorkdirError, match=rf"{re.escape(str(path))}: not a valid feature file"):
        load_feature_file(path)
    np.savez(path, scale_factors=np.float32([1.0, 2.0]), image_hw=np.int64([3, 4]), map_0=fmap)
    with pytest.raises(WorkdirError, match="expected 2 float16 maps"):
        load_feature_file(path)


def test_extract_caches_every_scale_in_one_float16_file(tmp_path, voc):
    job, summary = _extract(tmp_path, voc, scales=(64, 96))
    assert (summary.images, summary.computed, summary.skipped) == (3, 3, 0)
    assert sorted(p.name for p in job.folder.glob("*.npz")) == ["a.npz", "b.npz", "c.npz"]
    assert summary.cache_bytes == sum(p.stat().st_size for p in job.folder.glob("*.npz"))
    for image_id in ("a", "b", "c"):
        height, width = SIZES[image_id]
        cached = load_features(job.folder, image_id)
        factors = [s / min(height, width) for s in (64, 96)]
        np.testing.assert_allclose(cached.scale_factors, factors, rtol=1e-6)
        np.testing.assert_array_equal(cached.image_hw, [height, width])
        for fmap, f in zip(cached.maps, factors):
            assert fmap.dtype == np.float16
            assert fmap.shape == (32, math.ceil(round(height * f) / 16), math.ceil(round(width * f) / 16))
    info = features_info(job.folder)
    assert (info.stride, info.offset, info.channels, info.config.scales) == (16, 0.5, 32, (64, 96))
    assert features_dir(tmp_path / "work") == job.folder


def test_extract_resumes_and_recomputes_only_missing_or_broken(tmp_path, voc):
    job, _ = _extract(tmp_path, voc)
    before = {p.name: p.stat().st_mtime_ns for p in job.folder.glob("*.npz")}
    _, again = _extract(tmp_path, voc)
    assert (again.computed, again.skipped) == (0, 3)
    feature_path(job.folder, "b").unlink()
    feature_path(job.folder, "c").write_bytes(b"truncated")
    _, resumed = _extract(tmp_path, voc)
    assert (resumed.computed, resumed.skipped) == (2, 1)
    assert feature_path(job.folder, "a").stat().st_mtime_ns == before["a.npz"]
    assert load_features(job.folder, "c").maps[0].shape[0] == 32


def test_other_settings_never_reuse_a_cache(tmp_path, voc):
    folders = {_extract(tmp_path, voc, **change)[0].folder for change in (
        {}, {"scales": (64, 96)}, {"width": 0.25}, {"seed": 1})}
    assert len(folders) == 4
    assert _extract(tmp_path, voc, scales=(96, 96))[0].folder == _extract(tmp_path, voc)[0].folder
    job, summary = _extract(tmp_path, voc, split="test")  # splits share the folder
    assert summary.computed == 1 and feature_path(job.folder, "d").is_file()


def test_shards_cover_the_split_once(tmp_path, voc):
    first = _extract(tmp_path, voc, shard="1/2")[0].image_ids
    second = _extract(tmp_path, voc, shard="2/2")[0].image_ids
    assert sorted(first + second) == ["a", "b", "c"] and not set(first) & set(second)


def test_stage_lookups_before_extract(tmp_path, voc):
    with pytest.raises(WorkdirError, match="run sppdet extract first"):
        features_dir(tmp_path / "work")
    job, _ = _extract(tmp_path, voc)
    with pytest.raises(WorkdirError, match="run sppdet extract first"):
        load_features(job.folder, "d")
    with pytest.raises(WorkdirError, match="no dataset recorded"):
        prepare_extract(tmp_path / "other", **TINY)
    with pytest.raises(ConfigError, match="--scales"):
        prepare_extract(tmp_path / "work", scales=(0,))


def test_default_weights_are_the_recorded_pretrained_trunk(tmp_path, voc):
    work = WorkDir(tmp_path / "work")
    assert resolve_weights(work, None, "zf5", 0.125) == "none"
    trunk = tmp_path / "work" / "pretrain" / "trunk.pt"
    trunk.parent.mkdir(parents=True)
    torch.save(build_backbone("zf5", 0.125, seed=7).trunk.state_dict(), trunk)
    work.record_stage("pretrain", {"weights": "pretrain/trunk.pt", "backbone": "zf5", "width": 0.125})
    assert resolve_weights(work, None, "zf5", 0.125) == str(trunk)
    assert resolve_weights(work, "none", "zf5", 0.125) == "none"
    assert resolve_weights(work, None, "zf5", 0.25) == "none"
    assert resolve_weights(work, None, "alexnet", 1.0) == "none"
    job, _ = _extract(tmp_path, voc)
    assert job.config.weights == file_hash(trunk)
    recorded = json.loads(work.config_path.read_text())["stages"]["extract"]
    assert recorded["folder"] == job.folder.name and recorded["weights_source"] == "pretrain/trunk.pt"
    assert work.recorded_path(recorded["weights_source"]) == str(trunk)  # relative: the folder may move


@pytest.mark.parametrize("recorded_lrn", [False, True])
def test_the_recorded_trunk_runs_with_or_without_lrn_as_its_record_says(tmp_path, voc, recorded_lrn):
    work = WorkDir(tmp_path / "work")
    trunk = tmp_path / "work" / "pretrain" / "trunk.pt"
    trunk.parent.mkdir(parents=True)
    torch.save(build_backbone("zf5", 0.125, seed=7).trunk.state_dict(), trunk)
    work.record_stage("pretrain", {"weights": "pretrain/trunk.pt", "backbone": "zf5", "width": 0.125,
                                   "lrn": recorded_lrn})
    job, _ = _extract(tmp_path, voc)
    assert job.backbone.lrn is recorded_lrn and job.config.lrn is recorded_lrn
    assert features_info(job.folder).config.lrn is recorded_lrn
    expected_trunk = build_backbone("zf5", 0.125, weights=trunk, lrn=recorded_lrn)
    image = cv2.imread(str(voc / "JPEGImages" / "a.png"))
    expected, _ = compute_features(expected_trunk, image, TINY["scales"])
    np.testing.assert_array_equal(load_features(job.folder, "a").maps[0], expected[0])
    other = tmp_path / "other.pt"  # a weights file sppdet did not train: the architecture's LRN
    torch.save(build_backbone("zf5", 0.125, seed=7).trunk.state_dict(), other)
    assert _extract(tmp_path, voc, weights=str(other))[0].config.lrn is True


def test_scale_choice_target_follows_the_pretraining_crops(tmp_path, voc):
    work = WorkDir(tmp_path / "work")
    assert resolve_target(work, "none", None) == 224 and resolve_target(work, "none", 80) == 80
    with pytest.raises(ConfigError, match="--target"):
        resolve_target(work, "none", 0)
    trunk = tmp_path / "work" / "pretrain" / "trunk.pt"
    trunk.parent.mkdir(parents=True)
    torch.save(build_backbone("zf5", 0.125, seed=7).trunk.state_dict(), trunk)
    work.record_stage("pretrain", {"weights": "pretrain/trunk.pt", "backbone": "zf5", "width": 0.125,
                                   "config": {"sizes": [64, 96]}})
    assert resolve_target(work, str(trunk), None) == 96  # 1.5 x the main (first) crop side
    assert resolve_target(work, str(tmp_path / "other.pt"), None) == 224
    job, _ = _extract(tmp_path, voc)
    assert job.config.target == 96 and features_info(job.folder).config.target == 96
    assert _extract(tmp_path, voc, target=224)[0].folder != job.folder


def test_badly_scaled_weights_are_reported(tmp_path, voc):
    state = build_backbone("zf5", 0.125).trunk.state_dict()
    state["conv5.bias"] = torch.full_like(state["conv5.bias"], 1e6)
    path = tmp_path / "huge.pt"
    torch.save(state, path)
    with pytest.raises(ModelError, match="a.png: .*float16"):
        _extract(tmp_path, voc, weights=str(path))


def test_cli_extract(tmp_path, voc):
    runner = CliRunner()
    args = ["--workdir", str(tmp_path / "work"), "--data", str(voc), "--width", "0.125",
            "--scales", "64,96", "--device", "cpu", "--quiet"]
    result = runner.invoke(extract, args)
    assert result.exit_code == 0, result.output
    folder = features_dir(tmp_path / "work")
    assert f"features: {folder} (" in result.output and "3 computed" in result.output
    rerun = runner.invoke(extract, args)
    assert rerun.exit_code == 0 and "3 cached" in rerun.output

    missing = tmp_path / "absent.pt"
    bad = runner.invoke(extract, args + ["--weights", str(missing)])
    assert bad.exit_code == 1 and "Traceback" not in bad.output
    assert f"Error: {missing}: weights file not found" in bad.output
    assert runner.invoke(extract, args[:-3] + ["--scales", "6x"]).exit_code == 2
    if not torch.cuda.is_available():
        no_cuda = runner.invoke(extract, args[:-3] + ["--device", "cuda"])
        assert no_cuda.exit_code == 2 and "CUDA is not available" in no_cuda.output


def test_bfloat16_features_stay_close_to_float32():
    """--precision bfloat16: the same maps within bfloat16's resolution (8-bit mantissa, several
    layers deep); an unknown precision is refused."""
    net = build_backbone("zf5", 0.25, "none", seed=0)
    bgr = np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    full, factors = compute_features(net, bgr, (90, 150))
    half, half_factors = compute_features(net, bgr, (90, 150), precision="bfloat16")
    np.testing.assert_array_equal(factors, half_factors)
    for a, b in zip(full, half):
        assert a.dtype == b.dtype == np.float16 and a.shape == b.shape
        a, b = a.astype(np.float32), b.astype(np.float32)
        assert np.linalg.norm(a - b) / np.linalg.norm(a) < 0.03
        assert not np.array_equal(a, b)
    with pytest.raises(ConfigError, match="--precision float8"):
        compute_features(net, bgr, (90,), precision="float8")
