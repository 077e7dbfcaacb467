"""The ``pretrain`` stage: window sampling, crop batches and augmentation, batch-norm folding,
learning, reproducibility, the saved trunk and head, caching and the command."""

from __future__ import annotations

import shutil
from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli.main import cli
from sppdet.models.backbones import WithinChannelLRN, build_backbone, load_trunk_weights
from sppdet.structures.boxes import iou_matrix
from sppdet.config import PretrainConfig
from sppdet.data.voc import Annotation, VocDataset, write_annotation, write_split
from sppdet.errors import ConfigError, WorkdirError
from sppdet.workdir.records import pretrained_with_lrn, resolve_weights
from sppdet.models.head import FcHead, load_head
from sppdet.training.pretrain import (CropClassifier, augment_crops, check_config, crop_accuracy, crop_batches,
                                      new_classifier, pretrain_windows)
from sppdet.stages.pretrain import load_pretrained, prepare_pretrain, run_pretrain
from sppdet.stages.propose import prepare_propose, run_propose
from sppdet.workdir.caches import load_proposals, proposal_path
from sppdet.training.random_windows import MIN_SIDE, random_window_source, random_windows
from sppdet.ops.spp import pooled_dim
from sppdet.workdir.store import WorkDir

HEIGHT, WIDTH = 120, 160
CLASSES = ("circle", "square")
TINY = PretrainConfig(width=0.125, sizes=(48, 40), epochs=8, lr=0.05, batch_size=16,
                      positives_per_object=4, backgrounds_per_image=8, hidden=(64, 64),
                      images_per_group=3)


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


#: tiny convs are dominated by thread synchronisation, which is slow on a busy machine
pytestmark = pytest.mark.usefixtures("one_torch_thread")


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
    """Candidate sets by a loop over proposals: background indices; extra positives -> (object, label)."""
    background, extra = [], {}
    for n, proposal in enumerate(proposals):
        overlaps = [iou_matrix(proposal[None], box[None])[0, 0] for box in gt]
        if all(o < config.bg_iou for o in overlaps):
            background.append(n)
        usable = [(o, g) for g, o in enumerate(overlaps) if labels[g] > 0 and not difficult[g]]
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
    config = PretrainConfig(positives_per_object=6, backgrounds_per_image=25)
    background, extra = _windows_reference(gt, labels, difficult, proposals, config)
    boxes, got = pretrain_windows(gt, labels, difficult, proposals, config, np.random.default_rng(0))

    assert boxes.dtype == np.float32 and got.dtype == np.int64
    assert np.array_equal(boxes[:2], gt[:2]) and np.array_equal(got[:2], [1, 2])  # usable GT first
    per_object = [sum(1 for owner in extra.values() if owner == g) for g in (0, 1)]
    n_fg = int((got > 0).sum())
    assert n_fg == 2 + sum(min(6, count) for count in per_object)
    assert len(got) == n_fg + min(25, len(background)) and (got[n_fg:] == 0).all()
    for box, label in zip(boxes[2:n_fg], got[2:n_fg]):
        index = int(np.flatnonzero((proposals == box).all(1))[0])
        assert label == labels[extra[index]]
    for box in boxes[n_fg:]:
        assert int(np.flatnonzero((proposals == box).all(1))[0]) in background


def test_pretrain_windows_without_objects_or_proposals():
    config = PretrainConfig(backgrounds_per_image=8)
    proposals = np.array([[0, 0, 10, 10], [5, 5, 30, 30]], np.float32)
    boxes, labels = pretrain_windows(np.zeros((0, 4)), np.zeros(0), np.zeros(0, bool), proposals,
                                     config, np.random.default_rng(0))
    assert len(boxes) == 2 and (labels == 0).all()
    boxes, labels = pretrain_windows(np.zeros((0, 4)), np.zeros(0), np.zeros(0, bool),
                                     np.zeros((0, 4)), config, np.random.default_rng(0))
    assert boxes.shape == (0, 4) and labels.shape == (0,)


def test_augment_crops_applies_one_allowed_transform_per_crop():
    crops = torch.arange(40 * 3 * 4 * 4, dtype=torch.float32).reshape(40, 3, 4, 4)
    out = augment_crops(crops, ("flip", "rot90", "channels"), np.random.default_rng(0))
    seen = set()
    for before, after in zip(crops, out):
        matches = [(f, k, p) for f in (0, 1) for k in range(4) for p in
                   ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))
                   if torch.equal(after, (before.flip(2) if f else before).rot90(k, (1, 2))[list(p)])]
        assert matches, "each crop is a flip/turn/permutation of itself"
        seen.update(matches)
    assert len(seen) > 10  # the transforms vary from crop to crop
    assert torch.equal(augment_crops(crops, (), np.random.default_rng(0)), crops)


