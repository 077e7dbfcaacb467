"""The R-CNN baseline (``--method rcnn``): the crop/warp, the pooled vectors, the cache, and the
whole chain side by side with SPP in one work directory."""

from __future__ import annotations

import json
import math
import shutil

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli.main import cli
from sppdet.models.backbones import build_backbone
from sppdet.workdir.trained import load_detector, trained_regressors
from sppdet.config import DetectConfig
from sppdet.data.voc import write_split
from sppdet.stages.detect import ImageDetector, detect_files
from sppdet.workdir.trained import detect_split
from sppdet.errors import ConfigError, ModelError, WorkdirError
from sppdet.workdir.trained import finetuned_head
from sppdet.workdir.methods import stage_key
from sppdet.models.crops import context_boxes, pool_maps, rcnn_pooled, warp_crops
from sppdet.models.crops import compute_rcnn_features
from sppdet.workdir.caches import box_rows, rcnn_features_dir, rcnn_info
from sppdet.ops.spp import pooled_dim, spp_pool
from sppdet.workdir.store import WorkDir
from sppdet.workdir.trained import trained_svms
from sppdet.workdir.window_source import WindowSource

# ---------------------------------------------------------------------------------------------
# the warp, against a slow reference written from R-CNN's appendix A


def reference_crop(image: np.ndarray, box, size: int, context: int) -> np.ndarray:
    """One box, pixel by pixel: dilate so ``context`` px of the warped crop surround the box, then
    sample each crop pixel centre bilinearly between pixel centres (edge pixels replicated, as
    cv2.resize), the mean (0) where the sample falls outside the image."""
    channels, height, width = image.shape
    x1, y1, x2, y2 = (float(v) for v in box)
    grow = size / (size - 2 * context)
    cx, cy, hw, hh = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2 * grow, (y2 - y1) / 2 * grow
    dx1, dy1, dx2, dy2 = cx - hw, cy - hh, cx + hw, cy + hh
    out = np.zeros((channels, size, size))
    for i in range(size):
        y = dy1 + (i + 0.5) * (dy2 - dy1) / size
        for j in range(size):
            x = dx1 + (j + 0.5) * (dx2 - dx1) / size
            if not (0 <= x <= width and 0 <= y <= height):
                continue
            u, v = min(max(x - 0.5, 0.0), width - 1), min(max(y - 0.5, 0.0), height - 1)
            u0, v0 = int(math.floor(u)), int(math.floor(v))
            u1, v1 = min(u0 + 1, width - 1), min(v0 + 1, height - 1)
            fu, fv = u - u0, v - v0
            out[:, i, j] = ((1 - fv) * ((1 - fu) * image[:, v0, u0] + fu * image[:, v0, u1])
                            + fv * ((1 - fu) * image[:, v1, u0] + fu * image[:, v1, u1]))
    return out


def coordinate_image(height: int = 70, width: int = 90) -> np.ndarray:
    """float32 [3, H, W]: channel 0 = 1 + column, channel 1 = 1 + row, channel 2 = both mixed
    (no pixel is 0, so a 0 in a crop can only be out-of-image context)."""
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    return np.stack([1 + cols, 1 + rows, 1 + cols + 100 * rows])


def test_context_boxes_leave_context_pixels_around_the_box():
    boxes = np.array([[20, 20, 52, 52], [3.5, 7, 40, 11]], np.float32)
    np.testing.assert_allclose(context_boxes(boxes, 64, 0), boxes)
    dilated = context_boxes(boxes, 64, 16)
    np.testing.assert_allclose(dilated[0], [4, 4, 68, 68])
    # the original box lands at [context, size - context] of the warped crop, on both axes
    warped = (boxes - np.tile(dilated[:, :2], 2)) / np.tile(dilated[:, 2:] - dilated[:, :2], 2) * 64
    np.testing.assert_allclose(warped, np.tile([16, 16, 48, 48], (2, 1)), atol=1e-4)
    with pytest.raises(ConfigError):
        context_boxes(boxes, 32, 16)


def test_crop_of_a_known_region_with_and_without_context():
    image = coordinate_image()
    tensor = torch.from_numpy(image)
    # a 64 px region warped to 64 px is the region's pixels, with or without context
    plain = warp_crops(tensor, np.array([[4, 4, 68, 68]], np.float32), size=64, context=0)[0]
    padded = warp_crops(tensor, np.array([[20, 20, 52, 52]], np.float32), size=64, context=16)[0]
    np.testing.assert_array_equal(plain.numpy(), image[:, 4:68, 4:68])
    np.testing.assert_array_equal(padded.numpy(), image[:, 4:68, 4:68])
    # at the corner, the 16 px of context above and left of the image are the mean (0)
    corner = warp_crops(tensor, np.array([[0, 0, 32, 32]], np.float32), size=64, context=16)[0].numpy()
    assert (corner[:, :16, :] == 0).all() and (corner[:, :, :16] == 0).all()
    np.testing.assert_array_equal(corner[:, 16:, 16:], image[:, 0:48, 0:48])


