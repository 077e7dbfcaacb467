"""``sppdet train-bbox``: per-class ridge box regressors on pooled conv5 features."""

from __future__ import annotations

import click
from rich.table import Table

from cli.common import (data_option, library_errors, method_option, plain, progress_bar, quiet_option,
                        split_option, stdout_console, workdir_option)
from sppdet.config import BboxRegConfig
from sppdet.workdir.store import WorkDir

DEFAULTS = BboxRegConfig()


@click.command("train-bbox")
@workdir_option
@data_option
@split_option("trainval")
@click.option("--min-overlap", type=click.FloatRange(0, 1), default=DEFAULTS.min_overlap, show_default=True,
              help="Train on proposals with IoU above this to their best box (R-CNN: 0.6).")
@click.option("--lambda", "ridge_lambda", type=click.FloatRange(0), default=DEFAULTS.ridge_lambda,
              show_default=True, help="Ridge penalty (R-CNN: 1000, SPP_net release: 4000).")
@method_option
@quiet_option
def train_bbox(workdir, data_root, split, min_overlap, ridge_lambda, method, quiet):
    """Train one ridge box regressor per class on pooled conv5 features.

    Targets are the R-CNN deltas (tx, ty, tw, th) from each proposal to its best ground-truth box.

    Example: sppdet train-bbox --min-overlap 0.6 --lambda 1000
    """
    from sppdet.stages.train_bbox import run_train_bbox
    from sppdet.workdir.window_source import WindowSource
    config = BboxRegConfig(min_overlap=min_overlap, ridge_lambda=ridge_lambda)
    with library_errors():
        work = WorkDir(workdir)
        images = len(WindowSource(work, split, data_root, method=method).image_ids)
        with progress_bar(images, f"train-bbox {split}", quiet) as advance:
            summary = run_train_bbox(work, split, config, data_root, advance, method)
    if not summary.trained:
        stdout_console.print(f"already trained (cached): {summary.folder}", markup=False)
        return
    table = Table(title=f"sppdet train-bbox: {plain(split)}, {summary.seconds:.1f} s")
    for column in ("class", "examples", "used", "rms before", "rms after"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for r in summary.reports:
        table.add_row(plain(r.name), str(r.examples), str(r.used), f"{r.rms_before:.4f}", f"{r.rms_after:.4f}")
    stdout_console.print(table)
    stdout_console.print(f"model: {summary.folder}", markup=False)
