"""Typed views of what earlier stages recorded in a work directory's ``config.json``.

A later stage takes its defaults from these records (the trunk that ``sppdet pretrain`` trained,
the settings ``sppdet extract`` used, the choices ``sppdet train`` made on the validation split)
instead of from its own hard-coded defaults, so a chain typed without flags stays consistent: the
records are the one place that says which trunk, scales and views belong together.

Every function here only reads; the stages write their records (``WorkDir.record_stage``).
"""

from __future__ import annotations

from dataclasses import dataclass
import os
from pathlib import Path

from sppdet.config import ProposeConfig
from sppdet.errors import WorkdirError
from sppdet.workdir.store import WorkDir

#: what ``extract`` builds when no trunk is recorded and no flag says otherwise
DEFAULT_BACKBONE = "zf5"
DEFAULT_WIDTH = 1.0

#: config.json record of the trunk fine-tuned by ``finetune --train-conv`` (sppdet.stages.finetune)
TUNED_TRUNK_RECORD = "trunk"
PRETRAIN_RECORD = "pretrain"
PROPOSE_RECORD = "propose"
EXTRACT_RECORD = "extract"
FINETUNE_RECORD = "finetune"
SVM_RECORD = "train-svm"
BBOX_RECORD = "train-bbox"
SELECTION_RECORD = "selection"


@dataclass(frozen=True)
class TrunkRecord:
    """A conv trunk sppdet trained in the work directory: ``weights`` (absolute path), its
    backbone and width, the crop sides it was pretrained on, the split it learned from, which
    command made it (``"pretrain"`` or ``"finetune --train-conv"``), and whether it runs with
    zf5's LRN layers (``lrn``: False for a trunk pretrained with batch norm, which trains without
    them; ``sppdet.models.backbones.build_backbone``)."""

    weights: Path
    backbone: str
    width: float
    crop_sizes: tuple[int, ...]
    split: str | None
    made_by: str
    lrn: bool = True


def pretrained_with_lrn(pretrain_record: dict) -> bool:
    """Whether the trunk of a ``pretrain`` record has zf5's LRN layers: its ``lrn`` entry, or for a
    record written before there was one, whether it trained without batch norm (with batch norm,
    ``sppdet.training.pretrain`` leaves the LRN layers out)."""
    if "lrn" in pretrain_record:
        return bool(pretrain_record["lrn"])
    return not bool(pretrain_record.get("config", {}).get("batch_norm", True))


def _stages(work: WorkDir) -> dict:
    return work.config().get("stages", {})


def trained_trunks(work: WorkDir) -> list[TrunkRecord]:
    """The trunks sppdet trained in ``work``, newest first: the ``finetune --train-conv`` trunk if
    it was fine-tuned from the current pretrained one, then the pretrained trunk (whether or not
    their weights files still exist: the stages that load them say so)."""
    stages = _stages(work)
    pretrain, tuned = stages.get(PRETRAIN_RECORD, {}), stages.get(TUNED_TRUNK_RECORD, {})
    sizes = tuple(int(s) for s in pretrain.get("config", {}).get("sizes", ()))
    found = []
    pretrained_lrn = pretrained_with_lrn(pretrain)
    if tuned.get("weights") and tuned.get("after_pretrain") == pretrain.get("weights"):
        found.append((tuned, "finetune --train-conv", bool(tuned.get("lrn", pretrained_lrn))))
    if pretrain.get("weights"):
        found.append((pretrain, "pretrain", pretrained_lrn))
    records = []
    for record, made_by, lrn in found:
        path = work.root / record["weights"]  # an absolute recorded path stays as it is
        records.append(TrunkRecord(weights=path, backbone=str(record.get("backbone", "zf5")),
                                   width=float(record.get("width", 1.0)), crop_sizes=sizes,
                                   split=pretrain.get("split"), made_by=made_by, lrn=lrn))
    return records


def trained_trunk(work: WorkDir) -> TrunkRecord | None:
    """The newest trunk sppdet trained in ``work`` (:func:`trained_trunks`), or None."""
    trunks = trained_trunks(work)
    return trunks[0] if trunks else None


def extract_record(work: WorkDir) -> dict | None:
    """The last ``sppdet extract`` record (folder, config, geometry, weights source), or None."""
    return _stages(work).get(EXTRACT_RECORD) or None


def selection_record(work: WorkDir) -> dict | None:
    """The choices ``sppdet train`` made on the validation split (``sppdet.pipelines.selection``), or None."""
    return _stages(work).get(SELECTION_RECORD) or None


def recorded_views(work: WorkDir) -> tuple[str, ...]:
    """The test-time views ``sppdet train`` chose on the validation split (empty if none or no
    selection was made); ``eval`` and ``detect`` use them unless ``--tta`` is given."""
    record = selection_record(work)
    return tuple(record.get("chosen", {}).get("tta", ())) if record else ()


def resolve_weights(workdir: WorkDir, weights: str | os.PathLike | None, backbone: str,
                    width: float) -> str:
    """``weights`` if given; else the fine-tuned, then the pretrained trunk recorded for this
    backbone and width (``sppdet.stages.extract``'s module docstring); else ``"none"``."""
    if weights is not None:
        return str(weights)
    for trunk in trained_trunks(workdir):
        if trunk.backbone == backbone and trunk.width == width:
            return str(trunk.weights)
    return "none"


def trunk_of_weights(workdir: WorkDir, weights: str | os.PathLike) -> TrunkRecord | None:
    """The record of the trunk sppdet trained whose file ``weights`` is (:func:`trained_trunks`),
    or None for any other file and for ``"none"`` / ``"imagenet"``."""
    if str(weights) in ("none", "imagenet"):
        return None
    return next((trunk for trunk in trained_trunks(workdir)
                 if Path(weights).resolve() == trunk.weights.resolve()), None)


def trunk_has_lrn(workdir: WorkDir, weights: str | os.PathLike) -> bool:
    """Whether ``weights`` run with zf5's LRN layers: a trunk sppdet trained says so in its record
    (:class:`TrunkRecord`); any other file, ImageNet or random weights keep the architecture's."""
    trunk = trunk_of_weights(workdir, weights)
    return True if trunk is None else trunk.lrn


def recorded_propose_config(workdir: WorkDir) -> ProposeConfig:
    """The ``ProposeConfig`` of the work directory's last ``propose`` run."""
    record = _stages(workdir).get(PROPOSE_RECORD)
    try:
        return ProposeConfig(**record["config"])
    except (TypeError, KeyError):
        raise WorkdirError(f"{workdir.config_path}: no usable propose record; run sppdet propose "
                           "(then extract, finetune, train-svm, train-bbox) again") from None