def test_halving_warp_is_cv2_resize_of_the_region():
    image = coordinate_image() * np.float32(1.7) % 97  # not linear, so interpolation matters
    box = np.array([[10, 6, 58, 54]], np.float32)  # 48 x 48 -> 24 x 24
    crop = warp_crops(torch.from_numpy(image), box, size=24, context=0)[0].numpy()
    region = image[:, 6:54, 10:58].transpose(1, 2, 0)
    expected = cv2.resize(region, (24, 24), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)
    np.testing.assert_allclose(crop, expected, atol=1e-4)


@pytest.mark.parametrize("context", [0, 16])
def test_warp_matches_the_reference(context):
    rng = np.random.default_rng(0)
    image = rng.normal(0, 50, (3, 37, 53)).astype(np.float32)
    corners = rng.uniform(-15, 60, (8, 2))
    sizes = rng.uniform(2, 45, (8, 2))
    boxes = np.concatenate([corners, corners + sizes], 1).astype(np.float32)
    boxes[0] = [0, 0, 53, 37]  # the whole image: all its context is outside
    crops = warp_crops(torch.from_numpy(image), boxes, size=40, context=context).numpy()
    assert crops.shape == (8, 3, 40, 40) and crops.dtype == np.float32
    for crop, box in zip(crops, boxes):
        np.testing.assert_allclose(crop, reference_crop(image, box, 40, context), atol=2e-3)
    assert warp_crops(torch.from_numpy(image), boxes[:0], 40, context).shape == (0, 3, 40, 40)


@pytest.mark.parametrize("backbone", ["zf5", "alexnet"])
def test_out_of_image_context_is_the_mean(backbone):
    net = build_backbone(backbone, 0.125 if backbone == "zf5" else 1.0, "none")
    rng = np.random.default_rng(1)
    bgr = rng.integers(0, 256, (40, 50, 3)).astype(np.uint8)
    bgr[bgr == 128] = 129  # no pixel equals zf5's mean
    image = net.preprocess(bgr)
    # the dilated box [2.5, -15, 92.5, 85] reaches past the top, right and bottom edges
    crops = warp_crops(image, np.array([[25, 10, 70, 60]], np.float32), size=32, context=8)[0]
    dilated = context_boxes(np.array([[25, 10, 70, 60]], np.float32), 32, 8)[0]
    x = dilated[0] + (np.arange(32) + 0.5) * (dilated[2] - dilated[0]) / 32
    y = dilated[1] + (np.arange(32) + 0.5) * (dilated[3] - dilated[1]) / 32
    outside = (y[:, None] < 0) | (y[:, None] > 40) | (x[None, :] < 0) | (x[None, :] > 50)
    assert outside.any() and not outside.all()
    assert (crops[:, torch.from_numpy(outside)] == 0).all()
    assert (crops[:, torch.from_numpy(~outside)] != 0).all()
    # zero is the preprocessed mean colour
    mean = np.asarray(net.preprocessing.mean, np.float32)
    assert np.allclose((mean - mean) / np.asarray(net.preprocessing.std), 0)


# ---------------------------------------------------------------------------------------------
# pooling and the features of a whole image


@pytest.mark.parametrize("hw", [(14, 14), (7, 9), (4, 3), (1, 1)])
def test_pool_maps_is_spp_pool_of_the_whole_map(hw):
    torch.manual_seed(0)
    maps = torch.randn(5, 6, *hw)
    for levels in ((1, 2, 3, 6), (6,), (2, 4)):
        whole = torch.tensor([[0, 0, hw[1] - 1, hw[0] - 1]])
        expected = torch.cat([spp_pool(m, whole, levels) for m in maps])
        torch.testing.assert_close(pool_maps(maps, levels), expected, rtol=0, atol=0)


