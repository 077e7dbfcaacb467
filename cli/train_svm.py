"""``sppdet train-svm``: per-class linear SVMs with hard-negative mining."""

from __future__ import annotations

import click
from rich.table import Table

from sppdet.config import SVM_LAYERS
from cli.common import (data_option, library_errors, method_option, plain, progress_bar, quiet_option,
                        split_option, stdout_console, workdir_option)
from sppdet.config import SvmConfig
from sppdet.workdir.store import WorkDir

DEFAULTS = SvmConfig()


def _parse_levels(ctx, param, value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        levels = tuple(int(v) for v in value.split(","))
    except ValueError:
        levels = ()
    if not levels or min(levels) < 1:
        raise click.BadParameter(f"{value!r}: expected pyramid levels >= 1, e.g. 1,2,3,6 or 6")
    return levels


@click.command("train-svm")
@workdir_option
@data_option
@split_option("trainval")
@click.option("--layer", type=click.Choice(SVM_LAYERS), default=DEFAULTS.layer, show_default=True,
              help="Features the SVMs read: fc7 of the fine-tuned head, pool5 itself, or both side by "
                   "side (pool5+fc7, fc7 weighted to pool5's mean norm).")
@click.option("--fc7-scale", type=click.FloatRange(0, min_open=True), default=DEFAULTS.fc7_scale,
              show_default=True, help="With --layer pool5+fc7: fc7's weight, in units of the one that gives "
                                      "both parts the same mean norm.")
@click.option("--C", "c", type=click.FloatRange(0, min_open=True), default=DEFAULTS.C, show_default=True,
              help="Hinge-loss weight (paper: 1e-3).")
@click.option("--extra-positives", type=click.IntRange(min=0), default=DEFAULTS.extra_positives,
              show_default=True,
              help="Per object, up to this many proposals with IoU >= --extra-positive-iou join the "
                   "positives (R-CNN: 0, ground truth only; helps with few objects per class).")
@click.option("--extra-positive-iou", type=click.FloatRange(0.5, 1.0), default=DEFAULTS.extra_positive_iou,
              show_default=True, help="Least IoU with its object for an extra positive.")
@click.option("--augment-positives", default="", metavar="flip,rot90,channels",
              callback=lambda ctx, param, value: tuple(p.strip() for p in value.split(",") if p.strip()),
              help="Each object also gives its flipped / quarter-turned / recoloured copies as "
                   "positives (pooled from chips of the image through the features' trunk). Add "
                   "rot90 and channels only when a class stays itself when turned or recoloured "
                   "(the demo's shapes), not for VOC. Default: none (R-CNN).")
@click.option("--seed", type=int, default=DEFAULTS.seed, show_default=True)
@click.option("--levels", default=None, metavar="1,2,3,6", callback=_parse_levels,
              help="Pyramid levels the windows are pooled with (default 1,2,3,6; e.g. 6 alone for "
                   "the paper's single-level ablation, with --layer pool5); eval and detect follow.")
@method_option
@quiet_option
def train_svm(workdir, data_root, split, layer, fc7_scale, c, extra_positives, extra_positive_iou, augment_positives,
              seed, levels, method, quiet):
    """Train one linear SVM per class with R-CNN's hard-negative mining.

    Positives are ground-truth boxes, negatives proposals with IoU < 0.3 to every box of the class;
    features scaled to mean norm 20; one mining pass with retraining every 2,000 new negatives.

    Example: sppdet train-svm --layer fc7
    """
    from sppdet.stages.train_svm import run_train_svm
    from sppdet.workdir.window_source import WindowSource
    config = SvmConfig(layer=layer, C=c, fc7_scale=fc7_scale, extra_positives=extra_positives,
                       extra_positive_iou=extra_positive_iou, augment_positives=augment_positives,
                       seed=seed)
    with library_errors():
        work = WorkDir(workdir)
        images = len(WindowSource(work, split, data_root, levels=levels, method=method).image_ids)
        with progress_bar(2 * images, f"train-svm {split}", quiet) as advance:
            summary = run_train_svm(work, split, config, data_root, advance, method, levels)
    if not summary.trained:
        stdout_console.print(f"already trained (cached): {summary.folder}", markup=False)
        return
    table = Table(title=f"sppdet train-svm: {plain(split)}, {plain(layer)}, {summary.seconds:.1f} s")
    for column in ("class", "positives", "negatives kept", "retrains", "objective"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for r in summary.reports:
        table.add_row(plain(r.name), str(r.positives), str(r.negatives), str(r.retrains),
                      f"{r.objective.total:.4f}" if r.objective else "-")
    stdout_console.print(table)
    stdout_console.print(f"model: {summary.folder}", markup=False)
