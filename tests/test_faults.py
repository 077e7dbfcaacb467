"""Faults, bad input and a hostile environment (issue 17): each case ends in one line and a
non-zero exit (or goes on correctly), never a traceback, a hang, a stale or a half-written file.

Fast cases only, on tiny datasets written into ``tmp_path``; the slow ones (kill -9 at random
moments, worker kills, concurrent runs) belong in ``benchmarks/faults.py``.
"""

from __future__ import annotations

import errno
import json
import os
import struct
import zlib
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from sppdet import fileio
from cli.main import cli
from sppdet.config import PretrainConfig
from sppdet.data import images
from sppdet.data.images import load_bgr
from sppdet.data.voc import Annotation, read_annotation, read_split, write_annotation, write_split
from sppdet.errors import DatasetError, SppdetWarning, TrainingError
from sppdet.fileio import atomic_write_bytes, safe_file_stem
from sppdet.models.head import FcHead, train_head
from sppdet.stages.pretrain import HEAD_FILE, INFO_FILE, TRUNK_FILE, prepare_pretrain, run_pretrain
from sppdet.workdir.store import WorkDir

HEIGHT, WIDTH = 48, 64
TINY = PretrainConfig(width=0.125, sizes=(32,), epochs=1, batch_size=8, positives_per_object=2,
                      backgrounds_per_image=4, hidden=(16, 16), windows="random", images_per_group=2)
TINY_OPTIONS = ("--width", "0.125", "--sizes", "32", "--epochs", "1", "--batch-size", "8",
                "--hidden", "16,16", "--windows", "random", "--device", "cpu")


#: tiny convs are dominated by thread synchronisation, which is slow on a busy machine
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_dataset(root: Path, names=("circle", "square"), count: int = 4) -> Path:
    """``count`` small PNG images with one box each (classes taken from ``names`` in turn), all in
    split ``trainval``, the last also in ``test``."""
    rng = np.random.default_rng(0)
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    ids = [f"im{i}" for i in range(count)]
    for index, image_id in enumerate(ids):
        image = rng.integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)
        cv2.imwrite(str(root / "JPEGImages" / f"{image_id}.png"), image)
        write_annotation(root / "Annotations" / f"{image_id}.xml", Annotation(
            image_id, WIDTH, HEIGHT, np.array([[8, 8, 40, 40]], np.float32), (names[index % len(names)],),
            np.zeros(1, bool), filename=f"{image_id}.png"))
    write_split(root, "trainval", ids)
    write_split(root, "test", ids[-1:])
    return root


def sppdet(work: Path, *args: str):
    """``sppdet ARGS --quiet`` in-process on work directory ``work``; the click result."""
    runner = CliRunner(env={"SPPDET_WORKDIR": str(work)})
    return runner.invoke(cli, [*args, "--quiet"])


