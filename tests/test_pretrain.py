"""The ``pretrain`` stage: window sampling, SPP pooling for training, learning, reproducibility,
the saved trunk and head, caching and the command."""

from __future__ import annotations

import shutil
from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli.main import cli
from sppdet.backbones import build_backbone, load_trunk_weights
from sppdet.boxes import iou_matrix
from sppdet.config import PretrainConfig
from sppdet.data.voc import Annotation, write_annotation, write_split
from sppdet.errors import ConfigError, WorkdirError
from sppdet.extract_stage import resolve_weights
from sppdet.head import FcHead, load_head
from sppdet.pretrain import (SppClassifier, check_config, hflip_boxes, pretrain_windows,
                             roi_spp_pool, window_accuracy)
from sppdet.pretrain_stage import load_pretrained, prepare_pretrain, run_pretrain
from sppdet.propose_stage import load_proposals, prepare_propose, proposal_path, run_propose
from sppdet.spp import pooled_dim, spp_pool
from sppdet.store import WorkDir

HEIGHT, WIDTH = 120, 160
CLASSES = ("circle", "square")
TINY = PretrainConfig(width=0.125, sizes=(128, 96), epochs=16, lr=0.01, windows_per_image=32,
                      hidden=(64, 64), dropout=0.0)


def _draw(rng: np.random.Generator, image: np.ndarray, name: str) -> np.ndarray:
    """Draw one shape of class ``name`` at a random place; return its box (continuous pixels)."""
    half = int(rng.integers(14, 24))
    cx, cy = int(rng.integers(half, WIDTH - half)), int(rng.integers(half, HEIGHT - half))
    low, high = (40, 200) if name == "circle" else (200, 40)  # class-coloured: learnable in seconds
    colour = (int(rng.integers(high, high + 56)), int(rng.integers(90, 150)), int(rng.integers(low, low + 56)))
    if name == "circle":
        cv2.circle(image, (cx, cy), half, colour, -1)
    else:
        cv2.rectangle(image, (cx - half, cy - half), (cx + half - 1, cy + half - 1), colour, -1)
    return np.array([cx - half, cy - half, cx + half, cy + half], np.float32)


