"""Model files: arrays plus JSON metadata in one ``.npz`` (no pickle), checked on load.

Every trained model (SVMs, box regressors) records the hash and length of the features it was
trained on; loading it against other features is a ``ModelError`` naming the file and the command
to re-run.

A stage decides "already trained" with :func:`reusable`, never by a file's mere existence: an
output that is empty or unreadable (a disk that filled up, a file truncated by a copy) is reported
as a warning and computed again, so re-running the stage repairs it.
"""

from __future__ import annotations

import io
import json
import warnings
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

from sppdet.errors import ModelError, SppdetWarning
from sppdet.fileio import atomic_save_npz, atomic_write_bytes, to_jsonable


def write_model_file(path, kind: str, arrays: dict, metadata: dict) -> None:
    """Save ``arrays`` plus JSON ``metadata`` (with ``kind``) as one ``.npz``, atomically."""
    text = json.dumps(to_jsonable({**metadata, "kind": kind}), sort_keys=True)
    atomic_save_npz(path, metadata=np.array(text), **arrays)


def read_model_file(path, kind: str, command: str, feature_hash: str | None = None,
                    feature_dim: int | None = None) -> tuple[dict, dict]:
    """Load ``(arrays, metadata)`` written by :func:`write_model_file`, checking what it was
    trained on; any mismatch is a ``ModelError`` naming ``path`` and the ``command`` to re-run."""
    if not Path(path).is_file():
        raise ModelError(f"{path}: no trained model there; run `{command}` first")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
        metadata = json.loads(str(arrays.pop("metadata")))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise ModelError(f"{path}: cannot read the model ({exc or type(exc).__name__}); delete it and "
                         f"re-run `{command}`") from None
    if metadata.get("kind") != kind:
        raise ModelError(f"{path}: holds a {metadata.get('kind')!r} model, not {kind!r}")
    if feature_hash is not None and metadata.get("feature_hash") != feature_hash:
        raise ModelError(f"{path}: trained on features {metadata.get('feature_hash')}, these are "
                         f"{feature_hash}; re-run `{command}`")
    if feature_dim is not None and metadata.get("feature_dim") != feature_dim:
        raise ModelError(f"{path}: trained on {metadata.get('feature_dim')}-d features, these are "
                         f"{feature_dim}-d; re-run `{command}`")
    return arrays, metadata


def model_file_problem(path, kind: str) -> str | None:
    """Why the :func:`write_model_file` file at ``path`` cannot be used as a ``kind`` model, or
    None when it reads back."""
    try:
        read_model_file(path, kind, "")
    except ModelError as exc:
        return str(exc)
    return None


def save_torch_file(path, value) -> None:
    """``torch.save`` ``value`` to ``path`` atomically, with bytes that depend on ``value`` only.

    ``torch.save`` to a file names the zip archive inside after the file name, which for an
    atomic write is a random temporary name: an identical re-run would give other bytes, another
    ``file_hash`` and so retrain everything downstream. Saved into memory, the archive is always
    named ``archive``."""
    import torch

    buffer = io.BytesIO()
    torch.save(value, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def torch_file_problem(path) -> str | None:
    """Why ``path`` is not a ``torch.save`` file that ``torch.load(weights_only=True)`` reads
    back (empty, truncated, not a checkpoint), or None when it is."""
    import torch

    if Path(path).stat().st_size == 0:
        return f"{path}: empty file"
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file; all mean "unusable"
        return f"{path}: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
    return None


def reusable(path, problem: Callable[[Path], str | None]) -> bool:
    """Whether a stage may keep its output ``path`` instead of computing it: it exists and
    ``problem(path)`` finds nothing wrong. A corrupt one is warned about (``SppdetWarning``)
    and reported as not reusable, so the stage computes it again and the rename replaces it."""
    path = Path(path)
    if not path.is_file():
        return False
    reason = problem(path)
    if reason is None:
        return True
    warnings.warn(f"{reason}; it is unusable, so it is computed again", SppdetWarning, stacklevel=2)
    return False
