"""The work directory: where every stage caches its output, and how it writes safely.

Layout (``--workdir``, default ``./sppdet-work``, env ``SPPDET_WORKDIR``)::

    config.json                  dataset root and every stage's resolved config
    <stage>-<hash>/              one folder per stage output; <hash> covers the stage's config,
        stage.json               its inputs' hashes and FORMAT_VERSION, so a change of any of
        ...                      them gives a new folder and nothing stale is ever reused

Writes are atomic: data goes to a temporary file in the destination folder, which is then
renamed over the target (``os.replace`` is atomic on POSIX and Windows), so an interrupted run
never leaves a half-written file that a later run would trust.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from sppdet.errors import WorkdirError

#: Bumped whenever any on-disk format changes; part of every stage hash.
FORMAT_VERSION = 1
DEFAULT_WORKDIR = "sppdet-work"
WORKDIR_ENV = "SPPDET_WORKDIR"
HASH_CHARS = 10


def resolve_workdir(path: str | os.PathLike | None = None) -> Path:
    """The work directory: ``path`` if given, else ``$SPPDET_WORKDIR``, else ``./sppdet-work``."""
    chosen = path or os.environ.get(WORKDIR_ENV) or DEFAULT_WORKDIR
    return Path(chosen).expanduser().resolve()


# ---------------------------------------------------------------------------------------------
# hashing


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def to_jsonable(value: Any) -> Any:
    """Dataclasses, tuples, paths and numpy scalars turned into plain JSON values."""
    return _jsonable(value)


def content_hash(value: Any, chars: int = HASH_CHARS) -> str:
    """Short, stable hex digest of a JSON-able value (dataclasses allowed), keys sorted."""
    text = json.dumps(_jsonable(value), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:chars]


def file_hash(path: str | os.PathLike, chars: int = HASH_CHARS) -> str:
    """Short hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:chars]


# ---------------------------------------------------------------------------------------------
# atomic writes


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``.

    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, value: Any) -> None:
    """Write ``value`` as indented JSON atomically (dataclasses and tuples are converted)."""
    atomic_write_text(path, json.dumps(_jsonable(value), indent=2, sort_keys=True) + "\n")


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Save one array as ``.npy`` atomically (never pickled)."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array), allow_pickle=False)
    atomic_write_bytes(path, buffer.getvalue())


def atomic_save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """Save named arrays as an uncompressed ``.npz`` atomically (members stay memory-mappable)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file, raising ``WorkdirError`` naming it if it is unreadable."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WorkdirError(f"{path}: cannot read JSON ({exc}); delete it and re-run the stage") from None


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

    def update_config(self, **entries: Any) -> None:
        """Merge top-level entries into ``config.json`` (atomically)."""
        config = self.config()
        config.update(_jsonable(entries))
        atomic_write_json(self.config_path, config)

    def record_stage(self, stage: str, settings: Any) -> None:
        """Store a stage's resolved settings under ``config.json["stages"][stage]``."""
        config = self.config()
        config.setdefault("stages", {})[stage] = _jsonable(settings)
        atomic_write_json(self.config_path, config)

    def set_data_root(self, data_root: str | os.PathLike) -> None:
        """Record the dataset root, so later commands need no ``--data``."""
        self.update_config(data_root=str(Path(data_root).expanduser().resolve()))

    def data_root(self, override: str | os.PathLike | None = None) -> Path:
        """The dataset root: ``override`` if given, else the one recorded by ``propose --data``."""
        if override is not None:
            return Path(override).expanduser().resolve()
        recorded = self.config().get("data_root")
        if not recorded:
            raise WorkdirError(
                f"{self.config_path}: no dataset recorded; pass --data ROOT "
                "(the first `sppdet propose --data ROOT` records it)"
            )
        return Path(recorded)

    @property
    def splits_folder(self) -> Path:
        """``splits/``: split files this work directory made itself (``sppdet.splits``)."""
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
        if not manifest.exists():
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write_json(manifest, identity)
        return folder

    def stage_hash(self, folder: Path) -> str:
        """The hash part of a stage folder's name (its identity, used as an input hash)."""
        return folder.name.rsplit("-", 1)[-1]