def _proposals(rng: np.random.Generator, boxes: np.ndarray) -> np.ndarray:
    """Jittered copies of each object (some overlap >= 0.7) plus random boxes (mostly background)."""
    jitter = np.repeat(boxes, 8, axis=0) + rng.normal(0, 3, (8 * len(boxes), 4))
    x1, y1 = rng.uniform(0, WIDTH - 20, 60), rng.uniform(0, HEIGHT - 20, 60)
    random = np.stack([x1, y1, x1 + rng.uniform(12, 60, 60), y1 + rng.uniform(12, 60, 60)], 1)
    both = np.concatenate([jitter, random])
    both[:, 0::2] = both[:, 0::2].clip(0, WIDTH)
    both[:, 1::2] = both[:, 1::2].clip(0, HEIGHT)
    keep = (both[:, 2] - both[:, 0] > 4) & (both[:, 3] - both[:, 1] > 4)
    return both[keep].astype(np.float32)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny convs are dominated by thread synchronisation, which is slow on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 10-image, two-class VOC dataset (trainval 8, test 2) and a work directory whose
    proposals stage is recorded with hand-made proposals. Returns (root, workdir path)."""
    base = tmp_path_factory.mktemp("pretrain")
    root, work = base / "voc", base / "work"
    (root / "JPEGImages").mkdir(parents=True)
    rng = np.random.default_rng(0)
    ids = [f"im{i:02d}" for i in range(10)]
    proposals = {}
    for index, image_id in enumerate(ids):
        image = rng.integers(0, 90, (HEIGHT, WIDTH, 3), dtype=np.uint8)
        names = (CLASSES[index % 2], CLASSES[(index // 2) % 2])
        boxes = np.stack([_draw(rng, image, name) for name in names])
        cv2.imwrite(str(root / "JPEGImages" / f"{image_id}.png"), image)
        write_annotation(root / "Annotations" / f"{image_id}.xml", Annotation(
            image_id=image_id, width=WIDTH, height=HEIGHT, boxes=boxes, names=names,
            difficult=np.zeros(2, bool), filename=f"{image_id}.png"))
        proposals[image_id] = _proposals(rng, boxes)
    write_split(root, "trainval", ids[:8])
    write_split(root, "test", ids[8:])
    for split in ("trainval", "test"):
        job = prepare_propose(work, split=split, data_root=root)
        for image_id in job.todo:
            np.save(proposal_path(job.folder, image_id), proposals[image_id], allow_pickle=False)
        run_propose(prepare_propose(work, split=split), workers=1)
    return root, work


@pytest.fixture(scope="module")
def trained(tiny):
    """One training run of TINY on the tiny trainval split: (job, summary)."""
    root, work = tiny
    job = prepare_pretrain(work, TINY, data_root=root, device="cpu")
    return job, run_pretrain(job)


def _windows_reference(gt, labels, difficult, proposals, config):
    """Candidate sets by a loop over proposals: background indices, extra positives -> label."""
    background, extra = [], {}
    for n, proposal in enumerate(proposals):
        overlaps = [iou_matrix(proposal[None], box[None])[0, 0] for box in gt]
        if all(o < config.bg_iou for o in overlaps):
            background.append(n)
        usable = [(o, labels[g]) for g, o in enumerate(overlaps) if labels[g] > 0 and not difficult[g]]
        if usable and max(usable)[0] >= config.fg_iou:
            extra[n] = max(usable)[1]
    return background, extra


def test_pretrain_windows_match_a_loop_reference():
    rng = np.random.default_rng(3)
    gt = np.array([[10, 10, 50, 60], [60, 20, 120, 90], [5, 70, 30, 100]], np.float32)
    labels, difficult = np.array([1, 2, -1]), np.array([False, False, True])
    jitter = np.repeat(gt, 10, 0) + rng.normal(0, 4, (30, 4)).astype(np.float32)
    corner = rng.uniform(0, 100, (200, 2)).astype(np.float32)
    proposals = np.concatenate([jitter, np.concatenate([corner, corner + 20], 1)])
    config = PretrainConfig(windows_per_image=40, fg_fraction=0.5)
    background, extra = _windows_reference(gt, labels, difficult, proposals, config)
    boxes, got = pretrain_windows(gt, labels, difficult, proposals, config, np.random.default_rng(0))

    assert boxes.dtype == np.float32 and got.dtype == np.int64 and len(boxes) == 40
    assert np.array_equal(boxes[:2], gt[:2]) and np.array_equal(got[:2], [1, 2])  # GT first
    n_fg = int((got > 0).sum())
    assert n_fg == min(20, 2 + len(extra))
    for box, label in zip(boxes[2:n_fg], got[2:n_fg]):
        index = int(np.flatnonzero((proposals == box).all(1))[0])
        assert extra[index] == label
    for box in boxes[n_fg:]:
        assert int(np.flatnonzero((proposals == box).all(1))[0]) in background
    assert (got[n_fg:] == 0).all()


def test_pretrain_windows_without_objects_or_proposals():
    config = PretrainConfig(windows_per_image=8)
    proposals = np.array([[0, 0, 10, 10], [5, 5, 30, 30]], np.float32)
    boxes, labels = pretrain_windows(np.zeros((0, 4)), np.zeros(0), np.zeros(0, bool), proposals,
                                     config, np.random.default_rng(0))
    assert len(boxes) == 2 and (labels == 0).all()
    boxes, labels = pretrain_windows(np.zeros((0, 4)), np.zeros(0), np.zeros(0, bool),
                                     np.zeros((0, 4)), config, np.random.default_rng(0))
    assert boxes.shape == (0, 4) and labels.shape == (0,)


def test_hflip_boxes_flips_the_covered_pixels():
    boxes = np.array([[0, 2, 3, 5], [4, 0, 10, 1], [7, 3, 10, 6]], np.float32)
    flipped = hflip_boxes(boxes, 10)
    for box, new in zip(boxes.astype(int), flipped.astype(int)):
        mask = np.zeros((6, 10), bool)
        mask[box[1]:box[3], box[0]:box[2]] = True
        expected = np.zeros((6, 10), bool)
        expected[new[1]:new[3], new[0]:new[2]] = True
        assert np.array_equal(mask[:, ::-1], expected)


def test_roi_spp_pool_equals_spp_pool_and_has_its_gradient_support():
    generator = torch.Generator().manual_seed(0)
    fmap = torch.randn(1, 5, 13, 11, generator=generator, requires_grad=True)
    x1, y1 = torch.randint(0, 11, (50,), generator=generator), torch.randint(0, 13, (50,), generator=generator)
    cells = torch.stack([x1, y1, (x1 + torch.randint(0, 11, (50,), generator=generator)).clamp(max=10),
                         (y1 + torch.randint(0, 13, (50,), generator=generator)).clamp(max=12)], 1)
    fast = roi_spp_pool(fmap, cells)
    assert torch.equal(fast, spp_pool(fmap[0], cells))
    fast.sum().backward()
    assert fmap.grad.sum().item() == pytest.approx(fast.numel())  # one max cell per bin


def test_check_config_rejects_bad_settings():
    for bad in (dict(sizes=()), dict(sizes=(16,)), dict(epochs=0), dict(lr=0.0),
                dict(fg_fraction=1.0), dict(bg_iou=0.8), dict(hidden=(0, 4)), dict(dropout=1.0)):
        with pytest.raises(ConfigError):
            check_config(replace(TINY, **bad))


def test_training_lowers_the_loss_and_beats_chance(tiny, trained):
    root, work = tiny
    job, summary = trained
    history = summary.history
    assert len(history) == TINY.epochs and not summary.skipped
    assert [epoch.size for epoch in history] == [128, 96] * 8
    assert history[-1].loss < 0.7 * history[0].loss
    model, backbone, record = load_pretrained(work)
    accuracy = window_accuracy(model, backbone, job.dataset,
                               lambda image_id: load_proposals(work, image_id), TINY, 128)
    # chance: 1 / 3 for objects; "everything is background" scores 0 on them
    assert accuracy.foreground > 0.6 and accuracy.background > 0.6
    assert record["classes"] == list(CLASSES)


def test_same_seed_same_weights_bitwise(tiny, trained, tmp_path):
    root, work = tiny
    _, first = trained
    for name in ("again", "other"):  # fresh work directories with the same proposals
        shutil.copytree(work, tmp_path / name, ignore=shutil.ignore_patterns("pretrain-*"))
    again = run_pretrain(prepare_pretrain(tmp_path / "again", TINY, device="cpu"))
    other = run_pretrain(prepare_pretrain(tmp_path / "other", replace(TINY, seed=1, epochs=1),
                                          device="cpu"))
    a, b = (torch.load(s.weights, weights_only=True) for s in (first, again))
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
    head_a, head_b = (torch.load(s.head, weights_only=True)["state"] for s in (first, again))
    assert all(torch.equal(head_a[key], head_b[key]) for key in head_a)
    c = torch.load(other.weights, weights_only=True)
    assert not torch.equal(a["conv1.weight"], c["conv1.weight"])


def test_saved_trunk_loads_and_extract_uses_it(tiny, trained):
    root, work = tiny
    job, summary = trained
    trunk = build_backbone("zf5", TINY.width).trunk
    load_trunk_weights(trunk, summary.weights)
    assert list(torch.load(summary.weights, weights_only=True)) == list(trunk.state_dict())
    workdir = WorkDir(work)
    assert resolve_weights(workdir, None, "zf5", TINY.width) == str(summary.weights)
    assert resolve_weights(workdir, None, "zf5", 0.5) == "none"
    head, meta = load_head(summary.head)
    assert head.hidden == TINY.hidden and meta["classes"] == list(CLASSES)


def test_trunk_state_folds_the_input_scale():
    """A plain trunk loaded with ``trunk_state`` gives the classifier's conv5 on the unscaled image."""
    backbone = build_backbone("zf5", 0.125, seed=3)
    model = SppClassifier(backbone, FcHead(pooled_dim(backbone.channels), (8, 8), 2), input_scale=1 / 64)
    image = torch.randn(3, 64, 80, generator=torch.Generator().manual_seed(0)) * 60
    plain = build_backbone("zf5", 0.125).trunk
    plain.load_state_dict(model.trunk_state())
    with torch.no_grad():
        torch.testing.assert_close(plain(image[None]), model.conv5(image), rtol=1e-4, atol=1e-4)
        assert not torch.allclose(backbone.trunk(image[None]), model.conv5(image))


