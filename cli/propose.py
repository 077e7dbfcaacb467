"""``sppdet propose``: selective search proposals for a split, cached per image."""

from __future__ import annotations

import click
from rich.table import Table

from sppdet.config import PROPOSAL_MODES
from cli.common import (check_executor_options, data_option, executor_option, library_errors, plain, progress_bar,
                        quiet_option, shard_option, split_option, stdout_console, workdir_option)
from sppdet.config import ProposeConfig

DEFAULTS = ProposeConfig()


@click.command("propose")
@data_option
@split_option("trainval")
@workdir_option
@click.option("--mode", type=click.Choice(PROPOSAL_MODES), default=DEFAULTS.mode, show_default=True,
              help="Selective search mode (paper: fast; quality: ~2.5x the boxes, ~3x slower).")
@click.option("--max-proposals", type=click.IntRange(min=1), default=DEFAULTS.max_proposals,
              show_default=True, help="Boxes kept per image (paper: ~2,000).")
@click.option("--min-size", type=click.IntRange(min=0), default=DEFAULTS.min_size,
              show_default=True, help="Drop boxes narrower or shorter than this many pixels.")
@click.option("--max-side", type=click.IntRange(min=16), default=DEFAULTS.max_side,
              show_default=True, help="Search larger images shrunk to this longer side.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Processes searching images in parallel [default: all cores]; --executor local only.")
@executor_option
@shard_option
@quiet_option
def propose(data_root, split, workdir, mode, max_proposals, min_size, max_side, workers, executor, ray_address,
            shard, quiet):
    """Run selective search on every image of a split and cache the boxes.

    One float32 [N, 4] file per image in WORKDIR/proposals-<hash>, the hash covering these
    settings and the dataset. Re-running skips images already done. --data is recorded in
    the work directory, so later commands need none. Prints proposals per image and the
    recall of the ground-truth boxes, also written to summary-<split>.json in the folder.

    --executor ray runs batches of images as tasks on a Ray cluster instead (same files).

    Example: sppdet propose --data data/synth --split trainval --workers 4
    """
    from sppdet.stages.propose import prepare_propose, run_propose
    check_executor_options(executor, ray_address)
    if workers is not None and executor != "local":
        raise click.UsageError("--workers applies to --executor local; Ray runs one task per free CPU")
    config = ProposeConfig(mode=mode, max_proposals=max_proposals, min_size=min_size,
                           max_side=max_side)
    with library_errors():
        job = prepare_propose(workdir, config, split=split, data_root=data_root, shard=shard)
        with progress_bar(len(job.todo), f"propose {split}", quiet=quiet) as advance:
            summary = run_propose(job, workers=workers, progress=advance, executor=executor,
                                  ray_address=ray_address)
    table = Table(title=f"sppdet propose: {plain(split)}", show_header=False)
    cached = len(job.image_ids) - summary.computed
    table.add_row("images", f"{summary.images} of {summary.images_in_split} in the split "
                            f"({summary.computed} computed, {cached} cached)")
    table.add_row("proposals / image", f"mean {summary.proposals_mean:.0f}, "
                                       f"min {summary.proposals_min}, max {summary.proposals_max}")
    speed = ("nothing computed" if summary.seconds_per_image is None
             else f"{summary.seconds_per_image:.2f} s per image (one core)")
    table.add_row("time", f"{summary.wall_seconds:.1f} s; {speed}")
    for threshold, value in summary.recall.items():
        table.add_row(f"recall @ IoU {threshold}", f"{value:.3f} of {summary.gt_boxes} boxes")
    stdout_console.print(table)
    stdout_console.print(f"proposals: {summary.folder}", soft_wrap=True, markup=False, highlight=False)