def test_rcnn_pooled_equals_warp_trunk_pool_per_window():
    net = build_backbone("zf5", 0.125, "none", seed=0)
    rng = np.random.default_rng(2)
    bgr = rng.integers(0, 256, (60, 80, 3)).astype(np.uint8)
    boxes = np.array([[0, 0, 80, 60], [10, 5, 30, 50], [60, 40, 80, 60], [-5, 20, 20, 30],
                      [33.5, 12.25, 71, 19]], np.float32)
    pooled = rcnn_pooled(net, bgr, boxes, size=48, context=6, batch=2)
    dim = pooled_dim(net.channels)
    assert pooled.shape == (5, dim) and dim == net.channels * 50 and pooled.dtype == np.float32
    image = net.preprocess(bgr).contiguous()
    with torch.inference_mode():
        for box, row in zip(boxes, pooled):
            crop = torch.from_numpy(reference_crop(image.numpy(), box, 48, 6)).float()[None]
            conv5 = net.trunk(crop)
            assert conv5.shape == (1, net.channels, 3, 3)  # 48 / 16
            expected = spp_pool(conv5[0], torch.tensor([[0, 0, 2, 2]]))[0]
            np.testing.assert_allclose(row, expected.numpy(), rtol=1e-3, atol=1e-3)
    # batching changes only the float rounding of the convolutions
    np.testing.assert_allclose(rcnn_pooled(net, bgr, boxes, size=48, context=6, batch=128), pooled,
                               rtol=1e-4, atol=1e-4)
    assert rcnn_pooled(net, bgr, boxes[:0], size=48, context=6).shape == (0, dim)


def test_box_rows_lookup_matches_a_loop():
    rng = np.random.default_rng(3)
    cached = rng.uniform(0, 100, (50, 4)).astype(np.float32)
    cached[7] = cached[3]  # a duplicate: the first row wins
    cached[9] = [-0.0, 0, 5, 5]
    wanted = np.concatenate([cached[[3, 9, 0, 49, 7]], cached[:1] + 0.5, [[0.0, 0, 5, 5]]]).astype(np.float32)
    expected = [next((i for i, c in enumerate(cached) if (c == w).all()), -1) for w in wanted]
    np.testing.assert_array_equal(box_rows(cached, wanted), expected)
    assert expected == [3, 9, 0, 49, 3, -1, 9]
    assert box_rows(cached, wanted[:0]).shape == (0,)


# ---------------------------------------------------------------------------------------------
# the chain through the command line, spp and rcnn side by side in one work directory

CLASSES = ("disc", "square")
TRUNK = ["--width", "0.125"]
CROPS = ["--crop-size", "48", "--context", "6"]


@pytest.fixture(scope="module")
def chain(tmp_path_factory, write_scene_dataset):
    base = tmp_path_factory.mktemp("rcnn")
    root, work = base / "voc", base / "work"
    rng = np.random.default_rng(0)
    ids = write_scene_dataset(root, CLASSES, 8, rng, 96, 128, (26, 44))
    write_split(root, "trainval", ids)
    runner = CliRunner(env={"SPPDET_WORKDIR": str(work)})

    def sppdet(*args, code=0):
        result = runner.invoke(cli, [*args, "--quiet"])
        assert result.exit_code == code, f"sppdet {' '.join(args)}:\n{result.output}"
        return result

    sppdet("propose", "--data", str(root), "--max-proposals", "60", "--max-side", "128",
           "--workers", "1")
    sppdet("extract", *TRUNK, "--scales", "96", "--device", "cpu")
    sppdet("extract", *TRUNK, "--method", "rcnn", *CROPS, "--device", "cpu")
    for method in ("spp", "rcnn"):
        sppdet("finetune", "--method", method, "--hidden", "32,32", "--epochs", "2")
        sppdet("train-svm", "--method", method, "--layer", "fc7")
        sppdet("train-bbox", "--method", method)
    return sppdet, base, WorkDir(work), root


def test_both_methods_live_side_by_side(chain):
    _, _, work, _ = chain
    stages = work.config()["stages"]
    for stage in ("extract", "finetune", "train-svm", "train-bbox"):
        assert stage in stages and f"{stage}:rcnn" in stages
        assert stages[stage]["folder"] != stages[f"{stage}:rcnn"]["folder"]
    assert stage_key("train-svm", "rcnn") == "train-svm:rcnn" and stage_key("train-svm") == "train-svm"
    info = rcnn_info(rcnn_features_dir(work))
    assert (info.config.crop_size, info.config.context, info.config.levels) == (48, 6, (1, 2, 3, 6))
    spp, rcnn = WindowSource(work, "trainval"), WindowSource(work, "trainval", method="rcnn")
    assert spp.dim == rcnn.dim and spp.feature_hash != rcnn.feature_hash
    assert rcnn.feature_hash.startswith("rcnn:")


@pytest.mark.parametrize("method", ["spp", "rcnn"])
def test_eval_each_method(chain, method):
    sppdet, base, work, _ = chain
    summary_path = base / f"ap-{method}.json"
    sppdet("eval", "--split", "trainval", "--method", method, "--json", str(summary_path))
    summary = json.loads(summary_path.read_text())
    aps = [c["ap"] for c in summary["classes"].values() if c["ap"] is not None]
    assert len(aps) == len(CLASSES) and all(0.0 <= ap <= 1.0 for ap in aps)
    folder = work.root / ("results" if method == "spp" else "results-rcnn")
    assert len(list(folder.glob("comp4_det_trainval_*.txt"))) == len(CLASSES)


