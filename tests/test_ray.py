"""``--executor ray`` (``sppdet.executors``): on a local two-CPU Ray, propose, extract (both methods)
and detect write byte for byte the files of a local run, a task whose worker dies is retried to
the same result, and the errors are one line."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from cli.main import cli
from sppdet.config import DetectConfig, FinetuneConfig, ProposeConfig, SvmConfig
from sppdet.data.voc import write_split
from sppdet.errors import ConfigError, DatasetError, SppdetError, WorkerError
from sppdet.executors import _check_reachable, auto_batch_size, batches, map_batches
from sppdet.stages.detect import ImageDetector, detect_files
from sppdet.stages.extract import prepare_extract, run_extract
from sppdet.stages.extract_rcnn import prepare_rcnn_extract, run_rcnn_extract
from sppdet.stages.finetune import run_finetune
from sppdet.stages.propose import prepare_propose, run_propose
from sppdet.stages.train_bbox import run_train_bbox
from sppdet.stages.train_svm import run_train_svm
from sppdet.workdir.store import WorkDir

CLASSES = ("disc", "square")
PROPOSE = ProposeConfig(max_proposals=60, max_side=128)
TINY = dict(backbone="zf5", width=0.125, scales=(96,), device="cpu")
RCNN = dict(backbone="zf5", width=0.125, crop_size=48, context=6, device="cpu")
STAGE_FOLDERS = ("proposals-*", "features-*", "rcnn-features-*")


def _die_when_armed(marker: str):
    """A Ray worker setup hook: the stages' image reader makes the worker ``os._exit`` (as a
    killed worker) on the first image it reads while the file ``marker`` exists, which it removes
    first, so exactly one task dies per arming and its retry runs normally."""

    def setup() -> None:
        import os

        import sppdet.stages.extract
        import sppdet.stages.extract_rcnn
        import sppdet.stages.propose

        for module in (sppdet.stages.propose, sppdet.stages.extract, sppdet.stages.extract_rcnn):
            def load_bgr(path, _read=module.load_bgr):
                try:
                    os.unlink(marker)  # only one worker can remove it
                except FileNotFoundError:
                    return _read(path)
                os._exit(1)

            module.load_bgr = load_bgr

    return setup


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray of two CPUs for the module; yields the marker file that arms :func:`_die_when_armed`."""
    ray = pytest.importorskip("ray")
    temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths live under it
    marker = temp / "die-once"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=str(temp),
             runtime_env={"worker_process_setup_hook": _die_when_armed(str(marker))})
    yield marker
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory, write_scene_dataset):
    root = tmp_path_factory.mktemp("ray") / "voc"
    ids = write_scene_dataset(root, CLASSES, 8, np.random.default_rng(0), 96, 128, (26, 44))
    write_split(root, "trainval", ids)
    return root


def _chain(work: Path, root: Path, executor: str) -> None:
    """propose, extract (with the hflip view) and extract --method rcnn into ``work``."""
    run_propose(prepare_propose(work, PROPOSE, "trainval", root), workers=1, executor=executor)
    run_extract(prepare_extract(work, split="trainval", views=("hflip",), **TINY), executor=executor)
    run_rcnn_extract(prepare_rcnn_extract(work, split="trainval", **RCNN), executor=executor)


def _stage_files(work: Path) -> dict[str, bytes]:
    """Every file of the stage folders by path relative to ``work``, but lock files (a pid) and
    the proposals' summary (timings and the folder's path; its recall is compared apart)."""
    return {str(p.relative_to(work)): p.read_bytes() for pattern in STAGE_FOLDERS for folder in work.glob(pattern)
            for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.startswith((".busy", "summary-"))}


def _recall(work: Path) -> dict:
    (summary,) = work.glob("proposals-*/summary-trainval.json")
    return json.loads(summary.read_text())["recall"]


@pytest.fixture(scope="module")
def local_work(tmp_path_factory, data):
    work = tmp_path_factory.mktemp("local") / "work"
    _chain(work, data, "local")
    return work