def test_rerun_skips_and_new_settings_get_a_new_folder(tiny, trained):
    root, work = tiny
    job, summary = trained
    stamp = summary.weights.stat().st_mtime_ns
    again = prepare_pretrain(work, TINY, device="cpu")
    assert again.done and again.folder == job.folder
    skipped = run_pretrain(again)
    assert skipped.skipped and skipped.weights.stat().st_mtime_ns == stamp
    assert skipped.history == summary.history
    assert prepare_pretrain(work, replace(TINY, lr=0.02), device="cpu").folder != job.folder


def test_cli_trains_then_skips(tiny, tmp_path):
    root, work = tiny
    args = ["pretrain", "--workdir", str(work), "--width", "0.125", "--sizes", "96,80",
            "--epochs", "1", "--hidden", "32,32", "--windows-per-image", "16", "--device", "cpu",
            "--quiet"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "trunk:" in result.output and "already trained" not in result.output
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0 and "already trained:" in result.output


def test_cli_without_proposals_is_one_line(tiny, tmp_path):
    root, _ = tiny
    result = CliRunner().invoke(cli, ["pretrain", "--workdir", str(tmp_path / "empty"),
                                      "--data", str(root), "--quiet"])
    assert result.exit_code == 1
    assert "sppdet propose" in result.output and len(result.output.strip().splitlines()) == 1
    with pytest.raises(WorkdirError):
        prepare_pretrain(tmp_path / "empty", TINY, data_root=root)


def test_cli_rejects_bad_options(tiny):
    root, work = tiny
    for bad in (["--hidden", "64"], ["--sizes", "a,b"], ["--sizes", "8"]):
        result = CliRunner().invoke(cli, ["pretrain", "--workdir", str(work), *bad, "--quiet"])
        assert result.exit_code == 2, (bad, result.output)
