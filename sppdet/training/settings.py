"""The effective settings of ``sppdet train``, each with where it came from.

Precedence, lowest first: sppdet's defaults for ``train`` (:data:`TRAIN_DEFAULTS`, the stage
dataclasses of ``sppdet.config`` otherwise), the rules that follow the data (``sppdet.data.fit``,
read from the training split's annotations), a TOML file (``--config``), then command-line flags.
Every value carries its source ("default", "data: <rule>", "file <path>", "flag"), which
``--print-config`` and the final table show.

The TOML file's keys are the stages' options, as in ``sppdet.config`` (underscores)::

    augment = ["flip"]          # what the classes stay under: flip, rot90, channels
    val_fraction = 0.2          # share of trainval carved as val when there is no val.txt
    pretrain_minutes = 0        # a time budget: fewer epochs when the rule's would not fit (0: none)

    [propose]                   # ProposeConfig: max_side, min_size, max_proposals, mode
    [pretrain]                  # PretrainConfig: width, epochs, sizes, windows, ...
    [extract]                   # scales, target, precision ("auto", "float32", "bfloat16")
    [finetune]                  # FinetuneConfig: epochs, lr, ...
    [train-svm]                 # SvmConfig; layer, C and fc7_scale may be lists: candidates tried on val
    [train-bbox]                # BboxRegConfig
    [select]                    # tta = ["", "hflip"]: test-time view sets tried on val

Declared invariances (``augment``) decide which choices are even tried: pretraining crops are
augmented with them; object copies for the SVMs (``train-svm --augment-positives``) are tried as
every image of the object the declared invariances make: the mirror image with flip, the three
quarter turns with rot90, all seven turned and mirrored copies with both; test-time views are tried only when
the classes stay themselves under them (hflip needs flip; rot180 needs rot90; vflip needs both).
Default: flip, as for natural images.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sppdet.models.object_copies import check_augmentations
from sppdet.config import BboxRegConfig, FinetuneConfig, PretrainConfig, ProposeConfig, SvmConfig
from sppdet.data.voc import VocDataset
from sppdet.data.fit import fit_pretrain_epochs, fit_proposals, fit_scales, object_sizes
from sppdet.errors import ConfigError
from sppdet.models.features import target_for_crop_sizes
from sppdet.config import AUTO_PRECISION, PRECISIONS
from sppdet.training.splits import VAL_FRACTION, TrainingSplits
from sppdet.models.svm import LAYERS
from sppdet.ops.views import check_views

#: Defaults of ``sppdet train`` that differ from the single stages' (which keep the paper's):
#: random pretraining windows with object parts as background (no proposals needed, better on
#: the demo: docs/decisions.md), SVMs on pool5 and fc7 side by side at C 0.01 as the first candidate.
TRAIN_DEFAULTS = {
    "pretrain": {"windows": "random", "parts_per_object": 8},
    "train-svm": {"layer": "pool5+fc7", "C": 0.01},
}
#: Candidates tried on the validation split unless the file names others (``sppdet.pipelines.selection``).
LAYER_CANDIDATES = ("pool5+fc7", "pool5")
C_CANDIDATES = (0.01, 0.003, 0.03, 0.1)
#: fc7's weight beside pool5 (layer "pool5+fc7"), relative to equal mean norms: only equal norms
#: by default; 0.5 and 2 were never chosen on the val splits of four datasets (docs/decisions.md),
#: so they are tried only when a config file lists them (``[train-svm] fc7_scale = [1, 0.5, 2]``).
FC7_SCALE_CANDIDATES = (1.0,)
#: SvmConfig fields whose [train-svm] value may be a list: the candidates tried on val.
CANDIDATE_FIELDS = ("layer", "C", "fc7_scale")
STAGE_CONFIGS = {"propose": ProposeConfig, "pretrain": PretrainConfig, "finetune": FinetuneConfig,
                 "train-svm": SvmConfig, "train-bbox": BboxRegConfig}
EXTRACT_KEYS = ("scales", "target", "precision")
TOP_KEYS = ("augment", "val_fraction", "pretrain_minutes", "propose", "pretrain", "extract", "finetune", "train-svm",
            "train-bbox", "select")
#: Fields ``sppdet train`` sets itself (per run), never from a file.
RESERVED = {"pretrain": ("augment",), "train-svm": ("augment_positives",)}


@dataclass
class TrainSettings:
    """Everything ``sppdet train`` runs with. ``extract``: scales, target, precision;
    ``candidates``: the values tried on val (layer, C, augment_positives, tta); ``sources``:
    ``"section.key" -> source`` for every value a user might ask about."""

    data_root: Path
    augment: tuple[str, ...]
    val_fraction: float
    pretrain_minutes: float  # 0: no budget; else pretraining epochs are cut to fit (sppdet.pipelines.train)
    propose: ProposeConfig
    pretrain: PretrainConfig
    extract: dict
    finetune: FinetuneConfig
    svm: SvmConfig
    bbox: BboxRegConfig
    candidates: dict
    sources: dict = field(default_factory=dict)

    def rows(self) -> list[tuple[str, str, str]]:
        """(setting, value, source) rows for tables and ``--print-config``."""
        rows = [("data", str(self.data_root), self.sources.get("data", "flag")),
                ("augment", ",".join(self.augment) or "none", self.sources["augment"]),
                ("val_fraction", f"{self.val_fraction:g}", self.sources["val_fraction"]),
                ("pretrain_minutes", f"{self.pretrain_minutes:g}", self.sources["pretrain_minutes"])]
        for section, config in (("propose", self.propose), ("pretrain", self.pretrain),
                                ("finetune", self.finetune), ("train-svm", self.svm), ("train-bbox", self.bbox)):
            for f in dataclasses.fields(config):
                rows.append((f"{section}.{f.name}", _show(getattr(config, f.name)),
                             self.sources.get(f"{section}.{f.name}", "default")))
        for key in EXTRACT_KEYS:
            rows.append((f"extract.{key}", _show(self.extract[key]), self.sources[f"extract.{key}"]))
        for key, values in self.candidates.items():
            shown = " | ".join(_show(v) or "none" for v in values)
            rows.append((f"select.{key}", shown, self.sources.get(f"select.{key}", "default")))
        return rows


    def to_toml(self) -> str:
        """The settings as a TOML file ``--config`` accepts, each value's source as a comment
        (candidate lists as lists; the dataset is a comment: it is given with --data)."""
        lines = [f"# sppdet train --print-config; dataset {self.data_root}",
                 f"augment = {_toml(list(self.augment))}  # {self.sources['augment']}",
                 f"val_fraction = {_toml(self.val_fraction)}  # {self.sources['val_fraction']}",
                 f"pretrain_minutes = {_toml(self.pretrain_minutes)}  # {self.sources['pretrain_minutes']}"
                 " (0: no budget)"]
        sections = (("propose", self.propose), ("pretrain", self.pretrain), ("finetune", self.finetune),
                    ("train-svm", self.svm), ("train-bbox", self.bbox))
        for section, config in sections:
            lines += ["", f"[{section}]"]
            for f in dataclasses.fields(config):
                if f.name in RESERVED.get(section, ()):
                    continue
                value = getattr(config, f.name)
                if section == "train-svm" and f.name in CANDIDATE_FIELDS:
                    value = list(self.candidates[f.name])
                lines.append(f"{f.name} = {_toml(value)}  # {self.sources.get(f'{section}.{f.name}', 'default')}")
        lines += ["", "[extract]"]
        lines += [f"{key} = {_toml(self.extract[key])}  # {self.sources[f'extract.{key}']}" for key in EXTRACT_KEYS]
        lines += ["", "[select]"]
        for key in ("augment_positives", "tta"):
            values = [",".join(v) or "none" for v in self.candidates[key]]
            lines.append(f"{key} = {_toml(values)}  # {self.sources[f'select.{key}']}")
        return "\n".join(lines) + "\n"


def _toml(value: Any) -> str:
    """One TOML value: booleans, numbers, strings and (nested) lists."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _show(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    return str(value)