def assert_one_line_error(result, *fragments: str) -> str:
    """Exit 1, no traceback, an ``Error: ...`` line holding every fragment; returns that line."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit), result.output
    lines = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1, result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def temp_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob(f"*{fileio.TEMP_SUFFIX}"))


# ---------------------------------------------------------------------------------------------
# 1. undecodable split files and annotations, NaN sizes


def test_split_file_not_utf8_is_one_line(tmp_path):
    root = write_dataset(tmp_path / "voc")
    split = root / "ImageSets" / "Main" / "trainval.txt"
    split.write_bytes(b"\xff\xfeim0\n")
    with pytest.raises(DatasetError, match="must be UTF-8 text") as error:
        read_split(root, "trainval")
    assert str(split) in str(error.value)
    result = sppdet(tmp_path / "work", "propose", "--data", str(root), "--split", "trainval", "--workers", "1")
    assert_one_line_error(result, str(split), "UTF-8")


BAD_XML = {
    "utf16 bytes": b"\xff\xfe<\x00a\x00",
    "latin1 declared utf8": b'<?xml version="1.0" encoding="utf-8"?><annotation>\xe9\xff</annotation>',
    "unknown encoding": b'<?xml version="1.0" encoding="no-such-codec"?><annotation/>',
    "truncated": b"<annotation><size><width>10</width>",
}


@pytest.mark.parametrize("content", BAD_XML.values(), ids=BAD_XML.keys())
def test_undecodable_annotation_is_dataset_error(tmp_path, content):
    path = tmp_path / "a.xml"
    path.write_bytes(content)
    with pytest.raises(DatasetError) as error:
        read_annotation(path)
    assert str(error.value).startswith(f"{path}: ") and "\n" not in str(error.value)


@pytest.mark.parametrize("field,value", [("width", "nan"), ("height", "inf"), ("width", "-Infinity"),
                                         ("width", "ten"), ("xmin", "nan"), ("ymax", "inf"), ("xmax", "1e")])
def test_non_finite_numbers_in_annotation(tmp_path, field, value):
    numbers = {"width": "64", "height": "48", "xmin": "1", "ymin": "1", "xmax": "20", "ymax": "20"}
    numbers[field] = value
    path = tmp_path / "a.xml"
    path.write_text(f"<annotation><size><width>{numbers['width']}</width><height>{numbers['height']}"
                    f"</height></size><object><name>c</name><bndbox>" +
                    "".join(f"<{t}>{numbers[t]}</{t}>" for t in ("xmin", "ymin", "xmax", "ymax")) +
                    "</bndbox></object></annotation>")
    with pytest.raises(DatasetError, match=f"<{field}> is '{value}'") as error:
        read_annotation(path)
    assert str(path) in str(error.value)


# ---------------------------------------------------------------------------------------------
# 2. class names a dataset may hold: paths, TeX, rich markup

HOSTILE = ("a/../../../esc", "m$\\foo$", "x[/b]")


def test_safe_file_stem():
    assert safe_file_stem("car") == "car" and safe_file_stem("dining-table_2") == "dining-table_2"
    stems = [safe_file_stem(name) for name in (*HOSTILE, "x[/b", "x[/b]]", "a" * 200, "", ".", "..")]
    assert len(set(stems)) == len(stems)
    for stem in stems:
        assert stem and "/" not in stem and "\\" not in stem and not stem.startswith(".") and len(stem) <= 73


def test_hostile_class_names_in_eval_and_plots(tmp_path):
    root = write_dataset(tmp_path / "data" / "voc", names=HOSTILE, count=3)
    write_split(root, "test", ["im0", "im1", "im2"])
    detections = tmp_path / "dets.json"
    detections.write_text(json.dumps([{"image_id": f"im{k}", "category": name, "bbox": [8, 8, 32, 32],
                                       "score": 0.9} for k, name in enumerate(HOSTILE)]))
    plots = tmp_path / "data" / "plots"
    before = set((tmp_path).rglob("*"))
    result = sppdet(tmp_path / "work", "eval", "--data", str(root), "--split", "test",
                    "--detections", str(detections), "--plots", str(plots))
    assert result.exit_code == 0, result.output
    for name in HOSTILE:
        assert name in result.output  # printed as itself, not as rich markup
    created = set(tmp_path.rglob("*")) - before
    assert created and all(plots in path.parents or path == plots for path in created), created
    assert len(list(plots.glob("pr_*.png"))) == 3


def test_devkit_results_of_hostile_names_stay_in_their_folder(tmp_path):
    from sppdet.evaluation.results_io import read_devkit_results, write_devkit_results
    from sppdet.evaluation.voc_ap import Detections

    folder = tmp_path / "deep" / "results"
    detections = Detections(("im0",), [0, 0, 0], [[1, 1, 9, 9]] * 3, [0.5, 0.4, 0.3], [1, 2, 3])
    write_devkit_results(folder, "test", detections, HOSTILE)
    assert sorted(p.parent for p in tmp_path.rglob("*.txt")) == [folder] * 3
    back = read_devkit_results(folder, "test", HOSTILE, ("im0",))
    assert sorted(back.labels.tolist()) == [1, 2, 3]


# ---------------------------------------------------------------------------------------------
# 3. a repaired annotation warns in one line


def test_inverted_box_warns_in_one_clean_line(tmp_path):
    root = write_dataset(tmp_path / "voc")
    xml = root / "Annotations" / "im1.xml"
    xml.write_text(xml.read_text().replace("<xmin>9</xmin>", "<xmin>60</xmin>"))  # xmax 40 < xmin
    detections = tmp_path / "dets.json"
    detections.write_text("[]")
    result = sppdet(tmp_path / "work", "eval", "--data", str(root), "--split", "trainval",
                    "--detections", str(detections))
    assert result.exit_code == 0, result.output
    warning_lines = [line for line in result.output.splitlines() if "dropped 1 box" in line]
    assert warning_lines and all(line.startswith(f"warning: {xml}: dropped 1 box") for line in warning_lines)
    assert "warnings.warn" not in result.output and "DatasetWarning" not in result.output


# ---------------------------------------------------------------------------------------------
# 4. bounds on input images


def png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header says ``width`` x ``height`` (1-bit grey) with one empty IDAT: tiny on
    disk; reading its size must not decode (or allocate) anything."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b""))
                     + chunk(b"IEND", b""))


def test_huge_image_refused_from_its_header(tmp_path):
    path = tmp_path / "huge.png"
    png_header_only(path, 30000, 30000)
    with pytest.raises(DatasetError, match="900.0 megapixels, above the limit of 50") as error:
        load_bgr(path)
    assert str(error.value).startswith(f"{path}: ") and "SPPDET_MAX_PIXELS" in str(error.value)


def test_extreme_aspect_ratio_refused(tmp_path):
    path = tmp_path / "strip.png"
    cv2.imwrite(str(path), np.zeros((16, 20000), np.uint8))
    with pytest.raises(DatasetError, match="aspect ratio of 1250:1, above the limit of 20:1"):
        load_bgr(path)


def test_pixel_limit_from_environment_and_after_decoding(tmp_path, monkeypatch):
    path = tmp_path / "small.png"
    cv2.imwrite(str(path), np.zeros((40, 50, 3), np.uint8))
    assert load_bgr(path).shape == (40, 50, 3)
    monkeypatch.setenv("SPPDET_MAX_PIXELS", "1000")
    with pytest.raises(DatasetError, match="50 x 40 image"):
        load_bgr(path)
    monkeypatch.setattr(images, "header_size", lambda path: None)  # a format Pillow cannot read
    with pytest.raises(DatasetError, match="50 x 40 image"):
        load_bgr(path)


def test_huge_image_in_a_dataset_is_one_line(tmp_path):
    root = write_dataset(tmp_path / "voc")
    big = root / "JPEGImages" / "im2.png"
    png_header_only(big, 30000, 30000)
    result = sppdet(tmp_path / "work", "propose", "--data", str(root), "--split", "trainval", "--workers", "1")
    assert_one_line_error(result, str(big), "megapixels")


def test_max_pixels_option(tmp_path, monkeypatch):
    monkeypatch.setenv("SPPDET_MAX_PIXELS", "")  # restored after the test: the option sets it
    root = write_dataset(tmp_path / "voc")
    result = sppdet(tmp_path / "work", "--max-pixels", "1000", "propose", "--data", str(root), "--workers", "1")
    assert_one_line_error(result, "64 x 48 image", "above the limit of 0.001")


# ---------------------------------------------------------------------------------------------
# 5. read-only work directory, full disk, permissions


def forbid_writes(monkeypatch) -> None:
    """Make every atomic write fail as a read-only file system would."""
    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), kwargs.get("dir"))
    monkeypatch.setattr(fileio, "tempfile", SimpleNamespace(mkstemp=refuse))


def test_record_stage_writes_only_changes(tmp_path, monkeypatch):
    work = WorkDir(tmp_path / "work")
    work.record_stage("x", {"a": (1, 2), "b": 0.1})
    work.update_config(data_root="/d")
    forbid_writes(monkeypatch)
    work.record_stage("x", {"a": [1, 2], "b": 0.1})  # same record: nothing written
    work.update_config(data_root="/d")
    with pytest.raises(OSError):
        work.record_stage("x", {"a": [1, 3]})


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    """A work directory where propose and pretrain (random windows) are done: (root, work)."""
    base = tmp_path_factory.mktemp("cached")
    root, work = write_dataset(base / "voc"), base / "work"
    for args in (("propose", "--data", str(root), "--workers", "1"), ("pretrain", *TINY_OPTIONS)):
        result = sppdet(work, *args)
        assert result.exit_code == 0, result.output
    return root, work


def test_fully_cached_rerun_writes_nothing(cached, monkeypatch):
    root, work = cached
    forbid_writes(monkeypatch)
    for args in (("propose", "--workers", "1"), ("pretrain", *TINY_OPTIONS), ("status",)):
        result = sppdet(work, *args)
        assert result.exit_code == 0, result.output


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_work_directory_fully_cached(cached):
    root, work = cached
    paths = [work, *work.rglob("*")]
    modes = {path: path.stat().st_mode for path in paths}
    try:
        for path in paths:
            path.chmod(modes[path] & ~0o222)
        result = sppdet(work, "pretrain", *TINY_OPTIONS)
        assert result.exit_code == 0, result.output
    finally:
        for path in reversed(paths):
            path.chmod(modes[path])


@pytest.mark.parametrize("code,advice", [(errno.ENOSPC, "free some space"), (errno.EACCES, "permission denied"),
                                         (errno.EROFS, "read-only")])
def test_os_errors_are_one_line(tmp_path, monkeypatch, code, advice):
    root = write_dataset(tmp_path / "voc")
    real_fsync = fileio._fsync

    def fail(path):
        real_fsync(path)
        raise OSError(code, os.strerror(code))  # as a write or flush of the data would
    monkeypatch.setattr(fileio, "_fsync", fail)
    work = tmp_path / "work"
    result = sppdet(work, "propose", "--data", str(root), "--workers", "1")
    line = assert_one_line_error(result, advice)
    assert line.startswith(f"Error: {work}")  # names the file it could not write, not a temp file
    assert not temp_files(work)  # nothing half-written is left


# ---------------------------------------------------------------------------------------------
# 6. corrupt model files, fsync, leftover temp files


def test_atomic_write_fsyncs_before_rename(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(fileio.os, "fsync", lambda fd: calls.append(("fsync", fd)))
    real_replace = os.replace
    monkeypatch.setattr(fileio.os, "replace", lambda a, b: (calls.append(("replace", b)), real_replace(a, b)))
    atomic_write_bytes(tmp_path / "f.bin", b"data")
    assert [c[0] for c in calls] == ["fsync", "replace"] and (tmp_path / "f.bin").read_bytes() == b"data"


def test_leftover_temp_files_of_dead_writers_are_removed(tmp_path):
    work = WorkDir(tmp_path / "work")
    folder = work.stage_dir("propose", {"x": 1})
    host = fileio._HOST
    dead = folder / f".im0.npy.{host}-{2 ** 31 - 2}.abc123.tmp"
    live = folder / f".im1.npy.{host}-{os.getpid()}.def456.tmp"
    deeper = folder / "hflip" / f".im0.npz.{host}-{2 ** 31 - 2}.zz.tmp"
    other_machine = folder / f".im2.npy.{host}x-{2 ** 31 - 2}.gh789.tmp"  # a shard on a shared disk
    for path in (dead, live, deeper, other_machine):
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"half")
    assert work.stage_dir("propose", {"x": 1}) == folder
    assert not dead.exists() and not deeper.exists() and live.exists() and other_machine.exists()


@pytest.mark.parametrize("name,damage", [(TRUNK_FILE, b""), (HEAD_FILE, b""), (TRUNK_FILE, b"PK\x03\x04 cut")])
def test_corrupt_pretrain_output_is_trained_again(tmp_path, name, damage):
    root, work = write_dataset(tmp_path / "voc"), tmp_path / "work"
    job = prepare_pretrain(work, TINY, data_root=root, device="cpu")
    assert not run_pretrain(job).skipped
    (job.folder / name).write_bytes(damage)
    again = prepare_pretrain(work, TINY, device="cpu")
    with pytest.warns(SppdetWarning, match=f"{name}.*computed again"):
        assert not again.done
    with pytest.warns(SppdetWarning):
        summary = run_pretrain(again)
    assert not summary.skipped
    torch.load(job.folder / TRUNK_FILE, weights_only=True)
    assert run_pretrain(prepare_pretrain(work, TINY, device="cpu")).skipped


def test_corrupt_trunk_through_the_cli(cached, tmp_path):
    import shutil
    root, work = cached
    copy = tmp_path / "work"
    shutil.copytree(work, copy)
    trunk = next(copy.glob(f"pretrain-*/{TRUNK_FILE}"))
    trunk.write_bytes(b"")
    result = sppdet(copy, "pretrain", *TINY_OPTIONS)
    assert result.exit_code == 0, result.output
    assert "already trained" not in result.output and f"warning: {trunk}: empty file" in result.output
    assert trunk.stat().st_size > 0


def test_corrupt_svm_file_is_not_reused(tmp_path):
    from sppdet.models.model_file import model_file_problem, reusable, write_model_file

    path = tmp_path / "svm.npz"
    assert not reusable(path, lambda p: model_file_problem(p, "svm"))  # missing: no warning
    write_model_file(path, "svm", {"weights": np.zeros((2, 3))}, {})
    assert reusable(path, lambda p: model_file_problem(p, "svm"))
    path.write_bytes(path.read_bytes()[:40])  # truncated
    with pytest.warns(SppdetWarning, match="svm.npz: cannot read the model.*computed again"):
        assert not reusable(path, lambda p: model_file_problem(p, "svm"))


def test_unreadable_model_files_say_delete(tmp_path):
    from sppdet.errors import ModelError
    from sppdet.models.backbones import build_backbone
    from sppdet.models.head import load_head
    from sppdet.models.svm import SvmModel

    for path in (tmp_path / "empty.npz", tmp_path / "empty.pt"):
        path.write_bytes(b"")
    with pytest.raises(ModelError, match="delete it"):
        SvmModel.load(tmp_path / "empty.npz")
    with pytest.raises(ModelError, match="delete it"):
        load_head(tmp_path / "empty.pt")
    with pytest.raises(ModelError, match="delete it"):
        build_backbone("zf5", 0.125, tmp_path / "empty.pt")


# ---------------------------------------------------------------------------------------------
# 7. a diverging loss stops training


def test_nan_loss_stops_the_head(tmp_path):
    head = FcHead(8, (4, 4), 2)

    def batches(epoch):
        yield np.full((4, 8), np.nan, np.float32), np.zeros(4, np.int64)
    with pytest.raises(TrainingError, match=r"sppdet finetune: the training loss became nan .*lower --lr"):
        train_head(head, batches, epochs=1, lr=0.01)


def test_nan_loss_stops_pretrain_and_saves_nothing(tmp_path, monkeypatch):
    root, work = write_dataset(tmp_path / "voc"), tmp_path / "work"
    real = torch.nn.functional.cross_entropy
    monkeypatch.setattr(torch.nn.functional, "cross_entropy", lambda *a, **k: real(*a, **k) * float("nan"))
    result = sppdet(work, "pretrain", "--data", str(root), *TINY_OPTIONS)
    assert_one_line_error(result, "sppdet pretrain: the training loss became nan", "--lr")
    folder = next(work.glob("pretrain-*"))
    assert not any((folder / name).exists() for name in (TRUNK_FILE, HEAD_FILE, INFO_FILE))
    assert "pretrain" not in WorkDir(work).config().get("stages", {})


# ---------------------------------------------------------------------------------------------
# 8. concurrent runs and dead workers (issue 17, "Concurrency" and "Workers")


def test_concurrent_records_lose_no_update(tmp_path):
    import multiprocessing

    from fault_workers import record_many

    work, writers, count = tmp_path / "work", 4, 15
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=record_many, args=(str(work), writer, count)) for writer in range(writers)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    config = WorkDir(work).config()
    pairs = [(w, i) for w in range(writers) for i in range(count)]
    assert set(config["stages"]) == {f"w{w}-s{i}" for w, i in pairs}  # lost updates without the lock
    assert {key for key in config if key.startswith("w")} == {f"w{w}-k{i}" for w, i in pairs}
    assert (work / ".config.lock").is_file()


@pytest.mark.timeout(120)
def test_killed_pool_worker_is_one_error_naming_its_item():
    """A worker killed as the OOM killer does: one error naming its item (it hung for ever with
    multiprocessing.Pool). A normal parallel run is covered by test_propose and test_synth."""
    from fault_workers import die_on_boom
    from sppdet.errors import WorkerError
    from sppdet.parallel import map_unordered

    items = ["a", "b", "boom", "c"]
    with pytest.raises(WorkerError) as caught:
        list(map_unordered(die_on_boom, items, workers=2, describe=lambda item: f"JPEGImages/{item}.png"))
    message = str(caught.value)
    assert message == ("a worker process died (killed, out of memory?) while on JPEGImages/boom.png; "
                       "re-run to continue: finished images are kept")


# ---------------------------------------------------------------------------------------------
# 9. content identity of model files


def test_saved_model_files_depend_on_content_only(tmp_path):
    """torch.save to a path names its archive after the (random) temporary file name, so an
    identical re-run gave other bytes, another file_hash, and retrained every later stage."""
    import zipfile

    from sppdet.fileio import file_hash
    from sppdet.models.head import save_head
    from sppdet.models.model_file import save_torch_file

    torch.manual_seed(0)
    head = FcHead(8, (4, 4), 2)
    for name in ("a.pt", "b.pt"):
        save_head(tmp_path / name, head, {"stage": "finetune"})
        save_torch_file(tmp_path / f"trunk-{name}", {"conv1.weight": torch.ones(2, 3)})
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
    assert file_hash(tmp_path / "trunk-a.pt") == file_hash(tmp_path / "trunk-b.pt")
    assert {n.split("/")[0] for n in zipfile.ZipFile(tmp_path / "a.pt").namelist()} == {"archive"}


# ---------------------------------------------------------------------------------------------
# 10. one work directory, one dataset


@pytest.mark.parametrize("stage", ["propose", "pretrain", "extract", "finetune", "train-svm", "train-bbox", "train",
                                   "eval"])
def test_another_dataset_root_is_refused(cached, tmp_path, stage):
    """Before, propose --data B recorded B while extract and pretrain kept A's caches, so A's
    features were pooled for B's boxes wherever the image ids overlapped. Every stage that uses
    the work directory's caches refuses; eval of --detections files may read any dataset."""
    root, work = cached
    other = write_dataset(tmp_path / "other")
    before = (work / "config.json").read_bytes()
    result = sppdet(work, stage, "--data", str(other))
    assert_one_line_error(result, f"{work} was made for dataset {root.resolve()}; use another --workdir "
                                  f"for {other.resolve()}, or delete {work / 'config.json'} to start over")
    assert (work / "config.json").read_bytes() == before


