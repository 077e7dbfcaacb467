"""Selective search proposals (sppdet.models.selective_search), the propose stage and the ``propose`` command."""

from __future__ import annotations

import concurrent.futures
import json

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from cli.propose import propose
from sppdet.config import ProposeConfig
from sppdet.data.voc import Annotation, write_annotation, write_split
from sppdet.errors import ConfigError, WorkdirError
from sppdet.models.selective_search import proposal_recall, search_groups, selective_search
from sppdet.stages.propose import prepare_propose, run_propose
from sppdet.workdir.caches import load_proposals, proposal_path, proposals_dir
from sppdet.workdir.store import WorkDir

WIDTH, HEIGHT = 200, 160
IMAGES = 6


def draw_scene(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A noisy BGR image ``[HEIGHT, WIDTH, 3]`` with 1-3 filled rectangles or ellipses, and their
    boxes ``[G, 4]`` (x1, y1, x2, y2)."""
    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.integers(0, 256, (HEIGHT, WIDTH, 3)).astype(np.uint8), (0, 0), 3)
    image = (0.5 * noise + 0.5 * rng.integers(60, 200, 3)).astype(np.uint8)
    boxes = []
    for k in range(int(rng.integers(1, 4))):
        w, h = int(rng.integers(30, 90)), int(rng.integers(30, 75))
        x, y = int(rng.integers(0, WIDTH - w)), int(rng.integers(0, HEIGHT - h))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if k % 2 == 0:
            cv2.rectangle(image, (x, y), (x + w - 1, y + h - 1), colour, -1)
        else:
            cv2.ellipse(image, (x + w // 2, y + h // 2), (w // 2, h // 2), 0, 0, 360, colour, -1)
        boxes.append((x, y, x + w, y + h))
    image = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
    return image, np.array(boxes, dtype=np.float32)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A VOC-layout dataset of IMAGES PNG scenes; split ``trainval`` lists them all."""
    root = tmp_path_factory.mktemp("voc")
    (root / "JPEGImages").mkdir()
    ids = [f"img{i:02d}" for i in range(IMAGES)]
    for seed, image_id in enumerate(ids):
        image, boxes = draw_scene(seed)
        cv2.imwrite(str(root / "JPEGImages" / f"{image_id}.png"), image)
        write_annotation(root / "Annotations" / f"{image_id}.xml", Annotation(
            image_id=image_id, width=WIDTH, height=HEIGHT, boxes=boxes,
            names=("thing",) * len(boxes), difficult=np.zeros(len(boxes), bool),
            filename=f"{image_id}.png"))
    write_split(root, "trainval", ids)
    return root


# ---------------------------------------------------------------------------------------------
# selective_search


def test_groups_reproduce_opencv_fast_mode():
    image, _ = draw_scene(0)
    search = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    search.setBaseImage(image)
    search.switchToSelectiveSearchFast()
    expected = {tuple(r) for r in search.process()}
    ours = {tuple(r) for group in search_groups(image, "fast") for r in group}
    assert ours == expected


def test_quality_mode_searches_a_superset_of_fast():
    image, _ = draw_scene(1)
    fast = {tuple(r) for group in search_groups(image, "fast") for r in group}
    quality = {tuple(r) for group in search_groups(image, "quality") for r in group}
    assert fast < quality


def test_boxes_follow_the_convention_and_cap_keeps_the_first():
    image, _ = draw_scene(2)
    boxes = selective_search(image, ProposeConfig(min_size=10))
    assert boxes.dtype == np.float32 and boxes.ndim == 2 and boxes.shape[1] == 4
    assert len(boxes) > 5
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= WIDTH).all() and (boxes[:, 3] <= HEIGHT).all()
    assert (boxes[:, 2] - boxes[:, 0] >= 10).all() and (boxes[:, 3] - boxes[:, 1] >= 10).all()
    assert len(np.unique(boxes, axis=0)) == len(boxes)
    assert boxes == pytest.approx(np.round(boxes))  # no downscale: whole pixels
    capped = selective_search(image, ProposeConfig(min_size=10, max_proposals=5))
    np.testing.assert_array_equal(capped, boxes[:5])


def test_output_is_identical_across_runs_and_threads():
    image, _ = draw_scene(3)
    first = selective_search(image)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(selective_search, [image] * 4))
    for result in [selective_search(image)] + results:
        np.testing.assert_array_equal(result, first)


