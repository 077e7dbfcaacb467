"""The work directory: where every stage caches its output, and how it writes safely.

Layout (``--workdir``, default ``./sppdet-work``, env ``SPPDET_WORKDIR``)::

    config.json                  dataset root and every stage's resolved config
    .config.lock                 flock'ed while a process changes config.json (no lost update)
    <stage>-<hash>/              one folder per stage output; <hash> covers the stage's config,
        stage.json               its inputs' hashes and FORMAT_VERSION, so a change of any of
        ...                      them gives a new folder and nothing stale is ever reused
        .busy                    flock'ed while a process computes the folder (:func:`stage_lock`)
        .busy-shard-<i>-of-<n>   the same for shard i/n of a sharded stage

Every file is written atomically (``sppdet.fileio``), so an interrupted run never leaves a
half-written file that a later run would trust.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping


from sppdet.errors import WorkdirError
from sppdet.fileio import atomic_write_json, content_hash, read_json, remove_stale_temp_files, to_jsonable

#: Bumped whenever any on-disk format changes; part of every stage hash.
FORMAT_VERSION = 1
DEFAULT_WORKDIR = "sppdet-work"
WORKDIR_ENV = "SPPDET_WORKDIR"


def resolve_workdir(path: str | os.PathLike | None = None) -> Path:
    """The work directory: ``path`` if given, else ``$SPPDET_WORKDIR``, else ``./sppdet-work``."""
    chosen = path or os.environ.get(WORKDIR_ENV) or DEFAULT_WORKDIR
    return Path(chosen).expanduser().resolve()


def _as_json(value: Any) -> str:
    """``value`` as canonical JSON text, for comparing records (tuples and lists alike)."""
    return json.dumps(to_jsonable(value), sort_keys=True)


# ---------------------------------------------------------------------------------------------
# the work directory


class WorkDir:
    """A work directory: ``config.json`` plus one hashed folder per stage output."""

    def __init__(self, path: "str | os.PathLike | WorkDir | None" = None):
        self.root = path.root if isinstance(path, WorkDir) else resolve_workdir(path)

    @property
    def config_path(self) -> Path:
        return self.root / "config.json"

    def config(self) -> dict:
        """The contents of ``config.json`` (empty if the work directory is new)."""
        if not self.config_path.exists():
            return {}
        return read_json(self.config_path)

    @property
    def lock_path(self) -> Path:
        """``.config.lock``: the file whose ``flock`` serialises every change of ``config.json``."""
        return self.root / ".config.lock"

    def update_config(self, **entries: Any) -> None:
        """Merge top-level entries into ``config.json`` (atomically; not at all when nothing
        changes, so a fully cached re-run writes nothing and works in a read-only work directory)."""
        entries = to_jsonable(entries)
        self._change_config(lambda config: {**config, **entries})

    def record_stage(self, stage: str, settings: Any) -> None:
        """Store a stage's resolved settings under ``config.json["stages"][stage]`` (a no-op when
        the record is unchanged, as :meth:`update_config`)."""
        record = to_jsonable(settings)
        self._change_config(lambda config: {**config, "stages": {**config.get("stages", {}), stage: record}})

    def _change_config(self, change: Callable[[dict], dict]) -> None:
        """Apply ``change`` (old config -> new config) to ``config.json`` without losing a
        concurrent process's update: the read-modify-write runs under an exclusive ``flock`` of
        :attr:`lock_path`, re-reading the file inside the lock. When ``change`` alters nothing the
        lock is never taken and nothing is written (a read-only work directory works)."""
        if not self._differs(self.config(), change):
            return
        with self._config_lock():
            config = self.config()
            if self._differs(config, change):
                atomic_write_json(self.config_path, change(config))

    def _differs(self, config: dict, change: Callable[[dict], dict]) -> bool:
        """Whether ``change`` alters ``config`` as JSON (tuples and lists alike), or there is no
        ``config.json`` yet."""
        return not self.config_path.exists() or _as_json(change(config)) != _as_json(config)

    @contextlib.contextmanager
    def _config_lock(self) -> Iterator[None]:
        """Hold an exclusive ``flock`` on :attr:`lock_path` (created on demand; the lock goes
        with the process, so a killed holder never leaves the work directory locked)."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def portable_path(self, value: str) -> str:
        """``value`` as a record stores it: a file below the work directory relative to it, so a
        copied or moved work directory still finds it (and a cached re-run in the copy records
        nothing new); anything else (a file elsewhere, "random (seed 0)") unchanged."""
        path = Path(value)
        if path.is_absolute():
            try:
                return str(path.resolve().relative_to(self.root.resolve()))
            except (ValueError, OSError):
                pass
        return value

    def recorded_path(self, value: str | None) -> str | None:
        """A path read back from a record: one relative to the work directory made absolute
        (:meth:`portable_path`); absolute ones, and values naming no file below it, unchanged."""
        if not value or Path(value).is_absolute() or not (self.root / value).exists():
            return value
        return str(self.root / value)

    def set_data_root(self, data_root: str | os.PathLike) -> None:
        """Record the dataset root, so later commands need no ``--data``; ``WorkdirError`` if
        another root is recorded already (:meth:`check_data_root`)."""
        root = Path(data_root).expanduser().resolve()
        self.check_data_root(root)
        self.update_config(data_root=str(root))

    def data_root(self, override: str | os.PathLike | None = None, other_root_ok: bool = False) -> Path:
        """The dataset root: ``override`` if given, else the one recorded by ``propose --data``.

        An ``override`` naming another dataset than the recorded one is a ``WorkdirError``
        (:meth:`check_data_root`) unless ``other_root_ok``: the stages that write caches keyed
        by image id (propose, extract, pretrain, train) call this with the default, while a
        read-only use such as ``sppdet eval --data OTHER`` (scoring this detector on another
        dataset's split; it computes no cache for that root) passes ``other_root_ok=True``."""
        if override is not None:
            root = Path(override).expanduser().resolve()
            if not other_root_ok:
                self.check_data_root(root)
            return root
        recorded = self.config().get("data_root")
        if not recorded:
            raise WorkdirError(
                f"{self.config_path}: no dataset recorded; pass --data ROOT "
                "(the first `sppdet propose --data ROOT` records it)"
            )
        return Path(recorded)

    def check_data_root(self, root: str | os.PathLike) -> None:
        """``WorkdirError`` unless ``root`` is this work directory's dataset (or none is recorded).

        One work directory holds one dataset: its caches (proposals, features, pretrained
        weights) are files named by image id, so caches of dataset A used for dataset B's images
        of the same ids would silently pool A's features for B's boxes. Paths are compared
        resolved, so a relative or symlinked path to the recorded root is the same dataset."""
        recorded = self.config().get("data_root")
        resolved = Path(root).expanduser().resolve()
        if recorded and Path(recorded).resolve() != resolved:
            raise WorkdirError(
                f"{self.root} was made for dataset {recorded}; use another --workdir for {resolved}, "
                f"or delete {self.config_path} to start over")

    @property
    def splits_folder(self) -> Path:
        """``splits/``: split files this work directory made itself (``sppdet.training.splits``)."""
        return self.root / "splits"

    def split_dir(self, data_root: str | os.PathLike) -> Path | None:
        """The folder of this work directory's own split files when they were made for the
        dataset at ``data_root`` (read before the dataset's ``ImageSets/Main``), else None."""
        recorded = self.config().get("splits", {}).get("data_root")
        if recorded and Path(recorded) == Path(data_root).expanduser().resolve():
            return self.splits_folder
        return None

    def stage_dir(self, stage: str, settings: Any, inputs: Mapping[str, str] | None = None) -> Path:
        """The folder ``<stage>-<hash>`` for these settings and input hashes, created on demand.

        ``stage.json`` inside records what the hash covers, so a folder explains itself.
        """
        identity = {"stage": stage, "settings": settings, "inputs": dict(inputs or {}),
                    "format_version": FORMAT_VERSION}
        folder = self.root / f"{stage}-{content_hash(identity)}"
        manifest = folder / "stage.json"
        if folder.is_dir():
            remove_stale_temp_files(folder)  # a killed run's half-written files
        if not manifest.exists():
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write_json(manifest, identity)
        return folder

    def stage_hash(self, folder: Path) -> str:
        """The hash part of a stage folder's name (its identity, used as an input hash)."""
        return folder.name.rsplit("-", 1)[-1]


