"""``sppdet eval``: VOC AP per class (or COCO's metrics) for a split, of the trained detector or of
saved detections."""

from __future__ import annotations

import math
from pathlib import Path

import click
from click.core import ParameterSource
from rich.table import Table

from cli.common import (data_option, library_errors, method_option, plain, progress_bar, quiet_option,
                        split_option, stderr_console, stdout_console, tta_option, workdir_option)
from sppdet.config import DetectConfig
from sppdet.data.voc import discover_classes, read_split
from sppdet.evaluation.coco_metric import COCO_METRIC, CocoResult, evaluate_coco, require_coco
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


def _number(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.4f}"


#: COCOeval's summary lines, by ``CocoResult.stats`` name
_COCO_ROWS = {"AP": "AP @ IoU .50:.95", "AP50": "AP @ IoU .50", "AP75": "AP @ IoU .75",
              "AP_small": "AP small (< 32² px)", "AP_medium": "AP medium", "AP_large": "AP large (>= 96² px)",
              "AR1": "AR, 1 det/image", "AR10": "AR, 10 dets/image", "AR100": "AR, 100 dets/image",
              "AR_small": "AR small", "AR_medium": "AR medium", "AR_large": "AR large"}


def _coco_tables(result: CocoResult, split: str) -> tuple[Table, Table]:
    per_class = Table(title=f"COCO AP (IoU .50:.95, 100 detections per image) on {plain(split)}")
    for name in ("class", "AP", "AP50", "AP75", "positives", "detections"):
        per_class.add_column(name, justify="left" if name == "class" else "right")
    for c in result.classes:
        per_class.add_row(plain(c.name), _number(c.ap), _number(c.ap50), _number(c.ap75), str(c.npos), str(c.ndet))
    summary = Table(title="COCO summary (all classes)")
    summary.add_column("metric")
    summary.add_column("value", justify="right")
    for name, label in _COCO_ROWS.items():
        summary.add_row(label, _number(result.stats[name]))
    return per_class, summary


@click.command("eval")
@workdir_option
@data_option
@split_option("test")
@click.option("--metric", type=click.Choice(METRICS + (COCO_METRIC,)), default="voc07", show_default=True,
              help="voc07: 11-point interpolated AP (VOC2007); area: area under the precision "
                   "envelope (VOC2010+); coco: COCO's AP over IoU .50:.95, AP50, AP75, AP and AR by "
                   "object size (pycocotools; pip install 'sppdet[coco]'), difficult boxes as crowd.")
@click.option("--iou", "iou_threshold", type=click.FloatRange(0.0, 1.0), default=0.5,
              show_default=True, help="A detection is a hit if its IoU is >= this (voc07, area).")
@click.option("--detections", "detections_path", type=click.Path(exists=True), default=None,
              help="Score saved detections instead of the work directory's detector: a folder of "
                   "comp4_det_<split>_<class>.txt devkit results files or a COCO-style .json file.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the summary (metric, iou, split, mAP, per-class ap/npos/ndet; for "
                   "coco: metric, split, stats, per-class ap/ap50/ap75/npos/ndet) here.")
@click.option("--plots", "plots_dir", type=click.Path(file_okay=False), default=None,
              help="Write one precision-recall curve PNG per class and a summary figure here "
                   "(voc07, area).")
@click.option("--analyze", "analyze_dir", type=click.Path(file_okay=False), default=None,
              help="Also write an error analysis here: a confusion matrix, each class's false positives "
                   "by type (localisation, duplicate, confusion, background; Hoiem et al. 2012) and the "
                   "8 images with the most errors, drawn.")
@click.option("--bbox-reg/--no-bbox-reg", default=True, show_default=True,
              help="Refine the scored windows with the trained box regressors (when train-bbox "
                   "ran); --no-bbox-reg scores them unrefined (the paper's rows without \"bb\").")
@tta_option("Test-time augmentation: average each window's SVM scores and box deltas over the "
            "image and these views of it (their features are computed for the split when missing).")
@method_option
@quiet_option
def eval_command(workdir, data_root, split, metric, iou_threshold, detections_path, json_path,
                 plots_dir, analyze_dir, bbox_reg, tta, method, quiet):
    """Score detections on a split with the Pascal VOC devkit's rules.

    Prints AP, positives and detections per class, then the mAP (--metric coco: COCO's AP,
    AP50, AP75 per class, then its summary). Without --detections, runs the trained detector of
    the work directory (the one trained with --method) and also writes its devkit results files
    there (WORKDIR/results, or results-rcnn for --method rcnn).

    Example: sppdet eval --data data/VOC2007 --split test --detections results/ --json ap.json
    """
    from sppdet.pipelines.split_caches import ensure_split_caches
    from sppdet.workdir.trained import detect_split, require_trained
    coco = metric == COCO_METRIC
    if coco:
        source = click.get_current_context().get_parameter_source("iou_threshold")
        if source == ParameterSource.COMMANDLINE:
            raise click.UsageError("--iou applies to voc07 and area; --metric coco averages IoU .50:.95")
        if plots_dir is not None:
            raise click.UsageError("--plots draws VOC precision-recall curves; use --metric voc07 or area")
    with library_errors():
        if coco:
            require_coco()  # before any detection work
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
        if coco:
            _report_coco(evaluate_coco(annotations, detections, classes), split, json_path)
        else:
            result = evaluate(annotations, detections, classes, metric=metric, iou_threshold=iou_threshold)
            _report_voc(result, split, json_path, plots_dir)
        if analyze_dir is not None:
            _analyze(analyze_dir, root, split, split_dir, annotations, detections, classes, iou_threshold)


def _report_voc(result: EvalResult, split: str, json_path: str | None, plots_dir: str | None) -> None:
    """Print the VOC table; write the --json summary and the --plots."""
    from sppdet.vis.pr_curves import plot_results
    stdout_console.print(_table(result, split))
    if json_path is not None:
        write_summary_json(json_path, result, split)
    if plots_dir is not None:
        paths = plot_results(result, plots_dir, title=f"{split}: mAP {result.mAP:.4f}")
        stderr_console.print(f"{len(paths)} plots written to {Path(plots_dir)}", markup=False, highlight=False)


def _analyze(analyze_dir: str, root, split: str, split_dir, annotations, detections, classes,
             iou_threshold: float) -> None:
    """Write ``sppdet.vis.analysis_plots.write_analysis``'s files for ``--analyze``."""
    from sppdet.data.voc import VocDataset
    from sppdet.vis.analysis_plots import write_analysis
    dataset = VocDataset(root, split, classes, check_images=False, split_dir=split_dir)
    report = write_analysis(analyze_dir, annotations, detections, classes, dataset.image_path,
                            iou_threshold=iou_threshold)
    stderr_console.print(f"error analysis ({len(report.worst_images)} worst images drawn) written to "
                         f"{Path(analyze_dir)}", markup=False, highlight=False)


def _report_coco(result: CocoResult, split: str, json_path: str | None) -> None:
    """Print the COCO tables; write the --json summary."""
    for table in _coco_tables(result, split):
        stdout_console.print(table)
    if json_path is not None:
        write_summary_json(json_path, result, split)