def test_large_images_are_searched_shrunk_and_boxes_scaled_back():
    image, _ = draw_scene(4)
    big = cv2.resize(image, (4 * WIDTH, 4 * HEIGHT), interpolation=cv2.INTER_NEAREST)
    boxes = selective_search(big, ProposeConfig(max_side=WIDTH, min_size=0))
    small = cv2.resize(big, (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA)
    reference = selective_search(small, ProposeConfig(min_size=0))
    np.testing.assert_allclose(boxes, reference * 4, rtol=0, atol=1e-3)
    assert boxes[:, 2].max() == 4 * WIDTH and boxes[:, 3].max() == 4 * HEIGHT
    assert (boxes >= 0).all()
    # min_size counts original pixels: 4x the searched ones here
    filtered = selective_search(big, ProposeConfig(max_side=WIDTH, min_size=40))
    keep = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) >= 40
    np.testing.assert_array_equal(filtered, boxes[keep])


def test_grayscale_rgba_and_16_bit_images():
    image, _ = draw_scene(5)
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    np.testing.assert_array_equal(selective_search(gray),
                                  selective_search(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)))
    bgra = cv2.cvtColor(image, cv2.COLOR_BGR2BGRA)
    np.testing.assert_array_equal(selective_search(bgra), selective_search(image))
    deep = image.astype(np.uint16) * 257
    np.testing.assert_array_equal(selective_search(deep), selective_search(image))


def test_tiny_image_and_bad_config():
    tiny = np.full((3, 4, 3), 128, np.uint8)
    assert selective_search(tiny, ProposeConfig(min_size=16)).shape == (0, 4)
    with pytest.raises(ConfigError, match="--mode"):
        selective_search(tiny, ProposeConfig(mode="slow"))
    with pytest.raises(ConfigError, match="--max-proposals"):
        selective_search(tiny, ProposeConfig(max_proposals=0))


# ---------------------------------------------------------------------------------------------
# recall


def recall_loop(gt_list, proposal_list, thresholds):
    """Reference: IoU of every pair by hand, best per ground-truth box, counted per threshold."""
    hits, total = [0] * len(thresholds), 0
    for gts, props in zip(gt_list, proposal_list):
        for g in gts:
            total += 1
            best = 0.0
            for p in props:
                iw = min(g[2], p[2]) - max(g[0], p[0])
                ih = min(g[3], p[3]) - max(g[1], p[1])
                inter = max(iw, 0.0) * max(ih, 0.0)
                union = (g[2] - g[0]) * (g[3] - g[1]) + (p[2] - p[0]) * (p[3] - p[1]) - inter
                best = max(best, inter / union)
            for k, t in enumerate(thresholds):
                hits[k] += best >= t
    return np.array(hits) / total


def random_boxes(rng, n):
    xy = rng.uniform(0, 80, (n, 2))
    return np.concatenate([xy, xy + rng.uniform(2, 40, (n, 2))], axis=1).astype(np.float32)


def test_recall_matches_loop_reference():
    rng = np.random.default_rng(0)
    gt_list = [random_boxes(rng, n) for n in (3, 0, 5, 1, 4)]
    proposal_list = [random_boxes(rng, n) for n in (30, 10, 0, 25, 40)]
    # exact edges: an identical box (IoU 1), one at IoU exactly 0.5 (half of a 10x10 box)
    gt_list[3] = np.array([[0, 0, 10, 10]], np.float32)
    proposal_list[3] = np.array([[0, 0, 10, 5]], np.float32)
    gt_list[0][0] = proposal_list[0][7]
    thresholds = (0.3, 0.5, 0.7, 1.0)
    ours = proposal_recall(gt_list, proposal_list, thresholds)
    np.testing.assert_allclose(ours, recall_loop(gt_list, proposal_list, thresholds))
    assert ours[1] > 0 and ours[3] > 0


def test_recall_without_ground_truth_is_nan():
    proposals = random_boxes(np.random.default_rng(1), 3)
    assert np.isnan(proposal_recall([np.zeros((0, 4))], [proposals])).all()


# ---------------------------------------------------------------------------------------------
# the stage


def run(workdir, data_root=None, workers=1, shard=None, config=ProposeConfig()):
    job = prepare_propose(workdir, config, split="trainval", data_root=data_root, shard=shard)
    return job, run_propose(job, workers=workers)


def test_stage_caches_once_and_reports_recall(dataset, tmp_path):
    job, summary = run(tmp_path, dataset)
    assert summary.computed == summary.images == IMAGES and summary.seconds_per_image > 0
    assert summary.recall["0.5"] > 0.85 and summary.recall["0.7"] <= summary.recall["0.5"]
    assert summary.proposals_min <= summary.proposals_mean <= summary.proposals_max <= 2000
    written = json.loads((job.folder / "summary-trainval.json").read_text())
    assert written["recall"] == summary.recall and written["images"] == IMAGES
    files = sorted(job.folder.glob("*.npy"))
    assert [f.stem for f in files] == job.image_ids
    stamps = [f.stat().st_mtime_ns for f in files]

    again, summary2 = run(tmp_path)  # the dataset root was recorded
    assert again.todo == [] and summary2.computed == 0 and summary2.seconds_per_image is None
    assert [f.stat().st_mtime_ns for f in files] == stamps
    assert summary2.recall == summary.recall

    other, _ = run(tmp_path, config=ProposeConfig(max_proposals=10))
    assert other.folder != job.folder and len(other.todo) == IMAGES