def read_config_file(path: str | Path) -> dict:
    """The TOML file's tables, checked against the known keys; ``ConfigError`` naming the file and
    the key for a syntax error or an unknown key."""
    path = Path(path)
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"--config {path}: cannot read it ({exc.strerror or exc})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--config {path}: not valid TOML ({exc})") from None
    for key, value in values.items():
        if key not in TOP_KEYS:
            raise ConfigError(f"--config {path}: unknown key {key!r}; known: {', '.join(TOP_KEYS)}")
        if key in STAGE_CONFIGS or key in ("extract", "select"):
            if not isinstance(value, dict):
                raise ConfigError(f"--config {path}: [{key}] must be a table")
            known = ({f.name for f in dataclasses.fields(STAGE_CONFIGS[key])} if key in STAGE_CONFIGS
                     else set(EXTRACT_KEYS) if key == "extract" else {"tta", "augment_positives"})
            for name in value:
                if name not in known or name in RESERVED.get(key, ()):
                    raise ConfigError(f"--config {path}: unknown key {name!r} in [{key}]; known: "
                                      f"{', '.join(sorted(known - set(RESERVED.get(key, ()))))}")
    return values


def _coerce(config_type, name: str, value: Any, where: str) -> Any:
    """``value`` from TOML as the dataclass field's type (lists become tuples)."""
    default = getattr(config_type(), name)
    if isinstance(default, tuple):
        if not isinstance(value, list):
            raise ConfigError(f"{where}: {name} must be a list")
        return tuple(value)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {name} must be true or false")
        return value
    if isinstance(default, (int, float)) and not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ConfigError(f"{where}: {name} must be a number")
    if isinstance(default, str) and not isinstance(value, str):
        raise ConfigError(f"{where}: {name} must be a string")
    return type(default)(value)