def test_the_same_root_by_another_path_is_accepted(cached, tmp_path, monkeypatch):
    root, work = cached
    link = tmp_path / "link"
    link.symlink_to(root)
    monkeypatch.chdir(root.parent)
    for path in (str(link), root.name, f"{root}/"):
        result = sppdet(work, "propose", "--data", path, "--workers", "1")
        assert result.exit_code == 0, result.output


def test_eval_of_detection_files_may_read_another_root(cached, tmp_path):
    root, work = cached
    other = write_dataset(tmp_path / "other")
    detections = tmp_path / "det.json"
    detections.write_text(json.dumps([{"image_id": "im3", "category_id": 2, "bbox": [8, 8, 32, 32], "score": 0.9}]))
    result = sppdet(work, "eval", "--data", str(other), "--split", "test", "--detections", str(detections))
    assert result.exit_code == 0, result.output


# ---------------------------------------------------------------------------------------------
# 11. a fully cached `sppdet train` writes no summary


def test_train_summary_kept_when_only_times_differ(tmp_path, monkeypatch):
    """Before, every `sppdet train` re-run rewrote train-summary.json (its times), so a fully
    trained, read-only work directory could not re-run train."""
    from sppdet.pipelines.train import write_summary

    path = tmp_path / "train-summary.json"
    summary = {"splits": {"train": "train"}, "val_map": 0.5, "settings": [("C", 1.0)], "times": [1.0], "seconds": 3.0}
    write_summary(path, summary)
    before = path.read_bytes()
    forbid_writes(monkeypatch)
    write_summary(path, {**summary, "times": [0.1], "seconds": 0.2})  # a fully cached re-run
    assert path.read_bytes() == before
    with pytest.raises(OSError):
        write_summary(path, {**summary, "val_map": 0.6})  # something else trained: written