def test_crop_batches_cover_every_sampled_window(tiny):
    root, work = tiny
    dataset = prepare_pretrain(work, TINY, data_root=root).dataset
    backbone = build_backbone("zf5", TINY.width)
    proposals = lambda image_id: load_proposals(work, image_id)  # noqa: E731
    expected = np.zeros(len(CLASSES) + 1, np.int64)
    order = np.random.default_rng([TINY.seed, 0]).permutation(len(dataset.image_ids))
    for group, first in enumerate(range(0, len(order), TINY.images_per_group)):
        rng = np.random.default_rng([TINY.seed, 0, group])
        for index in order[first:first + TINY.images_per_group]:
            annotation = dataset.annotation(dataset.image_ids[index])
            _, labels = pretrain_windows(annotation.boxes, annotation.labels(dataset.classes),
                                         annotation.difficult, proposals(dataset.image_ids[index]), TINY, rng)
            expected += np.bincount(labels, minlength=len(expected))
    calls = []
    batches = list(crop_batches(dataset, proposals, TINY, backbone, 0, 40, torch.device("cpu"),
                                lambda n, **_: calls.append(n)))
    assert all(len(labels) == TINY.batch_size for _, labels in batches[:-1])
    assert all(crops.shape[1:] == (3, 40, 40) for crops, _ in batches)
    got = np.bincount(torch.cat([labels for _, labels in batches]).numpy(), minlength=len(expected))
    assert np.array_equal(got, expected) and sum(calls) == len(dataset.image_ids)


def test_check_config_rejects_bad_settings():
    for bad in (dict(sizes=()), dict(sizes=(16,)), dict(epochs=0), dict(lr=0.0), dict(batch_size=1),
                dict(bg_iou=0.8), dict(hidden=(0, 4)), dict(dropout=1.0), dict(augment=("blur",)),
                dict(context=200), dict(images_per_group=0), dict(windows="edges")):
        with pytest.raises(ConfigError):
            check_config(replace(TINY, **bad))


def test_training_lowers_the_loss_and_beats_chance(tiny, trained):
    root, work = tiny
    job, summary = trained
    history = summary.history
    assert len(history) == TINY.epochs and not summary.skipped
    assert [epoch.size for epoch in history] == [48, 40] * 4
    assert history[-1].loss < 0.7 * history[0].loss
    model, backbone, record = load_pretrained(work)  # the saved plain trunk, batch norm folded
    accuracy = crop_accuracy(model, backbone, job.dataset,
                             lambda image_id: load_proposals(work, image_id), TINY, 48)
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


def test_trunk_state_folds_batch_norm_and_the_input_scale():
    """A plain trunk loaded with ``trunk_state`` gives the classifier's conv5 on the unscaled crops."""
    backbone = build_backbone("zf5", 0.125, seed=3)
    model = CropClassifier(backbone, FcHead(pooled_dim(backbone.channels), (8, 8), 2), input_scale=1 / 64)
    generator = torch.Generator().manual_seed(0)
    for module in model.trunk.modules():
        if isinstance(module, torch.nn.BatchNorm2d):  # non-trivial statistics and affine terms
            for tensor in (module.weight, module.bias, module.running_mean):
                tensor.data = torch.randn(tensor.shape, generator=generator)
            module.running_var.data = torch.rand(module.running_var.shape, generator=generator) + 0.5
    crops = torch.randn(4, 3, 48, 48, generator=generator) * 60
    plain = build_backbone("zf5", 0.125).trunk
    plain.load_state_dict(model.trunk_state())
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(crops), model.trunk(crops / 64), rtol=1e-4, atol=1e-4)


def test_training_skips_lrn_and_the_trunk_with_lrn_stays_close():
    """new_classifier trains zf5 without its LRN layers (later stages run it so too, see
    test_the_trunk_runs_without_lrn_as_it_trained); on unit-scale activations the LRN layers
    would change conv5 by far less than float16 resolution."""
    model, _ = new_classifier(replace(TINY, width=0.25), 2)
    assert not any(isinstance(m, WithinChannelLRN) for m in model.trunk.modules())
    crops = torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 60
    model.train()
    with torch.no_grad():
        model.trunk(crops / 64)  # batch-norm running statistics of these crops
    model.eval()
    plain = build_backbone("zf5", 0.25).trunk
    plain.load_state_dict(model.trunk_state())
    assert sum(isinstance(m, WithinChannelLRN) for m in plain.modules()) == 2
    with torch.no_grad():
        kept, skipped = plain(crops), model.trunk(crops / 64)
    assert (kept - skipped).abs().max() <= 1e-3 * skipped.abs().max()


def test_the_trunk_runs_without_lrn_as_it_trained(tiny, trained):
    """With batch norm (the default) pretrain trains without LRN, records ``lrn: false``, and
    the trunk is rebuilt without LRN wherever it is loaded."""
    _, work = tiny
    record = WorkDir(work).config()["stages"]["pretrain"]
    assert record["lrn"] is False
    _, backbone, _ = load_pretrained(work)
    assert not backbone.lrn and not any(isinstance(m, WithinChannelLRN) for m in backbone.trunk.modules())
    old_style = {key: value for key, value in record.items() if key != "lrn"}  # written before the key
    assert pretrained_with_lrn(old_style) is False
    assert pretrained_with_lrn({**old_style, "config": {**old_style["config"], "batch_norm": False}}) is True


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
    args = ["pretrain", "--workdir", str(work), "--width", "0.125", "--sizes", "40,32",
            "--epochs", "1", "--hidden", "32,32", "--batch-size", "16", "--augment", "flip,rot90",
            "--device", "cpu", "--quiet"]
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
    for bad in (["--hidden", "64"], ["--sizes", "a,b"], ["--sizes", "8"], ["--augment", "blur"]):
        result = CliRunner().invoke(cli, ["pretrain", "--workdir", str(work), *bad, "--quiet"])
        assert result.exit_code == 2, (bad, result.output)