def _views_for(augment: tuple[str, ...]) -> list[tuple[str, ...]]:
    """The test-time view sets worth trying for classes invariant under ``augment``."""
    flip, turn = "flip" in augment, "rot90" in augment
    sets: list[tuple[str, ...]] = [()]
    if flip:
        sets.append(("hflip",))
    if turn:
        sets.append(("hflip", "rot180") if flip else ("rot180",))
    if flip and turn:
        sets.append(("hflip", "vflip", "rot180"))
    return sets


def _parse_views(text: str) -> tuple[str, ...]:
    return check_views([v.strip() for v in text.split(",") if v.strip() and v.strip() != "none"])


def resolve_train_settings(data_root: Path, train_dataset: VocDataset, splits: TrainingSplits,
                           file_values: dict | None = None, file_name: str = "",
                           augment: tuple[str, ...] | None = None,
                           val_fraction: float | None = None, pretrain_minutes: float | None = None) -> TrainSettings:
    """The settings of ``sppdet train`` on ``train_dataset`` (the training split, whose
    annotations the data rules read) in the order of precedence of the module docstring."""
    file_values = file_values or {}
    origin = f"file {file_name}" if file_name else "file"
    sources: dict[str, str] = {}

    def pick(key: str, flag: Any, default: Any) -> Any:
        if flag is not None:
            sources[key] = "flag"
            return flag
        if key in file_values:
            sources[key] = origin
            return file_values[key]
        sources[key] = "default"
        return default

    declared = check_augmentations(tuple(pick("augment", augment, ("flip",))))
    fraction = float(pick("val_fraction", val_fraction, VAL_FRACTION))
    budget = pick("pretrain_minutes", pretrain_minutes, 0.0)
    if not isinstance(budget, (int, float)) or isinstance(budget, bool) or budget < 0:
        raise ConfigError(f"{origin}: pretrain_minutes must be a number >= 0 (0: no budget)")
    sizes = object_sizes(train_dataset)
    max_side, min_size = fit_proposals(sizes)
    rules = {
        "propose": {"max_side": (max_side, "data: median image side, 10th-percentile object >= 16 px"),
                    "min_size": (min_size, "data: 3/4 of the 5th-percentile object side, <= 16")},
        "pretrain": {"epochs": (fit_pretrain_epochs(sizes), f"data: ~8,000 object crops ({sizes.objects} objects)"),
                     "augment": (declared, "augment (declared invariances)")},
    }
    configs = {}
    for section, config_type in STAGE_CONFIGS.items():
        values: dict[str, Any] = {}
        for name, value in TRAIN_DEFAULTS.get(section, {}).items():
            values[name] = value
            sources[f"{section}.{name}"] = "default (train)"
        for name, (value, why) in rules.get(section, {}).items():
            values[name] = value
            sources[f"{section}.{name}"] = why
        for name, value in file_values.get(section, {}).items():
            if section == "train-svm" and name in CANDIDATE_FIELDS:
                continue  # candidates, checked below
            values[name] = _coerce(config_type, name, value, f"{origin} [{section}]")
            sources[f"{section}.{name}"] = origin
        configs[section] = config_type(**values)
    extract_file = file_values.get("extract", {})
    target = extract_file.get("target")
    sources["extract.target"] = origin if target is not None else "trunk: 1.5 x its main (first) crop side"
    target = int(target) if target is not None else target_for_crop_sizes(configs["pretrain"].sizes)
    scales = extract_file.get("scales")
    sources["extract.scales"] = origin if scales is not None else f"data: objects of {splits.train} near {target} px"
    scales = tuple(int(s) for s in scales) if scales is not None else fit_scales(sizes, target)
    precision = extract_file.get("precision", AUTO_PRECISION)
    if precision not in (*PRECISIONS, AUTO_PRECISION):
        raise ConfigError(f"{origin} [extract]: precision {precision!r}; choose from "
                          f"{', '.join((*PRECISIONS, AUTO_PRECISION))}")
    sources["extract.precision"] = origin if "precision" in extract_file else "default: auto (the device's units)"

    svm_file, select_file = file_values.get("train-svm", {}), file_values.get("select", {})
    layers = _candidates(svm_file.get("layer"), LAYER_CANDIDATES, str)
    for layer in layers:
        if layer not in LAYERS:
            raise ConfigError(f"{origin} [train-svm]: layer {layer!r}; choose from {', '.join(LAYERS)}")
    cs = _candidates(svm_file.get("C"), C_CANDIDATES, float)
    if min(cs) <= 0:
        raise ConfigError(f"{origin} [train-svm]: C must be > 0")
    fc7_scales = _candidates(svm_file.get("fc7_scale"), FC7_SCALE_CANDIDATES, float)
    if min(fc7_scales) <= 0:
        raise ConfigError(f"{origin} [train-svm]: fc7_scale must be > 0")
    # one copies candidate: every copy the declared geometric invariances make (flip: the mirror
    # image; rot90: the 3 quarter turns; both: 7 copies, which scored above the 3 quarter turns on
    # the demo's val split, docs/decisions.md)
    geometric = tuple(a for a in ("flip", "rot90") if a in declared)
    copies = [()] + ([geometric] if geometric else [])
    if "augment_positives" in select_file:
        copies = [check_augmentations([a.strip() for a in text.split(",") if a.strip() and a != "none"])
                  for text in select_file["augment_positives"]]
    tta = _views_for(declared)
    if "tta" in select_file:
        tta = [_parse_views(text) for text in select_file["tta"]]
    for key in CANDIDATE_FIELDS:
        sources[f"select.{key}"] = origin if key in svm_file else "default"
    sources["select.augment_positives"] = origin if "augment_positives" in select_file else "augment (geometric part)"
    sources["select.tta"] = origin if "tta" in select_file else "augment (views the classes survive)"
    svm = dataclasses.replace(configs["train-svm"], layer=layers[0], C=cs[0], fc7_scale=fc7_scales[0])
    for key in CANDIDATE_FIELDS:
        sources[f"train-svm.{key}"] = "chosen on val (first candidate shown)"
    return TrainSettings(data_root=data_root, augment=declared, val_fraction=fraction, pretrain_minutes=float(budget),
                         propose=configs["propose"], pretrain=configs["pretrain"],
                         extract={"scales": scales, "target": target, "precision": precision},
                         finetune=configs["finetune"], svm=svm, bbox=configs["train-bbox"],
                         candidates={"layer": layers, "C": cs, "fc7_scale": fc7_scales, "augment_positives": copies,
                                     "tta": tta},
                         sources=sources)


def _candidates(value: Any, default: tuple, kind) -> list:
    """A file value that is one value or a list of them, as a non-empty list (``default`` if None)."""
    if value is None:
        return list(default)
    values = value if isinstance(value, list) else [value]
    if not values:
        raise ConfigError(f"an empty candidate list; give at least one value (default: {default})")
    try:
        return [kind(v) for v in values]
    except (TypeError, ValueError):
        raise ConfigError(f"candidates {values!r}: expected {kind.__name__} values") from None
