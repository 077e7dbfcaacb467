"""Model files: arrays plus JSON metadata in one ``.npz`` (no pickle), checked on load.

Every trained model (SVMs, box regressors) records the hash and length of the features it was
trained on; loading it against other features is a ``ModelError`` naming the file and the command
to re-run.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from sppdet.errors import ModelError
from sppdet.fileio import atomic_save_npz, to_jsonable


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
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise ModelError(f"{path}: cannot read the model ({exc}); re-run `{command}`") from None
    if metadata.get("kind") != kind:
        raise ModelError(f"{path}: holds a {metadata.get('kind')!r} model, not {kind!r}")
    if feature_hash is not None and metadata.get("feature_hash") != feature_hash:
        raise ModelError(f"{path}: trained on features {metadata.get('feature_hash')}, these are "
                         f"{feature_hash}; re-run `{command}`")
    if feature_dim is not None and metadata.get("feature_dim") != feature_dim:
        raise ModelError(f"{path}: trained on {metadata.get('feature_dim')}-d features, these are "
                         f"{feature_dim}-d; re-run `{command}`")
    return arrays, metadata
