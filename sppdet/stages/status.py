"""What a work directory holds: which stages are done, with what settings, and what to run next.

Read-only: every line comes from ``config.json``'s records and the ``stage.json`` of each
recorded folder (which names the split a model was trained on). A record whose folder is gone
counts as not done.
"""

from __future__ import annotations

from dataclasses import dataclass

from sppdet.fileio import read_json

from sppdet.workdir.store import WorkDir

#: (record, how to run it) in chain order; the first one not done is what to run next.
CHAIN = (
    ("propose", "sppdet propose --data DATASET --split trainval (or: sppdet train --data DATASET)"),
    ("pretrain", "sppdet pretrain (or: sppdet train)"),
    ("extract", "sppdet extract --split trainval (or: sppdet train)"),
    ("finetune", "sppdet finetune (or: sppdet train)"),
    ("train-svm", "sppdet train-svm (or: sppdet train)"),
    ("train-bbox", "sppdet train-bbox (or: sppdet train)"),
)
#: Settings worth a glance, per record (the full config is in config.json).
SHOWN = {
    "propose": ("mode", "max_side", "min_size", "max_proposals"),
    "pretrain": ("backbone", "width", "epochs", "sizes", "windows", "augment"),
    "extract": ("backbone", "width", "scales", "target", "precision"),
    "finetune": ("epochs", "lr", "train_conv"),
    "train-svm": ("layer", "C", "fc7_scale", "augment_positives", "extra_positives"),
    "train-bbox": ("min_overlap", "ridge_lambda"),
}


@dataclass(frozen=True)
class StageState:
    """One stage: done or not, its folder, the split it ran on (when known), key settings."""

    name: str
    done: bool
    folder: str
    split: str
    settings: str


@dataclass(frozen=True)
class WorkStatus:
    """The whole work directory: its dataset, each stage, the val choices, the next command."""

    root: str
    data_root: str
    stages: list[StageState]
    selection: str
    next_step: str


def _value(value) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "none"
    return f"{value:g}" if isinstance(value, float) else str(value)


def work_status(work: WorkDir) -> WorkStatus:
    """The :class:`WorkStatus` of ``work`` (an empty or missing folder gives every stage not done)."""
    config = work.config() if work.config_path.is_file() else {}
    records = config.get("stages", {})
    states = []
    for name, _ in CHAIN:
        record = records.get(name) or {}
        folder = record.get("folder", "")
        done = bool(folder) and (work.root / folder).is_dir()
        settings, split = "", ""
        if done:
            values = dict(record.get("config", {}))
            values.update({k: record[k] for k in ("backbone", "width") if k in record and name == "pretrain"})
            settings = ", ".join(f"{key} {_value(values[key])}" for key in SHOWN[name] if key in values)
            manifest = work.root / folder / "stage.json"
            if manifest.is_file():
                split = str(read_json(manifest).get("inputs", {}).get("split", ""))
            split = split or str(record.get("split", ""))
        states.append(StageState(name, done, folder, split, settings))
    selection = records.get("selection")
    chosen = ""
    if selection:
        c = selection["chosen"]
        chosen = (f"val mAP {selection['val_map']:.4f} on {selection['val_split']} (models of "
                  f"{selection['train_split']}): layer {c['layer']}, C {_value(c['C'])}, copies "
                  f"{_value(c['augment_positives'])}, views {_value(c['tta'])}; refit on {selection['final_split']}")
    missing = [command for (name, command), state in zip(CHAIN, states) if not state.done]
    next_step = missing[0] if missing else "sppdet eval --split test, or sppdet detect IMAGES --out FOLDER"
    return WorkStatus(str(work.root), str(config.get("data_root", "")), states, chosen, next_step)