# ---------------------------------------------------------------------------------------------
# one process computes a folder (or a shard of it) at a time

BUSY_FILE = ".busy"
_PID_FIELD = 11  # the holder's pid, right-aligned in 10 characters and a newline, at offset 0


@contextlib.contextmanager
def stage_lock(folder: Path, shard: tuple[int, int] = (1, 1), shardable: bool = False) -> Iterator[None]:
    """Hold ``folder``'s busy lock while a stage computes into it, so that a second process
    running the same stage on the same work directory stops with one ``WorkdirError`` line naming
    the holder's pid instead of silently computing everything again.

    Unsharded (``shard == (1, 1)``): an exclusive ``flock`` of ``<folder>/.busy``. Shard ``(i, n)``
    of a sharded stage: a shared ``flock`` of ``.busy`` (shards run side by side, but not beside
    an unsharded run of the folder) plus an exclusive one of ``.busy-shard-<i>-of-<n>`` (the same
    shard twice is refused). Locks are taken without waiting, and released when the block ends or
    the process dies (the kernel drops a dead process's ``flock``), so a killed run never leaves
    the folder locked. The lock files stay (removing them would race with a new holder).
    ``shardable``: the stage has ``--shard``, which the message then suggests."""
    index, count = shard
    with contextlib.ExitStack() as held:
        if count == 1:
            hint = "; wait for it to finish, or use --shard i/n to split the work" if shardable else \
                "; wait for it to finish"
            held.enter_context(_flock(folder / BUSY_FILE, fcntl.LOCK_EX, str(folder), hint))
        else:
            busy = f"{folder} (shard {index}/{count})"
            held.enter_context(_flock(folder / BUSY_FILE, fcntl.LOCK_SH, str(folder),
                                      "; wait for it to finish before running shards"))
            held.enter_context(_flock(folder / f"{BUSY_FILE}-shard-{index}-of-{count}", fcntl.LOCK_EX, busy,
                                      "; wait for it to finish, or run another shard"))
        yield