# ---------------------------------------------------------------------------------------------
# 12. resumable training: a killed pretrain or finetune continues to the same weights


class Killed(BaseException):
    """Stands for a kill -9 in the tests: no handler of sppdet's catches it (not an ``Exception``)."""


def die_after_first_checkpoint(monkeypatch) -> None:
    """Make training "die" right after its first checkpoint is written, at the end of epoch 1."""
    from sppdet.training.checkpoint import EpochCheckpoint
    real = EpochCheckpoint.save

    def save(self, state):
        real(self, state)
        raise Killed

    monkeypatch.setattr(EpochCheckpoint, "save", save)


def killed_then_rerun(work: Path, monkeypatch, stage: str, output: str, *args: str) -> str:
    """Run ``sppdet ARGS`` on ``work``, killed after epoch 1 (its ``stage`` folder then holds a
    checkpoint and no ``output``), then again to the end; the output of the second run."""
    from sppdet.training.checkpoint import CHECKPOINT_FILE
    with monkeypatch.context() as patch:
        die_after_first_checkpoint(patch)
        with pytest.raises(Killed):
            sppdet(work, *args)
    folder = next(work.glob(f"{stage}-*"))
    assert (folder / CHECKPOINT_FILE).is_file() and not (folder / output).exists()
    result = sppdet(work, *args)
    assert result.exit_code == 0, result.output
    assert not (folder / CHECKPOINT_FILE).exists(), "the checkpoint outlived the final output"
    return result.output