def test_random_windows_lie_inside_and_give_both_kinds_of_crops():
    gt = np.array([[10, 20, 50, 70], [100, 5, 130, 30]], np.float32)
    windows = random_windows(gt, WIDTH, HEIGHT, np.random.default_rng(3), count=200, jitters=16)
    again = random_windows(gt, WIDTH, HEIGHT, np.random.default_rng(3), count=200, jitters=16)
    assert windows.dtype == np.float32 and windows.shape[1] == 4 and np.array_equal(windows, again)
    assert (windows[:, :2] >= 0).all() and (windows[:, 2] <= WIDTH).all() and (windows[:, 3] <= HEIGHT).all()
    assert (windows[:, 2] > windows[:, 0]).all() and (windows[:, 3] > windows[:, 1]).all()
    random_part, jittered = windows[:200], windows[200:]
    sides = np.sqrt((random_part[:, 2] - random_part[:, 0]) * (random_part[:, 3] - random_part[:, 1]))
    assert sides.min() >= MIN_SIDE / 2 ** 0.25 - 1e-3 and sides.max() <= 0.9 * HEIGHT * 2 ** 0.25 + 1e-3
    overlaps = iou_matrix(jittered, gt)
    assert len(jittered) >= 28  # few of the 32 copies are dropped as too thin
    for column in range(len(gt)):  # each object gets several foreground (IoU >= 0.5) candidates
        mine = overlaps.argmax(1) == column
        assert (overlaps[mine, column] >= 0.5).sum() >= 8
    assert (iou_matrix(random_part, gt).max(1) < 0.3).mean() > 0.8  # mostly background
    assert random_windows(np.zeros((0, 4)), WIDTH, HEIGHT, np.random.default_rng(0), count=5).shape == (5, 4)


def test_part_windows_lie_inside_their_object_and_are_mostly_background():
    gt = np.array([[10, 20, 50, 70], [100, 5, 130, 30]], np.float32)
    plain = random_windows(gt, WIDTH, HEIGHT, np.random.default_rng(3), count=50, jitters=4)
    windows = random_windows(gt, WIDTH, HEIGHT, np.random.default_rng(3), count=50, jitters=4, parts=40)
    assert np.array_equal(windows[:len(plain)], plain)  # parts come last, the rest is unchanged
    parts = windows[len(plain):].reshape(len(gt), 40, 4)
    for box, mine in zip(gt, parts):
        side = box[2:] - box[:2]
        assert (mine[:, :2] >= box[:2] - 1e-4).all() and (mine[:, 2:] <= box[2:] + 1e-4).all()
        ratio = (mine[:, 2:] - mine[:, :2]) / side
        assert (ratio >= 0.2 - 1e-4).all() and (ratio <= 0.55 + 1e-4).all()
        assert (iou_matrix(mine, box[None])[:, 0] <= 0.55 ** 2 + 1e-6).all()  # a part holds <= 0.55^2 of it


def test_random_window_source_is_fixed_per_image(tiny):
    root, _ = tiny
    dataset = VocDataset(root, "trainval")
    first, second = random_window_source(dataset, 0), random_window_source(dataset, 0)
    a, b = dataset.image_ids[:2]
    assert np.array_equal(first(a), second(a)) and not np.array_equal(first(a)[:10], first(b)[:10])
    assert not np.array_equal(first(a)[:10], random_window_source(dataset, 1)(a)[:10])


def test_random_windows_pretrain_without_proposals(tiny, tmp_path):
    """--windows random trains in a work directory that has no proposals, on --data."""
    root, _ = tiny
    work = tmp_path / "no-proposals"
    config = replace(TINY, windows="random", epochs=4)
    job = prepare_pretrain(work, config, data_root=root, device="cpu")
    assert job.proposal_folder is None
    summary = run_pretrain(job)
    assert summary.history[-1].accuracy > summary.history[0].accuracy
    assert summary.history[-1].accuracy > 0.6  # chance: the background share, ~0.5 here
    assert resolve_weights(WorkDir(work), None, "zf5", TINY.width) == str(summary.weights)
    result = CliRunner().invoke(cli, ["pretrain", "--workdir", str(tmp_path / "cli"), "--data", str(root),
                                      "--windows", "random", "--width", "0.125", "--sizes", "40,32",
                                      "--epochs", "1", "--hidden", "32,32", "--batch-size", "16",
                                      "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "trunk:" in result.output
