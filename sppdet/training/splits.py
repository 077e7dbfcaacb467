"""The training, validation and final splits of ``sppdet train``: the test split is never among them.

Rule (:func:`resolve_training_splits`):

- The dataset has ``ImageSets/Main/val.txt``: models are trained on ``train.txt`` (or, without
  it, on ``trainval.txt`` less the val images) and every choice is scored on ``val``.
- Otherwise ``VAL_FRACTION`` (20%) of ``trainval.txt`` (or of ``train.txt`` when there is no
  trainval) is carved out as ``val``, stratified by class: each image is filed under the rarest
  class among its objects (images without objects form their own group), and in each group the
  images whose SHA-256 of ``(seed, image id)`` ranks lowest go to val, ``round(fraction * n)`` of
  them (none from a group of one image, so every class keeps training images). The choice depends
  only on the ids and the annotations, not on file order, and is repeatable.
- The ``final`` split is train and val together: once every choice is made, the SVMs and box
  regressors are refit on it with the chosen settings (the trunk and fc head stay those trained
  on ``train``, so val stays unseen by every model a choice was scored with).

Carved or completed splits are written to the work directory (``WORKDIR/splits/<name>.txt``,
names ``train``, ``val``, ``trainval``, never a name from the dataset) and recorded in
``config.json["splits"]``; ``VocDataset`` reads them before the dataset's own files
(``sppdet.data.voc.split_path``), so ``sppdet eval --split val`` scores the carved val.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from sppdet.data.voc import read_annotation, read_split, split_path
from sppdet.errors import DatasetError
from sppdet.fileio import atomic_write_text
from sppdet.workdir.store import WorkDir

VAL_FRACTION = 0.2
SPLITS_RECORD = "splits"


@dataclass(frozen=True)
class TrainingSplits:
    """Split names for ``sppdet train``: ``train`` (models are fit on it while choosing), ``val``
    (choices are scored on it), ``final`` (train + val, the final refit); ``carved`` says whether
    val was carved by sppdet, ``source`` which dataset split it came from, with what share and seed;
    ``written`` the split files the work directory holds."""

    train: str
    val: str
    final: str
    carved: bool
    source: str
    fraction: float
    seed: int
    written: tuple[str, ...]

    def describe(self) -> str:
        """One line for tables: where val came from."""
        if self.carved:
            return (f"val: {self.fraction:.0%} of {self.source} carved by sppdet (stratified by class, "
                    f"seed {self.seed}); train: the rest")
        return f"val: the dataset's val.txt; train: {'train.txt' if self.source == 'train' else 'trainval less val'}"


def _has(root: Path, split: str) -> bool:
    return split_path(root, split).is_file()


def _rank_key(seed: int, image_id: str) -> str:
    return hashlib.sha256(f"{seed}:{image_id}".encode()).hexdigest()


def carve_validation(root: Path, image_ids: list[str], fraction: float, seed: int) -> list[str]:
    """The ids of ``image_ids`` that form the validation split (module docstring), in the order
    of ``image_ids``; reads only the annotations."""
    names = {image_id: read_annotation(root / "Annotations" / f"{image_id}.xml").names for image_id in image_ids}
    counts = Counter(name for image_names in names.values() for name in image_names)
    groups: dict[str, list[str]] = {}
    for image_id, image_names in names.items():
        rarest = min(image_names, key=lambda name: (counts[name], name)) if image_names else ""
        groups.setdefault(rarest, []).append(image_id)
    chosen: set[str] = set()
    for members in groups.values():
        if len(members) < 2:
            continue
        ranked = sorted(members, key=lambda image_id: _rank_key(seed, image_id))
        chosen.update(ranked[:min(len(members) - 1, round(fraction * len(members)))])
    if not chosen:
        raise DatasetError(f"{split_path(root, 'trainval')}: too few images ({len(image_ids)}) to carve a "
                           "validation split; add images or a val.txt")
    return [image_id for image_id in image_ids if image_id in chosen]


def _write(work: WorkDir, name: str, image_ids: list[str]) -> None:
    atomic_write_text(work.splits_folder / f"{name}.txt", "".join(f"{i}\n" for i in image_ids))


def resolve_training_splits(work: WorkDir, root: str | Path, fraction: float = VAL_FRACTION,
                            seed: int = 0) -> TrainingSplits:
    """The training splits of the dataset at ``root`` (module docstring); writes and records the
    work directory's split files when they are needed. ``DatasetError`` naming the folder when the
    dataset lists neither trainval.txt nor train.txt."""
    root = Path(root).expanduser().resolve()
    if not 0 < fraction < 1:
        raise DatasetError(f"val fraction {fraction}: must be between 0 and 1")
    written: dict[str, list[str]] = {}
    if _has(root, "val"):
        val_ids = read_split(root, "val")
        if _has(root, "train"):
            train, final, source = "train", "trainval", "train"
            if not _has(root, "trainval"):
                written["trainval"] = read_split(root, "train") + val_ids
        elif _has(root, "trainval"):
            train, final, source = "train", "trainval", "trainval"
            held = set(val_ids)
            written["train"] = [i for i in read_split(root, "trainval") if i not in held]
        else:
            raise DatasetError(f"{root / 'ImageSets' / 'Main'}: val.txt but neither train.txt nor trainval.txt; "
                               "list the training images in one of them")
        splits = TrainingSplits(train, "val", final, False, source, 0.0, seed, tuple(sorted(written)))
    else:
        source = "trainval" if _has(root, "trainval") else "train" if _has(root, "train") else None
        if source is None:
            raise DatasetError(f"{root / 'ImageSets' / 'Main'}: no trainval.txt or train.txt; list the "
                               "training images in one of them (VOC layout, README)")
        ids = read_split(root, source)
        val_ids = carve_validation(root, ids, fraction, seed)
        held = set(val_ids)
        written = {"train": [i for i in ids if i not in held], "val": val_ids}
        final = source
        if source == "train":  # the carved "train" now shadows the dataset's: keep the whole as trainval
            written["trainval"], final = ids, "trainval"
        splits = TrainingSplits("train", "val", final, True, source, float(fraction), seed,
                                tuple(sorted(written)))
    for stale in ("train", "val", "trainval"):  # files of an earlier dataset or rule must not shadow
        if stale not in written:
            (work.splits_folder / f"{stale}.txt").unlink(missing_ok=True)
    for name, ids in written.items():
        _write(work, name, ids)
    work.update_config(**{SPLITS_RECORD: {"data_root": str(root), **asdict(splits)}})
    return splits


def recorded_splits(work: WorkDir) -> TrainingSplits | None:
    """The splits ``sppdet train`` last resolved in ``work``, or None."""
    record = dict(work.config().get(SPLITS_RECORD, {}))
    if not record:
        return None
    record.pop("data_root", None)
    record["written"] = tuple(record.get("written", ()))
    return TrainingSplits(**record)