def test_ray_writes_the_files_of_a_local_run(ray_cluster, local_work, data, tmp_path):
    work = tmp_path / "work"
    _chain(work, data, "ray")
    expected = _stage_files(local_work)
    assert {name.split("/")[0].rsplit("-", 1)[0] for name in expected} == {"proposals", "features", "rcnn-features"}
    assert any(name.endswith(".npz") and "/hflip/" in name for name in expected)
    assert _stage_files(work) == expected
    assert _recall(work) == _recall(local_work)
    stages = WorkDir(work).config()["stages"]
    assert {k: stages[k] for k in ("propose", "extract")} == {
        k: WorkDir(local_work).config()["stages"][k] for k in ("propose", "extract")}
    again = prepare_propose(work, PROPOSE, "trainval")
    assert again.todo == [] and run_propose(again, executor="ray").computed == 0
    assert run_extract(prepare_extract(work, split="trainval", views=("hflip",), **TINY), executor="ray").computed == 0


def test_a_killed_task_is_retried_to_the_same_files(ray_cluster, local_work, data, tmp_path):
    work = tmp_path / "work"
    run_propose(prepare_propose(work, PROPOSE, "trainval", data), executor="local")
    for run in (lambda: run_extract(prepare_extract(work, split="trainval", views=("hflip",), **TINY), executor="ray"),
                lambda: run_rcnn_extract(prepare_rcnn_extract(work, split="trainval", **RCNN), executor="ray")):
        ray_cluster.touch()
        summary = run()
        assert not ray_cluster.exists(), "no worker died"
        assert summary.computed == summary.images == 8
    assert _stage_files(work) == _stage_files(local_work)


def test_a_ray_run_resumes_where_a_killed_run_stopped(ray_cluster, local_work, data, tmp_path):
    """Half the images cached (as a run killed half-way leaves them; here shard 1 of 2): the ray
    run computes only the others, and the folders are the local run's, byte for byte."""
    work = tmp_path / "work"
    run_propose(prepare_propose(work, PROPOSE, "trainval", data, shard="1/2"), workers=1)
    rest = prepare_propose(work, PROPOSE, "trainval")
    assert len(rest.todo) == 4 and run_propose(rest, executor="ray").computed == 4
    run_extract(prepare_extract(work, split="trainval", views=("hflip",), shard="1/2", **TINY))
    assert run_extract(prepare_extract(work, split="trainval", views=("hflip",), **TINY), executor="ray").computed == 4
    expected = {k: v for k, v in _stage_files(local_work).items() if not k.startswith("rcnn-features")}
    assert _stage_files(work) == expected


def test_the_final_unsharded_run_records_the_whole_split(data, tmp_path):
    """The array-job recipe (README): shards compute, a last unsharded run computes nothing and
    leaves a summary of the whole split, even when the last shard's summary missed the others."""
    work = tmp_path / "work"
    first = prepare_propose(work, PROPOSE, "trainval", data, shard="1/2")
    run_propose(first, workers=1)
    summary_file = first.folder / "summary-trainval.json"
    partial = summary_file.read_bytes()  # as if shard 1 finished last, before shard 2's files
    run_propose(prepare_propose(work, PROPOSE, "trainval", shard="2/2"), workers=1)
    summary_file.write_bytes(partial)
    final = prepare_propose(work, PROPOSE, "trainval")
    assert final.todo == [] and run_propose(final).computed == 0
    assert json.loads(summary_file.read_text())["images"] == 8
    stamp = summary_file.stat().st_mtime_ns
    run_propose(prepare_propose(work, PROPOSE, "trainval"))
    assert summary_file.stat().st_mtime_ns == stamp, "a fully cached re-run writes nothing"


