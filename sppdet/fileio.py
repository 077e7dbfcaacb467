"""Files written safely and values hashed stably: atomic writes, JSON, content and file hashes.

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
import re
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from sppdet.errors import WorkdirError

HASH_CHARS = 10


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
# file names from data

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_MAX_STEM = 64


def safe_file_stem(name: str) -> str:
    """``name`` (e.g. a class name from a dataset) as a file-name stem that stays in its folder:
    runs of any character but ASCII letters, digits, ``-`` and ``_`` become ``_`` (no ``/``,
    ``..`` or control characters survive) and it is cut to 64 characters; when that changed
    anything, ``-`` and 8 hex digits of the name's SHA-256 are appended, so two names that differ
    stay two files. A name that is already safe is returned unchanged."""
    stem = _UNSAFE.sub("_", name)[:_MAX_STEM]
    if stem == name and stem:
        return stem
    return f"{stem}-{hashlib.sha256(name.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"


# ---------------------------------------------------------------------------------------------
# atomic writes


#: Temporary files are named ``.<target name>.<host>-<pid>.<random>.tmp`` beside their target, so
#: a later run can tell a leftover of a killed writer (its process is gone) from a live one's; a
#: writer on another machine (shards on a shared filesystem) is never judged from here.
TEMP_SUFFIX = ".tmp"
_HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname()) or "host"


def _new_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: 0666 less the process's umask (read once,
    at import, where nothing else runs yet: ``os.umask`` can only be read by setting it)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


#: Files written through :func:`atomic_path` get this mode, as if written in place (not 0600).
_NEW_FILE_MODE = _new_file_mode()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it over ``path``.

    On an exception the temporary file is removed and ``path`` is left untouched. An ``OSError``
    about the temporary file (e.g. a full disk while writing it) is re-raised naming ``path``,
    the file the user knows.
    """
    target = Path(path)
    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.{_HOST}-{os.getpid()}.",
                                        suffix=TEMP_SUFFIX)
        os.close(fd)
        tmp = Path(tmp_name)
        os.chmod(tmp, _NEW_FILE_MODE)  # mkstemp makes 0600; a written file gets the usual mode
        yield tmp
        _fsync(tmp)  # the data is on disk before the name points at it (no empty file after a crash)
        os.replace(tmp, target)
    except OSError as exc:
        if tmp is not None and exc.errno is not None and exc.filename in (None, str(tmp), tmp):
            raise OSError(exc.errno, exc.strerror, str(target)) from exc
        raise
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink()


def _fsync(path: Path) -> None:
    """Flush ``path``'s data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _writer_alive(temp_file: Path) -> bool:
    """Whether the process that created ``temp_file`` (host and pid in its name) may still run:
    False only for a writer on this machine whose pid is gone; names of other machines or without
    a pid count as alive (never removed)."""
    parts = temp_file.name[: -len(TEMP_SUFFIX)].rsplit(".", 2)
    host, _, pid = parts[1].rpartition("-") if len(parts) == 3 else ("", "", "")
    if host != _HOST or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. EPERM: the process exists but belongs to someone else
        return True
    return True


def remove_stale_temp_files(folder: str | os.PathLike) -> int:
    """Remove the temporary files of :func:`atomic_path` in ``folder`` and its subfolders whose
    writer is no longer running (a killed run's leftovers); returns how many. A concurrent
    writer's files are kept (shards of one work directory run side by side on one machine).
    Unremovable files (e.g. a read-only work directory) are left alone."""
    removed = 0
    folder = Path(folder)
    for pattern in (f".*{TEMP_SUFFIX}", f"*/.*{TEMP_SUFFIX}"):
        for temp_file in folder.glob(pattern):
            if temp_file.is_file() and not _writer_alive(temp_file):
                with contextlib.suppress(OSError):
                    temp_file.unlink()
                    removed += 1
    return removed


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