def test_shards_cover_the_split_once(dataset, tmp_path):
    first, summary1 = run(tmp_path, dataset, shard="1/2")
    assert summary1.images == len(first.image_ids) < IMAGES == summary1.images_in_split
    second, summary2 = run(tmp_path, shard="2/2")
    assert sorted(first.image_ids + second.image_ids) == first.dataset.image_ids
    assert not set(first.image_ids) & set(second.image_ids)
    assert summary2.images == IMAGES
    assert sorted(p.stem for p in first.folder.glob("*.npy")) == first.dataset.image_ids


def test_corrupt_cache_files_are_recomputed(dataset, tmp_path):
    job, _ = run(tmp_path, dataset)
    good = {i: np.load(proposal_path(job.folder, i)) for i in job.image_ids}
    proposal_path(job.folder, job.image_ids[0]).write_bytes(b"not a numpy file")
    np.save(proposal_path(job.folder, job.image_ids[1]), np.zeros((3, 5), np.float32))
    np.save(proposal_path(job.folder, job.image_ids[2]), good[job.image_ids[2]].astype(np.float64))
    proposal_path(job.folder, job.image_ids[3]).unlink()
    with pytest.raises(WorkdirError, match="not a valid float32"):
        load_proposals(tmp_path, job.image_ids[1])
    redo, summary = run(tmp_path)
    assert redo.todo == job.image_ids[:4] and summary.computed == 4
    for image_id in job.image_ids:
        np.testing.assert_array_equal(load_proposals(tmp_path, image_id), good[image_id])


def test_worker_processes_give_the_same_files(dataset, tmp_path):
    serial, _ = run(tmp_path / "serial", dataset, workers=1)
    parallel, summary = run(tmp_path / "parallel", dataset, workers=2)
    assert summary.computed == IMAGES
    for image_id in serial.image_ids:
        assert (proposal_path(serial.folder, image_id).read_bytes()
                == proposal_path(parallel.folder, image_id).read_bytes())


def test_later_stages_find_the_proposals(dataset, tmp_path):
    with pytest.raises(WorkdirError, match="run sppdet propose first"):
        proposals_dir(tmp_path)
    job, _ = run(tmp_path, dataset)
    work = WorkDir(tmp_path)
    assert proposals_dir(work) == job.folder
    assert work.config()["stages"]["propose"]["config"]["max_proposals"] == 2000
    image_id = job.image_ids[0]
    expected = selective_search(cv2.imread(str(job.dataset.image_path(image_id))))
    for source in (tmp_path, work, job.folder):
        np.testing.assert_array_equal(load_proposals(source, image_id), expected)
    with pytest.raises(WorkdirError, match="no proposals for image 'nope'"):
        load_proposals(work, "nope")


# ---------------------------------------------------------------------------------------------
# the command


def test_cli_propose_and_rerun(dataset, tmp_path):
    args = ["--data", str(dataset), "--workdir", str(tmp_path / "work"), "--workers", "1", "--quiet"]
    result = CliRunner().invoke(propose, args)
    assert result.exit_code == 0, result.output
    assert "recall @ IoU 0.5" in result.output and f"{IMAGES} computed" in result.output
    rerun = CliRunner().invoke(propose, ["--workdir", str(tmp_path / "work"), "--quiet"])
    assert rerun.exit_code == 0, rerun.output
    assert "0 computed" in rerun.output and "nothing computed" in rerun.output


def test_cli_errors_are_one_line(dataset, tmp_path):
    missing = CliRunner().invoke(propose, ["--data", str(dataset), "--split", "test",
                                           "--workdir", str(tmp_path / "w1"), "--quiet"])
    assert missing.exit_code == 1
    assert "split file not found" in missing.output and "Traceback" not in missing.output
    assert len(missing.output.strip().splitlines()) == 1
    unrecorded = CliRunner().invoke(propose, ["--workdir", str(tmp_path / "w2"), "--quiet"])
    assert unrecorded.exit_code == 1 and "no dataset recorded" in unrecorded.output
    bad_shard = CliRunner().invoke(propose, ["--data", str(dataset), "--shard", "3/2",
                                             "--workdir", str(tmp_path / "w3"), "--quiet"])
    assert bad_shard.exit_code == 2 and "--shard" in bad_shard.output


def test_cli_help_and_registration():
    assert "Example:" in propose.help
    import click

    from cli.main import cli

    assert cli.get_command(click.Context(cli), "propose") is propose
