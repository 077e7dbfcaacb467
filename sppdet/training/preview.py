"""What ``sppdet train`` would choose for a dataset, without a work directory and without training.

The same two functions as ``sppdet.pipelines.train.prepare_train`` run: the training splits
(``sppdet.training.splits``, carving val the same way) in a throw-away work directory, then the
settings (``sppdet.training.settings``) with the data rules of ``sppdet.data.fit`` on the training
split's annotations. No config file and no flags: the defaults and the data rules only.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from sppdet.data.voc import VocDataset
from sppdet.training.settings import TrainSettings, resolve_train_settings
from sppdet.training.splits import TrainingSplits, resolve_training_splits
from sppdet.workdir.store import WorkDir


def preview_train_settings(data_root: str | os.PathLike) -> tuple[TrainingSplits, TrainSettings]:
    """The splits and settings ``sppdet train --data data_root`` would resolve with its defaults;
    ``DatasetError`` when it would refuse the dataset (e.g. no trainval.txt, too few images)."""
    root = Path(data_root).expanduser().resolve()
    with tempfile.TemporaryDirectory(prefix="sppdet-preview-") as folder:
        work = WorkDir(folder)
        splits = resolve_training_splits(work, root)
        train = VocDataset(root, splits.train, check_images=False, split_dir=work.split_dir(root))
        return splits, resolve_train_settings(root, train, splits)