def test_map_batches_results_and_errors(ray_cluster):
    # functions defined here travel by value (Ray workers cannot import this test module)
    def double(items):
        return [i * 2 for i in items]

    def not_an_image(items):
        raise DatasetError(f"{items[0]}: not an image; replace it")

    def exit_always(items):
        os._exit(1)

    assert sorted(map_batches(double, [1, 2, 3], batch_size=2)) == [[2, 4], [6]]
    with pytest.raises(DatasetError, match=r"^b: not an image; replace it$"):
        list(map_batches(not_an_image, ["b"], batch_size=1))
    with pytest.raises(WorkerError, match=r"^a Ray task died \(\w+, retried 0 times\) while on X, Y; re-run"):
        list(map_batches(exit_always, ["x", "y"], batch_size=2, max_retries=0, describe=str.upper))


def test_batches_and_auto_size():
    assert batches([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]
    assert auto_batch_size(8, 2) == 1 and auto_batch_size(80, 2) == 10 and auto_batch_size(10 ** 6, 64) == 16


def test_an_address_without_a_cluster_is_one_line():
    with socket.socket() as probe:  # a port nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(SppdetError, match=rf"^--ray-address 127.0.0.1:{port}: cannot connect .*ray start --head"):
        _check_reachable(f"127.0.0.1:{port}")
    with pytest.raises(ConfigError, match="expected auto, HOST:PORT or ray://HOST:PORT"):
        _check_reachable("head-node")


def test_detect_on_ray_gives_the_local_results(ray_cluster, local_work, tmp_path, shape_scene):
    work = WorkDir(local_work)
    if "train-bbox" not in work.config()["stages"]:
        run_finetune(work, "trainval", FinetuneConfig(hidden=(32, 32), epochs=2))
        run_train_svm(work, "trainval", SvmConfig(layer="fc7"))
        run_train_bbox(work, "trainval")
    new = tmp_path / "new"
    new.mkdir()
    for seed in range(3):
        cv2.imwrite(str(new / f"{seed}.png"), shape_scene(np.random.default_rng(seed), CLASSES, 96, 128, (26, 44))[0])
    (new / "broken.png").write_bytes(b"not a png")
    paths = sorted(new.iterdir())
    runs = {}
    for executor in ("local", "ray"):
        detector = ImageDetector(work, DetectConfig(score_threshold=-1.0), "cpu")
        runs[executor] = detect_files(detector, paths, tmp_path / executor, tmp_path / f"{executor}.json",
                                      save_txt=True, executor=executor)
    local, ray = runs["local"], runs["ray"]
    assert [r.path for r in ray.results] == [r.path for r in local.results] == paths[:3]
    assert [e.path for e in ray.errors] == [e.path for e in local.errors] == [paths[3]]
    for a, b in zip(local.results, ray.results):
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.scores, b.scores)
    assert (tmp_path / "ray.json").read_bytes() == (tmp_path / "local.json").read_bytes()
    for name in ("0.png", "labels/1.txt"):
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()


def test_cli_executor_options(ray_cluster, data, tmp_path):
    runner = CliRunner()
    work = str(tmp_path / "work")
    result = runner.invoke(cli, ["propose", "--data", str(data), "--workdir", work, "--max-proposals", "60",
                                 "--max-side", "128", "--executor", "ray", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "8 computed" in result.output
    for args, message in ((["--ray-address", "auto"], "--ray-address applies to --executor ray"),
                          (["--executor", "ray", "--workers", "2"], "--workers applies to --executor local")):
        result = runner.invoke(cli, ["propose", "--workdir", work, *args])
        assert result.exit_code == 2 and message in result.output


@pytest.mark.parametrize("command", [["propose"], ["extract"], ["extract", "--method", "rcnn"], ["detect", "x.png"]])
def test_without_ray_the_executor_is_one_line(command, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    result = CliRunner().invoke(cli, [*command, "--workdir", str(tmp_path), "--executor", "ray", "--quiet"])
    assert result.exit_code == 1
    assert result.output == "Error: --executor ray needs Ray, which is not installed: pip install 'sppdet[ray]'\n"