def assert_same_weights(first: Path, second: Path) -> None:
    """The torch files hold bitwise-equal tensors (of a head file: its ``state``)."""
    a, b = (torch.load(path, weights_only=True) for path in (first, second))
    a, b = a.get("state", a), b.get("state", b)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{second}: {name} differs from {first}"


def test_killed_pretrain_resumes_to_the_same_weights(tmp_path, monkeypatch):
    """Before, a pretrain killed in its last epoch started again from epoch 1. Now it continues
    from its last checkpoint (weights, momentum, schedule step, history, dropout RNG) and ends
    bitwise where an uninterrupted run does."""
    from sppdet.fileio import read_json
    root = write_dataset(tmp_path / "voc")
    options = list(TINY_OPTIONS)
    options[options.index("--epochs") + 1] = "3"
    args = ("pretrain", "--data", str(root), *options)
    assert sppdet(tmp_path / "whole", *args).exit_code == 0
    output = killed_then_rerun(tmp_path / "killed", monkeypatch, "pretrain", INFO_FILE, *args)
    assert "resumed from epoch 1" in output
    whole, resumed = (next((tmp_path / name).glob("pretrain-*")) for name in ("whole", "killed"))
    for name in (TRUNK_FILE, HEAD_FILE):
        assert_same_weights(whole / name, resumed / name)
    losses = [[epoch["loss"] for epoch in read_json(folder / INFO_FILE)["history"]] for folder in (whole, resumed)]
    assert losses[0] == losses[1] and len(losses[0]) == 3


