"""``sppdet eval``: VOC AP per class for a split, of the trained detector or of saved detections."""

from __future__ import annotations

import math
from pathlib import Path

import click
from rich.table import Table

from cli.common import (data_option, library_errors, method_option, plain, progress_bar, quiet_option,
                        split_option, stderr_console, stdout_console, tta_option, workdir_option)
from sppdet.config import DetectConfig
from sppdet.data.voc import discover_classes, read_split
from sppdet.evaluation.voc_ap import METRICS, EvalResult, evaluate, load_ground_truth
from sppdet.evaluation.results_io import read_detections, write_devkit_results, write_summary_json
from sppdet.workdir.methods import DEFAULT_METHOD
from sppdet.workdir.records import recorded_views
from sppdet.workdir.store import WorkDir


def _table(result: EvalResult, split: str) -> Table:
    table = Table(title=f"VOC AP ({result.metric}, IoU >= {result.iou_threshold:g}) on {plain(split)}")
    table.add_column("class")
    table.add_column("AP", justify="right")
    table.add_column("positives", justify="right")
    table.add_column("detections", justify="right")
    for c in result.classes:
        table.add_row(plain(c.name), "n/a" if math.isnan(c.ap) else f"{c.ap:.4f}", str(c.npos), str(c.ndet))
    table.add_section()
    table.add_row("mAP", "n/a" if math.isnan(result.mAP) else f"{result.mAP:.4f}", "", "")
    return table


@click.command("eval")
@workdir_option
@data_option
@split_option("test")
@click.option("--metric", type=click.Choice(METRICS), default="voc07", show_default=True,
              help="voc07: 11-point interpolated AP (VOC2007); area: area under the precision "
                   "envelope (VOC2010+).")
@click.option("--iou", "iou_threshold", type=click.FloatRange(0.0, 1.0), default=0.5,
              show_default=True, help="A detection is a hit if its IoU is >= this.")
@click.option("--detections", "detections_path", type=click.Path(exists=True), default=None,
              help="Score saved detections instead of the work directory's detector: a folder of "
                   "comp4_det_<split>_<class>.txt devkit results files or a COCO-style .json file.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the summary (metric, iou, split, mAP, per-class ap/npos/ndet) here.")
@click.option("--plots", "plots_dir", type=click.Path(file_okay=False), default=None,
              help="Write one precision-recall curve PNG per class and a summary figure here.")
@click.option("--bbox-reg/--no-bbox-reg", default=True, show_default=True,
              help="Refine the scored windows with the trained box regressors (when train-bbox "
                   "ran); --no-bbox-reg scores them unrefined (the paper's rows without \"bb\").")
@tta_option("Test-time augmentation: average each window's SVM scores and box deltas over the "
            "image and these views of it (their features are computed for the split when missing).")
@method_option
@quiet_option
def eval_command(workdir, data_root, split, metric, iou_threshold, detections_path, json_path,
                 plots_dir, bbox_reg, tta, method, quiet):
    """Score detections on a split with the Pascal VOC devkit's rules.

    Prints AP, positives and detections per class, then the mAP. Without --detections, runs the
    trained detector of the work directory (the one trained with --method) and also writes its
    devkit results files there (WORKDIR/results, or results-rcnn for --method rcnn).

    Example: sppdet eval --data data/VOC2007 --split test --detections results/ --json ap.json
    """
    from sppdet.pipelines.split_caches import ensure_split_caches
    from sppdet.vis.pr_curves import plot_results
    from sppdet.workdir.trained import detect_split, require_trained
    with library_errors():
        work = WorkDir(workdir)
        # scoring --detections files reads only the dataset, so any --data will do; the work
        # directory's own detector reads its caches, which belong to its recorded dataset
        root = work.data_root(data_root, other_root_ok=detections_path is not None)
        classes = discover_classes(root)
        split_dir = work.split_dir(root)
        image_ids = read_split(root, split, split_dir)
        with progress_bar(len(image_ids), "annotations", quiet) as advance:
            annotations = load_ground_truth(root, split, progress=advance, split_dir=split_dir)
        if detections_path is None and method == DEFAULT_METHOD:
            require_trained(work, method)
            if tta is None:
                tta = recorded_views(work)
            computed = ensure_split_caches(work, split, tta, data_root,
                                           lambda total, text: progress_bar(total, text, quiet))
            if any(computed.values()):
                stderr_console.print(f"{split}: computed proposals of {computed['propose']} and features of "
                                     f"{computed['extract']} images with the recorded settings", markup=False)
        if detections_path is None:
            tta = tta or ()
            with progress_bar(len(image_ids), "detect", quiet) as advance:
                detections = detect_split(WorkDir(workdir), split, DetectConfig(bbox_reg=bbox_reg, tta=tta),
                                          data_root=data_root, progress=advance, method=method)
            folder = WorkDir(workdir).root / ("results" if method == "spp" else f"results-{method}")
            write_devkit_results(folder, split, detections, classes)
            stderr_console.print(f"devkit results files written to {folder}", markup=False, highlight=False)
        else:
            if tta:
                raise click.UsageError("--tta applies to the work directory's detector, not to --detections")
            detections = read_detections(detections_path, split, classes, image_ids)
        result = evaluate(annotations, detections, classes, metric=metric, iou_threshold=iou_threshold)
        stdout_console.print(_table(result, split))
        if json_path is not None:
            write_summary_json(json_path, result, split)
        if plots_dir is not None:
            paths = plot_results(result, plots_dir, title=f"{split}: mAP {result.mAP:.4f}")
            stderr_console.print(f"{len(paths)} plots written to {Path(plots_dir)}", markup=False, highlight=False)
