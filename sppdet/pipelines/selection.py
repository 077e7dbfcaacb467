"""Choosing the SVM settings and test-time views on the validation split (``sppdet train``).

Every candidate is trained on the training split (``sppdet.stages.train_svm.run_train_svm``, cached by
its settings like any stage) and scored by the VOC07 mAP of the whole detector on the
validation split, with the box regressors trained on the training split. The search is greedy,
one setting at a time, in this order: C (every candidate mined in one pass over the images,
``sppdet.stages.train_svm.train_svm_variants``), the SVM layer, fc7's weight beside pool5 (when the
layer is "pool5+fc7" and a config file lists weights to try), the object copies as extra positives,
then the test-time views (which need no training). A candidate replaces the current choice
only if its val mAP is higher by more than ``MIN_GAIN``: the first candidate of each list is
the default, kept on a tie. The test split is never read here.

Scores are cached in ``WORKDIR/selection-scores.json`` under the identity of what was scored
(the SVM and regressor folders, the views and the val split's content digest: its image ids,
annotations and images, ``VocDataset.content_digest``), so a re-run of
``sppdet train`` does not recompute them; within a run, the val windows each candidate scores are
pooled once, and so are the training split's windows that every candidate's miner reads
(``sppdet.workdir.window_source.PooledMemo``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Sequence


from sppdet.config import DetectConfig, SvmConfig
from sppdet.data.voc import discover_classes
from sppdet.workdir.trained import detect_split
from sppdet.evaluation.voc_ap import evaluate, load_ground_truth
from sppdet.parallel import ProgressFactory
from sppdet.fileio import atomic_write_json, read_json
from sppdet.workdir.store import WorkDir
from sppdet.stages.train_svm import run_train_svm, train_svm_variants
from sppdet.workdir.window_source import PooledMemo, WindowSource

MIN_GAIN = 0.002
SCORES_FILE = "selection-scores.json"
#: Memory for pooled windows kept across candidates (``PooledMemo``; at most a quarter of RAM).
POOLED_MEMO_BYTES = 3e9


@dataclass(frozen=True)
class Trial:
    """One scored candidate: the setting tried (``what``: layer, C, augment_positives or tta),
    its value, the val mAP, and whether it became the choice."""

    what: str
    value: str
    val_map: float
    kept: bool


@dataclass(frozen=True)
class Selection:
    """The outcome: the chosen SVM config and views, their val mAP, and every trial."""

    svm: SvmConfig
    tta: tuple[str, ...]
    val_map: float
    trials: list[Trial]

    def describe(self) -> str:
        """One line: the chosen layer, C, copies and views."""
        return f"{_label(self.svm)}, views {','.join(self.tta) or 'none'}"


class ValScorer:
    """The val mAP of the work directory's current detector with given views (cached); ``memo``
    keeps the val windows pooled for the next candidate."""

    def __init__(self, work: WorkDir, val_split: str, progress_bar: ProgressFactory, memo: PooledMemo | None = None):
        self.work, self.split, self.progress_bar = work, val_split, progress_bar
        self.windows = WindowSource(work, val_split, memo=memo)
        root = work.data_root()
        self.ground_truth = load_ground_truth(root, val_split, split_dir=work.split_dir(root))
        self.classes = discover_classes(root)
        # the val split's content (ids, annotations, images), so a changed val set is scored again
        self.ids_hash = self.windows.dataset.content_digest()[:12]
        self.path = work.root / SCORES_FILE
        self.cache = read_json(self.path) if self.path.is_file() else {}

    def score(self, tta: Sequence[str] = ()) -> float:
        """VOC07 mAP on val of the recorded SVMs and regressors with views ``tta``."""
        stages = self.work.config()["stages"]
        key = "|".join([stages["train-svm"]["folder"], stages.get("train-bbox", {}).get("folder", "-"),
                        ",".join(tta), self.ids_hash])
        if key not in self.cache:
            with self.progress_bar(len(self.ground_truth), f"score on {self.split}") as advance:
                detections = detect_split(self.work, self.split, DetectConfig(tta=tuple(tta)), progress=advance,
                                          source=self.windows)
            self.cache[key] = float(evaluate(self.ground_truth, detections, self.classes).mAP)
            atomic_write_json(self.path, self.cache)
        return self.cache[key]


def select_settings(work: WorkDir, train_split: str, base: SvmConfig, candidates: dict,
                    scorer: ValScorer, progress_bar: ProgressFactory,
                    log: Callable[[str], None] = lambda line: None, memo: PooledMemo | None = None) -> Selection:
    """Greedy choice of C, the layer, the object copies and the views (module docstring);
    ``memo`` keeps the training split's pooled windows from one candidate to the next."""
    trials: list[Trial] = []

    def train(config: SvmConfig) -> None:
        with progress_bar(2 * split_size(work, train_split), f"train-svm {_label(config)}") as advance:
            run_train_svm(work, train_split, config, progress=advance, memo=memo)

    current = dataclasses.replace(base, layer=candidates["layer"][0], C=candidates["C"][0],
                                  fc7_scale=candidates.get("fc7_scale", [base.fc7_scale])[0],
                                  augment_positives=tuple(candidates["augment_positives"][0]))
    variants = [dataclasses.replace(current, C=c) for c in candidates["C"]]
    every_c = ", ".join(map(_value, candidates["C"]))
    with progress_bar(2 * split_size(work, train_split), f"train-svm C {every_c}") as advance:
        train_svm_variants(work, WindowSource(work, train_split, memo=memo), variants, advance)  # one pass for every C
    train(current)
    best = scorer.score()
    trials.append(Trial("start", _label(current), best, True))
    log(f"val mAP {best:.4f}: {_label(current)}")
    for what, values in (("C", candidates["C"][1:]), ("layer", candidates["layer"][1:]),
                         ("fc7_scale", candidates.get("fc7_scale", [1.0])[1:]),
                         ("augment_positives", candidates["augment_positives"][1:])):
        chosen = current
        if what == "fc7_scale" and current.layer != "pool5+fc7":
            continue  # fc7's weight beside pool5 only means something there
        for value in values:
            trial = dataclasses.replace(current, **{what: tuple(value) if what == "augment_positives" else value})
            train(trial)
            score = scorer.score()
            kept = score > best + MIN_GAIN
            log(f"val mAP {score:.4f}: {what} {_value(value)}" + (" (better)" if kept else ""))
            if kept:
                best, chosen = score, trial
            trials.append(Trial(what, _value(value), score, kept))
        current = chosen
    train(current)  # the recorded SVMs are the chosen ones again
    views: tuple[str, ...] = tuple(candidates["tta"][0])
    if views:
        best = scorer.score(views)
    for value in candidates["tta"][1:]:
        score = scorer.score(value)
        kept = score > best + MIN_GAIN
        log(f"val mAP {score:.4f}: tta {_value(value) or 'none'}" + (" (better)" if kept else ""))
        if kept:
            best, views = score, tuple(value)
        trials.append(Trial("tta", _value(value) or "none", score, kept))
    return Selection(svm=current, tta=views, val_map=best, trials=trials)


def split_size(work: WorkDir, split: str) -> int:
    """Images in ``split`` of the work directory's dataset (progress totals)."""
    return len(WindowSource(work, split).image_ids)


def _value(value) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _label(config: SvmConfig) -> str:
    copies = ",".join(config.augment_positives) or "none"
    weighted = config.layer == "pool5+fc7" and config.fc7_scale != 1
    layer = config.layer + (f" (fc7 x{config.fc7_scale:g})" if weighted else "")
    return f"layer {layer}, C {config.C:g}, copies {copies}"