def test_killed_pretrain_with_dropout_resumes_to_the_same_weights(tmp_path, monkeypatch):
    """As above with dropout (the RNG state must come back) and crop sizes alternating by epoch."""
    from dataclasses import replace

    from sppdet.training.checkpoint import CHECKPOINT_FILE
    root = write_dataset(tmp_path / "voc")
    config = replace(TINY, epochs=3, dropout=0.5, sizes=(32, 40))
    whole = run_pretrain(prepare_pretrain(tmp_path / "whole", config, data_root=root, device="cpu"))
    job = prepare_pretrain(tmp_path / "work", config, data_root=root, device="cpu")
    with monkeypatch.context() as patch:
        die_after_first_checkpoint(patch)
        with pytest.raises(Killed):
            run_pretrain(job)
    summary = run_pretrain(prepare_pretrain(tmp_path / "work", config, device="cpu"))
    assert summary.resumed_from == 1 and not (job.folder / CHECKPOINT_FILE).exists()
    assert [epoch.loss for epoch in summary.history] == [epoch.loss for epoch in whole.history]
    for name in (TRUNK_FILE, HEAD_FILE):
        assert_same_weights(whole.folder / name, job.folder / name)


def test_corrupt_checkpoint_warns_and_trains_from_scratch(tmp_path):
    from dataclasses import replace

    from sppdet.training.checkpoint import CHECKPOINT_FILE
    root = write_dataset(tmp_path / "voc")
    config = replace(TINY, epochs=2)
    whole = run_pretrain(prepare_pretrain(tmp_path / "whole", config, data_root=root, device="cpu"))
    job = prepare_pretrain(tmp_path / "work", config, data_root=root, device="cpu")
    (job.folder / CHECKPOINT_FILE).write_bytes(b"PK\x03\x04 cut by a full disk")
    with pytest.warns(SppdetWarning, match=r"checkpoint\.pt: unreadable checkpoint \(.*\); training starts"):
        summary = run_pretrain(job)
    assert summary.resumed_from == 0 and not (job.folder / CHECKPOINT_FILE).exists()
    for name in (TRUNK_FILE, HEAD_FILE):
        assert_same_weights(whole.folder / name, job.folder / name)


@pytest.fixture(scope="module")
def extracted(tmp_path_factory, write_scene_dataset):
    """A work directory with the proposals and zf5 features of 6 scenes, finetune's input."""
    from sppdet.config import ProposeConfig
    from sppdet.stages.extract import prepare_extract, run_extract
    from sppdet.stages.propose import prepare_propose, run_propose
    base = tmp_path_factory.mktemp("extracted")
    root, work = base / "voc", base / "work"
    write_split(root, "trainval", write_scene_dataset(root, ("disc", "square"), 6, np.random.default_rng(0),
                                                      120, 160, (28, 50)))
    run_propose(prepare_propose(work, ProposeConfig(max_proposals=200), "trainval", root), workers=1)
    run_extract(prepare_extract(work, split="trainval", backbone="zf5", width=0.125, scales=(96, 192),
                                device="cpu"))
    return work


