"""``finetune --train-conv``: end-to-end pooling and training (sppdet.training.finetune_conv) and the stage
that saves the trunk, recomputes the features and makes the trunk the default for ``extract``."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli.main import cli
from sppdet.models.backbones import build_backbone, load_trunk_weights
from sppdet.config import FinetuneConfig, ProposeConfig
from sppdet.data.voc import write_split
from sppdet.errors import ConfigError
from sppdet.stages.extract import TRUNK_RECORD, prepare_extract, run_extract
from sppdet.workdir.records import resolve_weights
from sppdet.workdir.caches import features_dir, features_info, load_features
from sppdet.training.finetune_conv import TrainingImage, TrainableTrunk, pooled_windows, train_end_to_end
from sppdet.stages.finetune import run_finetune
from sppdet.workdir.trained import finetuned_head
from sppdet.models.head import FcHead, label_windows
from sppdet.stages.propose import prepare_propose, run_propose
from sppdet.ops.spp import choose_scales, pool_windows, pooled_dim
from sppdet.fileio import file_hash
from sppdet.workdir.store import WorkDir
from sppdet.workdir.window_source import WindowSource, pooled_feature_hash

CLASSES = ("disc", "square")
SCALES = (96, 192)
TARGET = 128  # not the default 224: the recomputed features must keep it
CONFIG = FinetuneConfig(hidden=(32, 32), epochs=2, windows_per_image=16, train_conv=True)
CLI_ARGS = ["finetune", "--train-conv", "--hidden", "32,32", "--epochs", "2",
            "--windows-per-image", "16", "--device", "cpu", "--quiet"]


def _image_and_boxes(shape_scene, seed=0):
    """A 120 x 160 scene and windows of many sizes: whole image, halves, objects, small boxes."""
    rng = np.random.default_rng(seed)
    image, gt, _ = shape_scene(rng, CLASSES, 120, 160, (28, 50))
    x1, y1 = rng.uniform(0, 120, 24), rng.uniform(0, 90, 24)
    sides = rng.uniform(6, 100, (24, 2))
    random = np.stack([x1, y1, np.minimum(x1 + sides[:, 0], 160), np.minimum(y1 + sides[:, 1], 120)], 1)
    fixed = [[0, 0, 160, 120], [0, 0, 80, 120], [10, 10, 20, 18]]
    return image, np.concatenate([fixed, gt, random]).astype(np.float32)


def _plain_maps(backbone, image, scales):
    """Reference: the no-grad float32 conv5 maps of the plain trunk, and float32 factors."""
    maps, factors = [], []
    with torch.no_grad():
        for scale in scales:
            factor = scale / min(image.shape[:2])
            size = (round(image.shape[1] * factor), round(image.shape[0] * factor))
            resized = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
            maps.append(backbone.trunk(backbone.preprocess(resized)[None])[0])
            factors.append(factor)
    return maps, np.asarray(factors, np.float32)


def test_end_to_end_pooling_matches_pool_windows_on_the_maps(shape_scene):
    backbone = build_backbone("zf5", 0.125, "none", seed=1)
    image, boxes = _image_and_boxes(shape_scene)
    scales = (128, 256, 512)
    maps, factors = _plain_maps(backbone, image, scales)
    assert set(choose_scales(boxes, factors).tolist()) == {0, 1, 2}, "the windows must span every scale"
    expected = pool_windows(maps, factors, boxes, backbone.stride, backbone.offset)
    for trunk in (backbone.trunk, TrainableTrunk(backbone)):
        got = pooled_windows(trunk, backbone, image, boxes, scales)
        assert got.shape == (len(boxes), pooled_dim(backbone.channels)) and got.dtype == torch.float32
        torch.testing.assert_close(got.detach(), expected, atol=1e-4, rtol=1e-4)
    assert pooled_windows(backbone.trunk, backbone, image, boxes[:0], scales).shape == (0, expected.shape[1])
    small_target = pool_windows(maps, factors, boxes, backbone.stride, backbone.offset, target=64)
    assert not torch.equal(small_target, expected), "target 64 must route some windows elsewhere"
    torch.testing.assert_close(pooled_windows(backbone.trunk, backbone, image, boxes, scales, target=64),
                               small_target, atol=1e-4, rtol=1e-4)


def test_trainable_trunk_folds_its_input_scale_back():
    backbone = build_backbone("zf5", 0.125, "none", seed=2)
    trunk = TrainableTrunk(backbone)
    assert trunk.input_scale == 1 / 64
    assert not torch.equal(trunk.trunk.conv1.weight, backbone.trunk.conv1.weight)
    state = trunk.plain_state()
    for name, value in backbone.trunk.state_dict().items():
        torch.testing.assert_close(state[name], value, rtol=1e-6, atol=1e-9)


def test_gradients_reach_every_conv_layer(shape_scene):
    backbone = build_backbone("zf5", 0.125, "none", seed=3)
    image, boxes = _image_and_boxes(shape_scene, 1)
    trunk = TrainableTrunk(backbone)
    head = FcHead(pooled_dim(backbone.channels), (16, 16), len(CLASSES), dropout=0.0)
    labels = torch.arange(len(boxes)) % (len(CLASSES) + 1)
    logits = head(pooled_windows(trunk, backbone, image, boxes, (96, 256)))
    torch.nn.functional.cross_entropy(logits, labels).backward()
    convs = [m for m in trunk.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 5
    for conv in convs:
        assert torch.isfinite(conv.weight.grad).all() and conv.weight.grad.abs().sum() > 0


def _labelled_batch(shape_scene, seed=5):
    """Two scenes, each with its ground truth, jittered copies of it and random 30 px windows,
    labelled as fine-tuning labels them (background below IoU 0.5)."""
    rng = np.random.default_rng(seed)
    batch = []
    for _ in range(2):
        image, gt, names = shape_scene(rng, CLASSES, 120, 160, (28, 50))
        gt_labels = np.array([CLASSES.index(name) + 1 for name in names])
        jittered = gt[rng.integers(len(gt), size=16)] + rng.normal(0, 4, (16, 4))
        x1, y1 = rng.uniform(0, 120, 16), rng.uniform(0, 90, 16)
        random = np.stack([x1, y1, np.minimum(x1 + 30, 160), np.minimum(y1 + 30, 120)], 1)
        boxes = np.concatenate([gt, jittered, random]).astype(np.float32)
        labels = label_windows(boxes, gt, gt_labels, 0.5, (0.0, 0.5))
        batch.append(TrainingImage(image, boxes[labels >= 0], labels[labels >= 0]))
    return batch


def _loss(backbone, head, batch, scales):
    head.eval()
    with torch.no_grad():
        logits = torch.cat([head(pooled_windows(backbone.trunk, backbone, item.bgr, item.boxes, scales))
                            for item in batch])
    labels = torch.cat([torch.as_tensor(item.labels) for item in batch])
    return float(torch.nn.functional.cross_entropy(logits, labels))


def _train(backbone, batch, scales, conv_lr_mult, tmp_path):
    """Four SGD steps of two images each: the mean loss of ``batch`` before and after, the
    history and the trained trunk."""
    torch.manual_seed(0)
    head = FcHead(pooled_dim(backbone.channels), (32, 32), len(CLASSES), dropout=0.0)
    before = _loss(backbone, head, batch, scales)
    calls = []
    config = FinetuneConfig(epochs=4, lr=0.01, images_per_batch=2, conv_lr_mult=conv_lr_mult)
    state, history = train_end_to_end(backbone, head, lambda epoch: batch, scales, config, "cpu",
                                      progress=lambda n=1, **fields: calls.append((n, fields)))
    assert len(calls) == 8 and calls[-1][0] == 1 and set(calls[-1][1]) == {"loss", "acc"}
    torch.save(state, tmp_path / "trunk.pt")
    tuned = build_backbone(backbone.name, 0.125, tmp_path / "trunk.pt")
    return before, _loss(tuned, head, batch, scales), history, tuned


def test_training_reduces_the_loss_on_a_fixed_batch(tmp_path, shape_scene):
    backbone = build_backbone("zf5", 0.125, "none", seed=4)
    with torch.no_grad():  # conv5 of unit size, as a pretrained trunk (its conv1 folds 1 / 64)
        backbone.trunk.conv1.weight.div_(64)
    conv1 = backbone.trunk.conv1.weight.clone()
    batch, scales = _labelled_batch(shape_scene), (96, 192)
    before, after, history, tuned = _train(backbone, batch, scales, 1.0, tmp_path)
    assert torch.equal(backbone.trunk.conv1.weight, conv1), "the caller's trunk stays untouched"
    assert not torch.equal(tuned.trunk.conv1.weight, conv1)
    assert len(history) == 4 and all(stats.seen == sum(len(i.labels) for i in batch) for stats in history)
    losses = [stats.mean_loss for stats in history]
    assert all(a > b for a, b in zip(losses, losses[1:])) and after < before - 0.03
    frozen_before, frozen_after, _, frozen = _train(backbone, batch, scales, 0.0, tmp_path)
    assert frozen_before == before and torch.equal(frozen.trunk.conv1.weight, conv1)
    assert after < frozen_after, "training the trunk too must fit the batch better than the head alone"


# ---------------------------------------------------------------------------------------------
# the stage


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, write_scene_dataset):
    """(work directory, dataset root, features before, summary) after one --train-conv run."""
    base = tmp_path_factory.mktemp("train-conv")
    root, work = base / "voc", base / "work"
    rng = np.random.default_rng(0)
    ids = write_scene_dataset(root, CLASSES, 8, rng, 120, 160, (28, 50))
    write_split(root, "trainval", ids[:6])
    write_split(root, "test", ids[6:])
    run_propose(prepare_propose(work, ProposeConfig(max_proposals=200), "trainval", root), workers=1)
    run_extract(prepare_extract(work, split="trainval", backbone="zf5", width=0.125, scales=SCALES,
                                device="cpu", target=TARGET))
    workdir = WorkDir(work)
    before = features_dir(workdir)
    summary = run_finetune(workdir, "trainval", CONFIG, device="cpu")
    return workdir, root, before, summary


def test_stage_saves_the_trunk_and_recomputes_the_features(tuned):
    work, _, before, summary = tuned
    assert summary.trained and summary.computed == 6
    trunk_file = summary.folder / "trunk.pt"
    assert summary.trunk == trunk_file and trunk_file.is_file()
    start = build_backbone("zf5", 0.125, "none")
    tuned_trunk = build_backbone("zf5", 0.125, "none").trunk
    load_trunk_weights(tuned_trunk, trunk_file)
    assert not torch.equal(tuned_trunk.conv3.weight, start.trunk.conv3.weight)

    after = features_dir(work)
    assert after == summary.features and after != before
    info = features_info(after)
    assert info.config.weights == file_hash(trunk_file) and info.config.scales == SCALES
    assert info.config.target == TARGET
    assert sorted(p.stem for p in after.glob("*.npz")) == [f"{i:03d}" for i in range(6)]
    stages = work.config()["stages"]
    assert stages["extract"]["folder"] == after.name
    assert stages["finetune"]["weights"] == f"{summary.folder.name}/trunk.pt"
    assert stages[TRUNK_RECORD]["base_features"] == before.name

    source = WindowSource(work, "trainval")
    assert source.feature_hash == pooled_feature_hash(work.stage_hash(after))
    cached = load_features(after, "000")
    boxes = source.proposals("000")[:50]
    expected = pool_windows(cached.maps, cached.scale_factors, boxes, info.stride, info.offset, target=TARGET)
    np.testing.assert_array_equal(source.pool("000", boxes), expected.numpy())
    head, _ = finetuned_head(work, source.feature_hash, source.dim)
    assert head.fc8.out_features == len(CLASSES) + 1


def test_extract_of_another_split_uses_the_fine_tuned_trunk(tuned):
    work, _, _, summary = tuned
    job = prepare_extract(work.root, split="test", backbone="zf5", width=0.125, scales=SCALES,
                          device="cpu", target=TARGET)
    assert job.config.weights == file_hash(summary.trunk) and job.folder == summary.features
    assert resolve_weights(work, None, "zf5", 0.25) == "none"


def test_second_run_is_cached(tuned):
    work, _, _, summary = tuned
    stamps = {p: p.stat().st_mtime_ns for p in [summary.trunk, summary.folder / "head.pt",
                                                *summary.features.glob("*.npz")]}
    again = run_finetune(work, "trainval", CONFIG, device="cpu")
    assert not again.trained and again.computed == 0
    assert (again.folder, again.trunk, again.features) == (summary.folder, summary.trunk, summary.features)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    result = CliRunner().invoke(cli, [*CLI_ARGS, "--workdir", str(work.root)])
    assert result.exit_code == 0, result.output
    assert "already trained" in result.output and "fine-tuned" in result.output
    assert "sppdet extract --split test" in result.output


def test_rcnn_and_zero_epochs_are_refused(tuned):
    work = tuned[0]
    with pytest.raises(ConfigError, match="--train-conv with --method rcnn"):
        run_finetune(work, "trainval", CONFIG, method="rcnn")
    result = CliRunner().invoke(cli, [*CLI_ARGS, "--method", "rcnn", "--workdir", str(work.root)])
    assert result.exit_code == 2 and "not supported" in result.output and "Traceback" not in result.output
    with pytest.raises(ConfigError, match="--epochs >= 1"):
        run_finetune(work, "trainval", FinetuneConfig(epochs=0, train_conv=True))
    result = CliRunner().invoke(cli, ["finetune", "--images-per-batch", "4", "--workdir", str(work.root)])
    assert result.exit_code == 2 and "--train-conv only" in result.output


def test_a_new_pretrain_takes_precedence_over_the_fine_tuned_trunk(tmp_path):
    work = WorkDir(tmp_path / "work")
    work.record_stage("pretrain", {"weights": "pretrain-a/trunk.pt", "backbone": "zf5", "width": 0.25})
    work.record_stage(TRUNK_RECORD, {"weights": "finetune-b/trunk.pt", "backbone": "zf5", "width": 0.25,
                                     "after_pretrain": "pretrain-a/trunk.pt"})
    assert resolve_weights(work, None, "zf5", 0.25) == str(work.root / "finetune-b/trunk.pt")
    assert resolve_weights(work, None, "zf5", 0.5) == "none"
    assert resolve_weights(work, "none", "zf5", 0.25) == "none"
    work.record_stage("pretrain", {"weights": "pretrain-c/trunk.pt", "backbone": "zf5", "width": 0.25})
    assert resolve_weights(work, None, "zf5", 0.25) == str(work.root / "pretrain-c/trunk.pt")
