"""Precision-recall plots of an evaluation: one PNG per class and one summary figure.

Matplotlib is used through its object API with the Agg canvas (no pyplot, no global state, no
display needed). Each class plot shows the ranked PR curve and the monotone precision envelope
that AP integrates; for ``voc07`` the 11 interpolated points are marked. The summary figure is a
bar chart of per-class AP with the mAP as a line; classes without positives are marked "n/a".
Files are written atomically as ``pr_<class>.png``; a class name is a dataset's text, so it is
made safe first (:func:`safe_file_stem`: only letters, digits, ``-`` and ``_``, plus a short hash of
the name when anything was replaced, so distinct names stay distinct files inside the folder), and
it is drawn with matplotlib's mathtext parsing off (a name like ``m$\\foo$`` is text, not TeX).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sppdet.evaluation.voc_ap import VOC07_THRESHOLDS, ClassResult, EvalResult
from sppdet.fileio import atomic_path, safe_file_stem

SUMMARY_NAME = "summary.png"
def _inside(folder: Path, file_name: str) -> Path:
    """``folder / file_name``, checked to stay directly inside ``folder``."""
    path = folder / file_name
    if path.resolve().parent != folder.resolve():
        raise ValueError(f"{file_name!r} would leave {folder}")  # cannot happen with safe_file_stem
    return path


def _save(figure: Figure, path: Path) -> None:
    FigureCanvasAgg(figure)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)


def _class_figure(result: ClassResult, metric: str) -> Figure:
    figure = Figure(figsize=(5, 4.5))
    axes = figure.add_subplot()
    ap = "n/a (no positives)" if math.isnan(result.ap) else f"{result.ap:.4f}"
    axes.set_title(f"{result.name}: AP {ap}\n{result.npos} positives, {result.ndet} detections",
                   fontsize=10, parse_math=False)
    if result.ndet and result.npos:
        recall = np.concatenate([[0.0], result.recall])
        precision = np.concatenate([[result.precision[0]], result.precision])
        envelope = np.maximum.accumulate(precision[::-1])[::-1]
        axes.plot(recall, precision, color="tab:blue", linewidth=1, label="ranked detections")
        axes.plot(recall, envelope, color="tab:orange", linewidth=1.5, label="precision envelope")
        if metric == "voc07":
            points = [np.max(result.precision[result.recall >= t], initial=0.0)
                      for t in VOC07_THRESHOLDS]
            axes.plot(VOC07_THRESHOLDS, points, "o", color="tab:red", markersize=4, label="11 points")
        axes.legend(loc="lower left", fontsize=8)
    else:
        axes.text(0.5, 0.5, "no detections" if result.npos else "no positives",
                  ha="center", va="center", transform=axes.transAxes)
    axes.set(xlim=(0, 1.01), ylim=(0, 1.01), xlabel="recall", ylabel="precision")
    axes.grid(alpha=0.3)
    return figure


def _summary_figure(result: EvalResult, title: str) -> Figure:
    names = [c.name for c in result.classes]
    aps = [0.0 if math.isnan(c.ap) else c.ap for c in result.classes]
    figure = Figure(figsize=(7, 1.2 + 0.3 * len(names)))
    axes = figure.add_subplot()
    positions = np.arange(len(names))
    axes.barh(positions, aps, color="tab:blue")
    for y, c in zip(positions, result.classes):
        label = "n/a" if math.isnan(c.ap) else f"{c.ap:.3f}"
        axes.text(min(aps[y], 0.88) + 0.01, y, label, va="center", fontsize=8)
    if not math.isnan(result.mAP):
        axes.axvline(result.mAP, color="tab:red", linestyle="--", label=f"mAP {result.mAP:.4f}")
        axes.legend(loc="lower right", fontsize=8)
    axes.set_yticks(positions, names, fontsize=8, parse_math=False)
    axes.invert_yaxis()
    axes.set(xlim=(0, 1), xlabel=f"AP ({result.metric}, IoU >= {result.iou_threshold:g})")
    axes.set_title(title, fontsize=10, parse_math=False)
    figure.tight_layout()
    return figure


def plot_results(result: EvalResult, folder: str | os.PathLike, title: str = "") -> list[Path]:
    """Write ``pr_<class>.png`` (:func:`safe_file_stem`) for each class and ``summary.png`` into
    ``folder``; returns the paths, class plots first."""
    folder = Path(folder)
    paths = []
    for class_result in result.classes:
        path = _inside(folder, f"pr_{safe_file_stem(class_result.name)}.png")
        _save(_class_figure(class_result, result.metric), path)
        paths.append(path)
    summary = folder / SUMMARY_NAME
    _save(_summary_figure(result, title or "VOC average precision per class"), summary)
    return paths + [summary]