@pytest.mark.parametrize("extra", [(), ("--train-conv",)], ids=["head", "train-conv"])
def test_killed_finetune_resumes_to_the_same_weights(extracted, tmp_path, monkeypatch, extra):
    """Before, a killed finetune (head only, or end to end with --train-conv) started again from
    epoch 1. Now it continues from its last checkpoint and ends bitwise where an uninterrupted run
    does: head.pt, and with --train-conv also trunk.pt."""
    import shutil
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    for work in (whole, killed):
        shutil.copytree(extracted, work)
    args = ("finetune", "--hidden", "32,32", "--epochs", "3", "--windows-per-image", "16", "--device", "cpu",
            *extra)
    assert sppdet(whole, *args).exit_code == 0
    output = killed_then_rerun(killed, monkeypatch, "finetune", HEAD_FILE, *args)
    assert "resumed from epoch 1" in output
    folders = [next(work.glob("finetune-*")) for work in (whole, killed)]
    for name in (HEAD_FILE, *(["trunk.pt"] if extra else [])):
        assert_same_weights(folders[0] / name, folders[1] / name)


# ---------------------------------------------------------------------------------------------
# 13. content identity: a dataset regenerated in place (issue 17, "Content identity")


def propose_and_extract(work: Path, root: Path | None = None):
    """``propose`` then ``extract`` (random zf5 width 0.125, one scale) of trainval: (the
    propose job, as prepared, and the extract summary)."""
    from sppdet.stages.extract import prepare_extract, run_extract
    from sppdet.stages.propose import prepare_propose, run_propose

    job = prepare_propose(work, split="trainval", data_root=root)
    todo = list(job.todo)
    run_propose(job, workers=1)
    summary = run_extract(prepare_extract(work, split="trainval", backbone="zf5", width=0.125, scales=(64,),
                                          weights="none", device="cpu"))
    return SimpleNamespace(folder=job.folder, todo=todo), summary


def cache_mtimes(*folders: Path) -> dict[str, int]:
    """``folder/file`` -> mtime_ns of every cache file (.npy, .npz) in ``folders``."""
    return {f"{folder.name}/{path.name}": path.stat().st_mtime_ns
            for folder in folders for path in folder.rglob("*") if path.suffix in (".npy", ".npz")}


def regenerate_image(path: Path, seed: int) -> None:
    """Write new random pixels (same size) over the PNG ``path``, as a dataset regenerated in place."""
    cv2.imwrite(str(path), np.random.default_rng(seed).integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8))


def test_regenerated_image_recomputes_only_that_image(tmp_path):
    """Before, every cache was reused: its identity was the dataset path and the settings. Now a
    regenerated image recomputes its proposals and features only; a touched (same bytes) image
    recomputes nothing."""
    from sppdet.workdir.caches import load_features

    root, work = write_dataset(tmp_path / "voc"), tmp_path / "work"
    proposals, features = propose_and_extract(work, root)
    assert len(proposals.todo) == 4 and features.computed == 4
    before = cache_mtimes(proposals.folder, features.folder)
    old = np.array(load_features(features.folder, "im1").maps[0])
    regenerate_image(root / "JPEGImages" / "im1.png", seed=7)
    touched = root / "JPEGImages" / "im2.png"
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    proposals, features = propose_and_extract(work)
    assert proposals.todo == ["im1"] and features.computed == 1
    after = cache_mtimes(proposals.folder, features.folder)
    assert {name for name in before if after[name] != before[name]} == {
        f"{proposals.folder.name}/im1.npy", f"{features.folder.name}/im1.npz"}
    assert not np.array_equal(load_features(features.folder, "im1").maps[0], old)


def test_unchanged_rerun_recomputes_nothing_and_old_caches_are_trusted_once(tmp_path):
    """A cache written before sources existed (no ``.source.json``) is kept and given the image's
    current signature; an unchanged re-run computes and rewrites nothing."""
    root, work = write_dataset(tmp_path / "voc"), tmp_path / "work"
    proposals, features = propose_and_extract(work, root)
    sources = [proposals.folder / "im0.source.json", features.folder / "im0.source.json"]
    for source in sources:
        source.unlink()
    before = cache_mtimes(proposals.folder, features.folder)
    again, extracted = propose_and_extract(work)
    assert again.todo == [] and extracted.computed == 0
    assert cache_mtimes(proposals.folder, features.folder) == before
    assert all(source.is_file() for source in sources)
    regenerate_image(root / "JPEGImages" / "im0.png", seed=3)  # now recorded, so a change is seen
    again, extracted = propose_and_extract(work)
    assert again.todo == ["im0"] and extracted.computed == 1


def test_changed_annotation_trains_a_new_folder(tmp_path):
    """Before, train-bbox (like pretrain, finetune and train-svm) reused the model trained on the
    old annotations. Now the split's content digest is part of the folder hash."""
    from sppdet.stages.train_bbox import run_train_bbox

    root, work = write_dataset(tmp_path / "voc"), tmp_path / "work"
    propose_and_extract(work, root)
    first = run_train_bbox(WorkDir(work), "trainval")
    assert first.trained and run_train_bbox(WorkDir(work), "trainval").folder == first.folder
    path = root / "Annotations" / "im2.xml"
    annotation = read_annotation(path)
    write_annotation(path, Annotation(annotation.image_id, WIDTH, HEIGHT, np.array([[4, 6, 36, 44]], np.float32),
                                      annotation.names, annotation.difficult, annotation.filename))
    propose_and_extract(work)
    second = run_train_bbox(WorkDir(work), "trainval")
    assert second.trained and second.folder != first.folder
    assert (first.folder / "bbox.npz").is_file()  # the old model is left alone, not overwritten


