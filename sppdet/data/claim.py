"""Output folders of the dataset generators (``sppdet synth``, ``sppdet scenery``): a generator
writes only into a new or empty folder, or one it claimed before with its marker file."""

from __future__ import annotations

import json
import os
from pathlib import Path

from sppdet.errors import DatasetError


def check_output(root: str | os.PathLike, marker: str, generator: str) -> Path:
    """``root`` resolved, if ``generator`` may write a dataset there: new, empty, or holding its
    ``marker`` JSON (``{"generator": generator, ...}``) from an earlier build; otherwise
    ``DatasetError`` naming the folder. Writes nothing."""
    root = Path(root).expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise DatasetError(f"{root}: exists and is not a folder; choose another output folder")
    if root.is_dir() and any(root.iterdir()):
        try:
            claimed = json.loads((root / marker).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            claimed = None
        if not isinstance(claimed, dict) or claimed.get("generator") != generator:
            raise DatasetError(f"{root}: folder is not empty and holds no {generator} dataset "
                               f"(no valid {marker}); choose a new or empty folder")
    return root
