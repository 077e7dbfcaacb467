"""The work directory: stage hashing and atomic writes."""

import numpy as np
import pytest

from sppdet import fileio
from sppdet.workdir import store
from sppdet.config import ProposeConfig
from sppdet.errors import WorkdirError


def test_stage_dir_changes_with_settings_and_inputs(tmp_path):
    work = store.WorkDir(tmp_path)
    a = work.stage_dir("proposals", ProposeConfig())
    assert a == work.stage_dir("proposals", ProposeConfig())
    assert a != work.stage_dir("proposals", ProposeConfig(max_proposals=100))
    assert a != work.stage_dir("proposals", ProposeConfig(), inputs={"data": "x"})
    assert (a / "stage.json").is_file() and a.name.startswith("proposals-")


def test_atomic_write_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "x.npy"
    fileio.atomic_save_npy(target, np.arange(3))
    with pytest.raises(RuntimeError):
        with fileio.atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert np.load(target).tolist() == [0, 1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["x.npy"]


def test_data_root_recorded(tmp_path, monkeypatch):
    work = store.WorkDir(tmp_path / "w")
    with pytest.raises(WorkdirError, match="--data"):
        work.data_root()
    work.set_data_root(tmp_path)
    assert work.data_root() == tmp_path.resolve()
    monkeypatch.setenv("SPPDET_WORKDIR", str(tmp_path / "env"))
    assert store.WorkDir().root == (tmp_path / "env").resolve()


def test_atomic_writes_get_the_mode_of_a_plain_write(tmp_path):
    """Not mkstemp's 0600: a work directory or an exported model shared with a group stays readable."""
    from sppdet.fileio import atomic_write_text
    atomic_write_text(tmp_path / "atomic.txt", "x")
    (tmp_path / "plain.txt").write_text("x")
    assert (tmp_path / "atomic.txt").stat().st_mode & 0o777 == (tmp_path / "plain.txt").stat().st_mode & 0o777