@contextlib.contextmanager
def lazy_stage_lock(folder: Path, shard: tuple[int, int] = (1, 1),
                    shardable: bool = False) -> Iterator[Callable[[], bool]]:
    """:func:`stage_lock` taken on demand, for a stage that finds out image by image whether it
    has anything to compute (a fully cached run writes no lock file). Yields ``take()``: it takes
    the lock on its first call and returns True then (the caller checks its item again: another
    process may have just computed it), False on later calls."""
    taken = False
    with contextlib.ExitStack() as held:
        def take() -> bool:
            nonlocal taken
            if taken:
                return False
            held.enter_context(stage_lock(folder, shard, shardable))
            taken = True
            return True
        yield take


@contextlib.contextmanager
def _flock(path: Path, mode: int, what: str, hint: str) -> Iterator[None]:
    """Hold ``flock(path, mode)`` taken without waiting; the holder of an exclusive lock writes
    its pid in the file. ``WorkdirError`` "``what`` is being computed by another sppdet process
    (pid N)``hint``" when another process holds it (:func:`_holders` finds N)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorkdirError(f"{what} is being computed by another sppdet process "
                               f"({_holders(path, fd)}){hint}") from None
        if mode == fcntl.LOCK_EX:  # fixed width at offset 0, so no older pid's digits remain
            os.pwrite(fd, f"{os.getpid():>{_PID_FIELD - 1}}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _holders(path: Path, fd: int) -> str:
    """"pid N" (or "pids N, M") of the processes holding the busy lock ``path`` (open as ``fd``):
    the pid written in it by an exclusive holder, else those of the shard lock files beside it
    that are held now (shards hold ``.busy`` shared and write their pid in their own file)."""
    pids = []
    if path.name == BUSY_FILE:
        for shard_file in sorted(path.parent.glob(f"{BUSY_FILE}-shard-*")):
            shard_fd = os.open(shard_file, os.O_RDONLY)
            try:
                fcntl.flock(shard_fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:  # held: a running shard
                pids.append(_written_pid(shard_fd))
            finally:
                os.close(shard_fd)
    pids = pids or [_written_pid(fd)]
    return f"pid {pids[0]}" if len(pids) == 1 else f"pids {', '.join(pids)}"


def _written_pid(fd: int) -> str:
    """The pid written in a lock file by its holder ("unknown" if none is readable)."""
    text = os.pread(fd, _PID_FIELD, 0).decode("ascii", "replace").strip()
    return text if text.isdigit() else "unknown"
