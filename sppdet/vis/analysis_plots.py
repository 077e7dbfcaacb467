"""Files of an error analysis (``sppdet.evaluation.analysis``): what a user looks at to see why AP is low.

Written into the output folder by :func:`write_analysis` (all computed and drawn first, then each file
written atomically, so an unreadable image leaves the folder as it was):

    analysis.json            settings, per class npos / confident cut / F1 / false-positive counts,
                             the confusion matrix and the worst images with their error counts
    confusion_matrix.csv     the counts: rows ground truth (+ duplicate, background), columns detected (+ missed)
    confusion_matrix.png     the same, each cell coloured by its share of the row, counts written in
    false_positives.png      per class, the shares of localisation / duplicate / confusion / background
                             errors among its top-ranked false positives (Hoiem et al. 2012)
    worst_<rank>_<image>.png the ``top`` images with the most errors (image ids made safe file names)

Worst images: ground-truth objects are dashed boxes labelled below, cyan when found, yellow when found
only as another class (``cat as dog``), red when missed, grey when difficult; confident detections are
solid boxes labelled above with class and score, green when correct, orange for a confusion, magenta for a
duplicate, red for background, grey when ignored (on a difficult object), the outcome written after the
score. A black bar above the image names it and counts its errors. Line width and text size follow
``sppdet.vis.draw``. Figures use matplotlib's Agg canvas without pyplot, with mathtext off for class names.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import cv2
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sppdet.data.images import load_bgr, to_bgr8
from sppdet.data.voc import Annotation
from sppdet.errors import ConfigError, DatasetError
from sppdet.evaluation.analysis import (BACKGROUND, CONFUSED, CONFUSION, CORRECT, DIFFICULT, DUPLICATE,
                                        FOUND, FP_TYPES, IGNORED, IMAGE_ERRORS, MISSED, OUTCOMES, ErrorAnalysis,
                                        analyze_errors, write_analysis_files)
from sppdet.evaluation.voc_ap import Detections
from sppdet.fileio import atomic_write_bytes, safe_file_stem
from sppdet.vis.draw import FONT, box_pixels, dashed_rectangle, line_thickness, text_colour

CONFUSION_PNG = "confusion_matrix.png"
FALSE_POSITIVES_PNG = "false_positives.png"
DEFAULT_TOP = 8

#: BGR colours of confident detections by outcome (solid boxes)
DETECTION_COLOURS = {CORRECT: (0, 170, 0), CONFUSION: (0, 140, 255), DUPLICATE: (200, 0, 200),
                     BACKGROUND: (0, 0, 220), IGNORED: (150, 150, 150)}
#: BGR colours of ground-truth objects by outcome (dashed boxes)
OBJECT_COLOURS = {FOUND: (255, 220, 0), CONFUSED: (0, 230, 255), MISSED: (0, 0, 255), DIFFICULT: (200, 200, 200)}
#: matplotlib colours of the false-positive types, in ``FP_TYPES`` order
FP_COLOURS = ("tab:blue", "tab:purple", "tab:orange", "tab:red")


@dataclass(frozen=True)
class AnalysisReport:
    """What :func:`write_analysis` computed and the files it wrote (``worst_images``: the drawn ones, worst first)."""

    analysis: ErrorAnalysis
    paths: tuple[Path, ...]
    worst_images: tuple[Path, ...]


def _tag(canvas: np.ndarray, text: str, left: int, edge: int, colour, scale: float, thickness: int,
         above: bool) -> None:
    """``text`` on a filled ``colour`` rectangle just above (or below) row ``edge``, kept inside the image."""
    height, width = canvas.shape[:2]
    (text_w, text_h), baseline = cv2.getTextSize(text, FONT, scale, thickness)
    pad = max(1, thickness)
    box_h, box_w = text_h + baseline + 2 * pad, text_w + 2 * pad
    top = edge - box_h if above else edge + 1
    top = max(0, min(top, height - box_h))
    left = max(0, min(left, width - box_w))
    cv2.rectangle(canvas, (left, top), (left + box_w - 1, top + box_h - 1), colour, cv2.FILLED)
    cv2.putText(canvas, text, (left + pad, top + pad + text_h), FONT, scale, text_colour(colour), thickness,
                cv2.LINE_AA)


def draw_analysis_image(image: np.ndarray, analysis: ErrorAnalysis, index: int) -> np.ndarray:
    """Image ``analysis.image_ids[index]`` with its objects and confident detections drawn as in the module
    docstring, under a bar naming it and its errors.

    ``image``: the image as uint8 BGR ``[H, W, 3]`` (other depths and channel counts are converted).
    Returns uint8 BGR ``[H + bar, W, 3]``; the input is not modified.
    """
    canvas = to_bgr8(image).copy()
    height, width = canvas.shape[:2]
    thickness = line_thickness(height, width)
    scale = max(0.35, 0.0005 * (height + width))
    text_thickness = max(1, thickness // 2)
    names = analysis.classes

    objects = np.flatnonzero(analysis.object_image == index)
    object_pixels = box_pixels(analysis.object_boxes[objects], height, width)
    for g, (x1, y1, x2, y2) in zip(objects.tolist(), object_pixels.tolist()):
        dashed_rectangle(canvas, (x1, y1, x2, y2), OBJECT_COLOURS[int(analysis.object_outcome[g])], thickness,
                         dash=max(4, 3 * thickness))
    dets = np.flatnonzero(analysis.detection_image == index)[::-1]  # lowest score first: the best on top
    det_pixels = box_pixels(analysis.detection_boxes[dets], height, width)
    for d, (x1, y1, x2, y2) in zip(dets.tolist(), det_pixels.tolist()):
        cv2.rectangle(canvas, (x1, y1), (x2, y2), DETECTION_COLOURS[int(analysis.detection_outcome[d])], thickness)

    for g, (x1, _, _, y2) in zip(objects.tolist(), object_pixels.tolist()):
        outcome = int(analysis.object_outcome[g])
        name = names[analysis.object_labels[g] - 1]
        text = {FOUND: f"gt {name}", MISSED: f"missed {name}", DIFFICULT: f"difficult {name}",
                CONFUSED: f"{name} as {names[analysis.object_detected_as[g] - 1]}"}[outcome]
        _tag(canvas, text, x1, y2, OBJECT_COLOURS[outcome], scale, text_thickness, above=False)
    for d, (x1, y1, _, _) in zip(dets.tolist(), det_pixels.tolist()):
        outcome = int(analysis.detection_outcome[d])
        text = f"{names[analysis.detection_labels[d] - 1]} {analysis.detection_scores[d]:.2f}"
        text += "" if outcome == CORRECT else f" {OUTCOMES[outcome]}"
        _tag(canvas, text, x1, y1, DETECTION_COLOURS[outcome], scale, text_thickness, above=True)

    counts = analysis.image_counts[index]
    summary = ", ".join(f"{n} {kind}" for kind, n in zip(IMAGE_ERRORS, counts.tolist()) if n)
    title = f"{analysis.image_ids[index]}: {int(counts.sum())} errors" + (f" ({summary})" if summary else "")
    (text_w, _), _ = cv2.getTextSize(title, FONT, scale, text_thickness)
    scale = max(0.3, min(scale, scale * (width - 4 * text_thickness) / text_w))  # fit narrow images if it can
    (_, text_h), baseline = cv2.getTextSize(title, FONT, scale, text_thickness)
    bar = np.zeros((text_h + baseline + 4 * text_thickness + 4, width, 3), np.uint8)
    cv2.putText(bar, title, (2 * text_thickness, 2 * text_thickness + 2 + text_h), FONT, scale,
                (255, 255, 255), text_thickness, cv2.LINE_AA)
    return np.concatenate([bar, canvas], axis=0)


def confusion_figure(analysis: ErrorAnalysis) -> Figure:
    """The confusion matrix: cells coloured by their share of the row, non-zero counts written in."""
    counts = analysis.confusion
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    k = len(analysis.classes)
    side = 2.5 + 0.4 * (k + 2)
    figure = Figure(figsize=(side + 1.0, side))
    axes = figure.add_subplot()
    image = axes.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    for (row, column), n in np.ndenumerate(counts):
        if n:
            axes.text(column, row, str(n), ha="center", va="center", fontsize=7,
                      color="white" if shares[row, column] > 0.6 else "black")
    axes.axhline(k - 0.5, color="black", linewidth=1)
    axes.axvline(k - 0.5, color="black", linewidth=1)
    axes.set_xticks(np.arange(k + 1), analysis.column_names, rotation=90, fontsize=8, parse_math=False)
    axes.set_yticks(np.arange(k + 2), analysis.row_names, fontsize=8, parse_math=False)
    axes.set_xlabel("detected as")
    axes.set_ylabel("ground truth")
    rule = "best-F1 cut per class" if analysis.score_threshold is None else f"score >= {analysis.score_threshold:g}"
    axes.set_title(f"confident detections ({rule}), IoU >= {analysis.iou_threshold:g}", fontsize=9)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="share of the row")
    figure.tight_layout()
    return figure


def false_positive_figure(analysis: ErrorAnalysis) -> Figure:
    """Per class, stacked shares of each false-positive type among its top-ranked false positives."""
    breakdown = analysis.false_positives
    figure = Figure(figsize=(8, 1.8 + 0.3 * len(breakdown)), layout="constrained")
    axes = figure.add_subplot()
    positions = np.arange(len(breakdown))
    counts = np.array([b.counts for b in breakdown], np.float64).reshape(-1, len(FP_TYPES))
    totals = counts.sum(axis=1)
    shares = np.divide(counts, totals[:, None], out=np.zeros(counts.shape), where=totals[:, None] > 0)
    left = np.zeros(len(breakdown))
    for t, (kind, colour) in enumerate(zip(FP_TYPES, FP_COLOURS)):
        axes.barh(positions, shares[:, t], left=left, color=colour, label=kind)
        left += shares[:, t]
    labels = [f"{int(total)} FP in top {b.considered}" if b.considered else "no positives or detections"
              for total, b in zip(totals, breakdown)]
    axes.set_yticks(positions, [b.name for b in breakdown], fontsize=8, parse_math=False)
    axes.invert_yaxis()
    right = axes.secondary_yaxis("right")
    right.set_yticks(positions, labels, fontsize=8)
    axes.set(xlim=(0, 1), xlabel="share of the false positives among each class's top N = npos detections")
    figure.legend(loc="outside lower center", ncol=len(FP_TYPES), fontsize=8, frameon=False)
    axes.set_title(f"top-ranked false positives (IoU >= {analysis.iou_threshold:g})", fontsize=10)
    return figure


def _png(figure: Figure) -> bytes:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def write_analysis(out_dir: str | os.PathLike, annotations: Iterable[Annotation], detections: Detections,
                   classes: Sequence[str], image_path_of: Callable[[str], str | os.PathLike] | None,
                   iou_threshold: float = 0.5, top: int = DEFAULT_TOP,
                   score_threshold: float | None = None) -> AnalysisReport:
    """Analyse ``detections`` against ``annotations`` (``sppdet.evaluation.analysis.analyze_errors``) and
    write the files of the module docstring into ``out_dir``.

    ``classes[k - 1]`` names label k; ``image_path_of(image_id)`` gives an image's file (e.g.
    ``VocDataset.image_path``), or None to draw no images; ``top`` worst images are drawn and listed in
    the JSON; ``score_threshold`` as in ``analyze_errors``. ``DatasetError`` naming the image when one
    cannot be read, before anything is written.
    """
    if top < 0:
        raise ConfigError(f"top {top}: expected the number of worst images to draw, 0 or more")
    analysis = analyze_errors(annotations, detections, classes, iou_threshold, score_threshold)
    out_dir = Path(out_dir)
    drawn: dict[Path, bytes] = {}
    if image_path_of is not None:
        for rank, m in enumerate(analysis.worst_images(top).tolist(), start=1):
            image_id = analysis.image_ids[m]
            canvas = draw_analysis_image(load_bgr(image_path_of(image_id)), analysis, m)
            ok, data = cv2.imencode(".png", canvas)
            if not ok:
                raise DatasetError(f"{image_id}: OpenCV cannot encode the drawn image as PNG")
            drawn[out_dir / f"worst_{rank:02d}_{safe_file_stem(image_id)}.png"] = data.tobytes()
    figures = {out_dir / CONFUSION_PNG: _png(confusion_figure(analysis)),
               out_dir / FALSE_POSITIVES_PNG: _png(false_positive_figure(analysis))}
    paths = write_analysis_files(out_dir, analysis, top)
    for path, data in {**figures, **drawn}.items():
        atomic_write_bytes(path, data)
    return AnalysisReport(analysis, tuple(paths) + tuple(figures) + tuple(drawn), tuple(drawn))