def test_models_refuse_the_other_methods_features(chain):
    _, _, work, _ = chain
    spp, rcnn = WindowSource(work, "trainval"), WindowSource(work, "trainval", method="rcnn")
    for features, method in ((spp, "rcnn"), (rcnn, "spp")):
        with pytest.raises(ModelError, match="trained on features"):
            finetuned_head(work, features.feature_hash, features.dim, method)
        with pytest.raises(ModelError, match="trained on features"):
            trained_svms(work, f"{features.feature_hash}:pool5", method)
        with pytest.raises(ModelError, match="trained on features"):
            trained_regressors(work, features.feature_hash, method)
        with pytest.raises(ModelError, match="re-run"):
            load_detector(work, features.feature_hash, features.dim, DetectConfig(), method)
    for features in (spp, rcnn):  # and each accepts its own
        load_detector(work, features.feature_hash, features.dim, DetectConfig(), features.method)


def test_rcnn_pool_reads_cached_rows_and_refuses_other_boxes(chain):
    _, _, work, root = chain
    source = WindowSource(work, "trainval", method="rcnn")
    image_id = source.image_ids[2]
    gt_boxes, _, _ = source.ground_truth(image_id)
    proposals = source.proposals(image_id)
    windows = np.concatenate([proposals[[5, 0]], gt_boxes])
    net = build_backbone("zf5", 0.125, "none")
    bgr = cv2.imread(str(root / "JPEGImages" / f"{image_id}.png"))
    direct = compute_rcnn_features(net, bgr, windows, rcnn_info(source.features_folder).config)
    np.testing.assert_allclose(source.pool(image_id, windows), direct.astype(np.float32),
                               rtol=1e-2, atol=1e-2)
    with pytest.raises(WorkdirError, match="not cached"):
        source.pool(image_id, proposals[:3] + 1)
    with pytest.raises(ConfigError, match="levels"):
        WindowSource(work, "trainval", levels=(6,), method="rcnn")


def test_detect_rcnn_on_a_file_matches_the_split(chain, tmp_path):
    sppdet, _, work, root = chain
    copy = tmp_path / "renamed.png"
    shutil.copy(root / "JPEGImages" / "003.png", copy)
    out = tmp_path / "out"
    result = sppdet("detect", str(copy), "--method", "rcnn", "--out", str(out),
                    "--score-threshold", "-1", "--device", "cpu")
    assert "1 computed" in result.output and (out / "renamed.png").is_file()
    config = DetectConfig(score_threshold=-1.0)
    detector = ImageDetector(work, config, "cpu", method="rcnn")
    run = detect_files(detector, [copy])
    assert run.computed == 0 and list(detector.cache_folder.glob("*.rcnn.npy"))
    split = detect_split(work, "trainval", config, method="rcnn")
    rows = split.image_index == split.images.index("003")
    (found,) = run.results
    assert len(found.scores) > 0
    np.testing.assert_allclose(found.scores, split.scores[rows], atol=1e-3)
    np.testing.assert_allclose(found.boxes, split.boxes[rows], atol=1e-2)


def test_rcnn_extract_resumes_and_checks_its_options(chain):
    sppdet, _, work, _ = chain
    folder = rcnn_features_dir(work)
    (folder / "004.pooled.npy").unlink()
    result = sppdet("extract", *TRUNK, "--method", "rcnn", *CROPS, "--device", "cpu")
    assert "1 computed, 7 cached" in result.output
    for image_id in ("000", "001"):
        (folder / f"{image_id}.boxes.npy").unlink()
    for shard in ("1/2", "2/2"):  # shard i does every 2nd image from the i-th: one missing each
        result = sppdet("extract", *TRUNK, "--method", "rcnn", *CROPS, "--shard", shard)
        assert "1 computed, 3 cached" in result.output
    assert sppdet("extract", *TRUNK, "--crop-size", "48", code=2).output.count("--crop-size")
    assert "--scales" in sppdet("extract", "--method", "rcnn", "--scales", "96", code=2).output
    assert "context" in sppdet("extract", "--method", "rcnn", "--crop-size", "8", code=2).output


def test_rcnn_stages_need_rcnn_features(tmp_path, chain):
    sppdet, _, work, _ = chain
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    shutil.copy(work.config_path, fresh / "config.json")  # records, but no rcnn folder there
    result = sppdet("train-svm", "--method", "rcnn", "--workdir", str(fresh), code=1)
    assert "extract --method rcnn" in result.output