# ---------------------------------------------------------------------------------------------
# 14. one process computes a stage folder (issue 17, "never duplicate a long computation silently")


@pytest.fixture()
def lock_holder():
    """``hold(folder, shard)``: a spawned process holding that stage folder's busy lock (as a
    computing stage does) until it is killed, at the latest when the test ends; returns it."""
    import multiprocessing

    from fault_workers import hold_stage_lock

    context = multiprocessing.get_context("spawn")
    started = []

    def hold(folder: Path, shard=(1, 1)):
        ready = context.Event()
        process = context.Process(target=hold_stage_lock, args=(str(folder), shard, ready))
        process.start()
        started.append(process)
        assert ready.wait(60), "the lock holder did not start"
        return process

    yield hold
    for process in started:
        process.kill()
        process.join(timeout=60)


@pytest.mark.timeout(120)
def test_second_process_on_a_busy_folder_is_one_line(tmp_path, lock_holder):
    """Before, two `sppdet propose` (or extract) on one work directory both computed everything.
    Now the second stops with one line naming the first's pid; shards still run side by side."""
    from sppdet.stages.propose import prepare_propose

    root, work = write_dataset(tmp_path / "voc"), tmp_path / "work"
    folder = prepare_propose(work, split="trainval", data_root=root).folder
    holder = lock_holder(folder)
    result = sppdet(work, "propose", "--workers", "1")
    assert_one_line_error(result, f"{folder} is being computed by another sppdet process (pid {holder.pid}); "
                                  "wait for it to finish, or use --shard i/n to split the work")
    assert not list(folder.glob("*.npy"))


@pytest.mark.timeout(120)
def test_shards_run_side_by_side_but_not_twice(tmp_path, lock_holder):
    from sppdet.stages.propose import prepare_propose

    root, work = write_dataset(tmp_path / "voc"), tmp_path / "work"
    folder = prepare_propose(work, split="trainval", data_root=root).folder
    holder = lock_holder(folder, (1, 2))
    assert sppdet(work, "propose", "--workers", "1", "--shard", "2/2").exit_code == 0
    assert sorted(p.stem for p in folder.glob("*.npy")) == ["im1", "im3"]
    assert_one_line_error(sppdet(work, "propose", "--workers", "1", "--shard", "1/2"),
                          f"{folder} (shard 1/2) is being computed by another sppdet process (pid {holder.pid})")
    assert_one_line_error(sppdet(work, "propose", "--workers", "1"), f"(pid {holder.pid})")


@pytest.mark.timeout(120)
def test_killed_holder_leaves_no_lock_and_cached_runs_take_none(tmp_path, lock_holder):
    """The kernel drops a killed holder's lock (kill -9 leaves nothing to clean), and a fully
    cached run takes no lock at all (it writes nothing, so it runs beside a computing one)."""
    from sppdet.stages.propose import prepare_propose

    root, work = write_dataset(tmp_path / "voc"), tmp_path / "work"
    folder = prepare_propose(work, split="trainval", data_root=root).folder
    holder = lock_holder(folder)
    holder.kill()
    holder.join(timeout=60)
    assert sppdet(work, "propose", "--workers", "1").exit_code == 0
    lock_holder(folder)
    assert sppdet(work, "propose", "--workers", "1").exit_code == 0  # nothing to compute: no lock needed


# 15. a copied or moved work directory --------------------------------------------------------


def test_a_moved_work_directory_records_nothing_new(tmp_path):
    """Records name files below the work directory relative to it: after `mv`, a fully cached
    re-run changes no record (so it also runs on a read-only copy)."""
    import shutil

    root, work = write_dataset(tmp_path / "voc", count=6), tmp_path / "work"
    for args in (("propose", "--data", str(root), "--split", "trainval", "--workers", "1"),
                 ("propose", "--split", "test", "--workers", "1"), ("pretrain", *TINY_OPTIONS),
                 ("extract", "--split", "trainval"), ("extract", "--split", "test")):
        assert sppdet(work, *args).exit_code == 0, args
    moved = tmp_path / "moved"
    shutil.move(work, moved)
    before = (moved / "config.json").read_bytes()
    assert sppdet(moved, "extract", "--split", "trainval").exit_code == 0
    assert (moved / "config.json").read_bytes() == before
    record = json.loads(before)["stages"]["extract"]
    assert not Path(record["weights_source"]).is_absolute()


# 16. Ctrl-C -----------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_pool_workers_ignore_ctrl_c_and_the_parent_keeps_it():
    """Ctrl-C reaches the whole process group: the workers ignore it (no traceback from each), the
    parent still gets KeyboardInterrupt and stops the pool (benchmarks/faults.py, "Ctrl-C")."""
    import signal

    from fault_workers import sigint_ignored
    from sppdet.parallel import map_unordered

    before = signal.getsignal(signal.SIGINT)
    assert all(map_unordered(sigint_ignored, [0, 1], workers=2))
    assert signal.getsignal(signal.SIGINT) is before


def test_train_says_when_a_stage_resumed():
    from sppdet.pipelines.train import _resumed

    assert _resumed(0) == "" and _resumed(3) == " (resumed from epoch 3)"
