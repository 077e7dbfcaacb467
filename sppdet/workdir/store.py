"""The work directory: where every stage caches its output, and how it writes safely.

Layout (``--workdir``, default ``./sppdet-work``, env ``SPPDET_WORKDIR``)::

    config.json                  dataset root and every stage's resolved config
    <stage>-<hash>/              one folder per stage output; <hash> covers the stage's config,
        stage.json               its inputs' hashes and FORMAT_VERSION, so a change of any of
        ...                      them gives a new folder and nothing stale is ever reused

Every file is written atomically (``sppdet.fileio``), so an interrupted run never leaves a
half-written file that a later run would trust.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping


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
        """Merge top-level entries into ``config.json`` (atomically; not at all when nothing
        changes, so a fully cached re-run writes nothing and works in a read-only work directory)."""
        config = self.config()
        updated = {**config, **to_jsonable(entries)}
        self._write_config(config, updated)

    def record_stage(self, stage: str, settings: Any) -> None:
        """Store a stage's resolved settings under ``config.json["stages"][stage]`` (a no-op when
        the record is unchanged, as :meth:`update_config`)."""
        config = self.config()
        stages = {**config.get("stages", {}), stage: to_jsonable(settings)}
        self._write_config(config, {**config, "stages": stages})

    def _write_config(self, old: dict, new: dict) -> None:
        """Write ``new`` as ``config.json`` unless it equals ``old`` as JSON (tuples and lists alike)."""
        if self.config_path.exists() and json.dumps(old, sort_keys=True) == json.dumps(new, sort_keys=True):
            return
        atomic_write_json(self.config_path, new)

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
