"""``sppdet pretrain``: train the conv trunk as an SPP window classifier on the dataset itself."""

from __future__ import annotations

import click
from rich.table import Table

from cli.common import (data_option, device_option, library_errors, progress_bar, quiet_option,
                        split_option, stdout_console, workdir_option)
from sppdet.backbones import BACKBONES
from sppdet.config import PretrainConfig
from sppdet.pretrain_stage import prepare_pretrain, run_pretrain

DEFAULTS = PretrainConfig()


def _parse_ints(ctx, param, value: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected whole numbers, e.g. 448,360") from None
    if not values:
        raise click.BadParameter(f"{value!r}: expected at least one number")
    return values


def _join(values) -> str:
    return ",".join(str(v) for v in values)


@click.command("pretrain")
@split_option("trainval")
@click.option("--backbone", type=click.Choice(BACKBONES), default=DEFAULTS.backbone,
              show_default=True, help="Conv trunk to train from random weights.")
@click.option("--width", type=click.FloatRange(min=0, min_open=True), default=DEFAULTS.width,
              show_default=True, help="zf5 channel multiplier (1.0 = the paper's ZF-5).")
@click.option("--epochs", type=click.IntRange(min=1), default=DEFAULTS.epochs, show_default=True,
              help="Passes over the split.")
@click.option("--sizes", default=_join(DEFAULTS.sizes), show_default=True, callback=_parse_ints,
              help="Shorter-side image sizes, alternated epoch by epoch (multi-size training; "
                   "e.g. the extract scale and 0.8 of it).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=DEFAULTS.lr,
              show_default=True, help="Peak SGD learning rate (warm-up, then cosine decay).")
@click.option("--windows-per-image", type=click.IntRange(min=2), default=DEFAULTS.windows_per_image,
              show_default=True, help="Windows per image and SGD step, up to half of them objects.")
@click.option("--hidden", default=_join(DEFAULTS.hidden), show_default=True, callback=_parse_ints,
              help="fc6,fc7 sizes of the classifier head (paper: 4096,4096).")
@click.option("--seed", type=int, default=DEFAULTS.seed, show_default=True,
              help="Seed of the init, window sampling, flips and image order.")
@device_option
@workdir_option
@data_option
@quiet_option
def pretrain(split, backbone, width, epochs, sizes, lr, windows_per_image, hidden, seed, device,
             workdir, data_root, quiet):
    """Train the conv trunk on the dataset when no ImageNet weights exist.

    The trunk, an SPP layer and an fc6-fc7 head classify ground-truth boxes and background
    proposals (IoU < 0.3 to every object) into the K classes + background, with random flips and
    two image sizes alternated per epoch. Needs `sppdet propose` first. The trunk goes to
    WORKDIR/pretrain-<hash>/trunk.pt, which `sppdet extract` then uses by default (same
    --backbone/--width); the same settings again reuse it.

    Example: sppdet pretrain --backbone zf5 --width 0.25 --epochs 12 --sizes 448,360
    """
    if len(hidden) != 2:
        raise click.BadParameter(f"{_join(hidden)!r}: expected two sizes, fc6,fc7", param_hint="--hidden")
    config = PretrainConfig(backbone=backbone, width=width, sizes=sizes, epochs=epochs, lr=lr,
                            windows_per_image=windows_per_image, hidden=hidden, seed=seed)
    with library_errors():
        job = prepare_pretrain(workdir, config, split=split, data_root=data_root, device=device)
        if job.done:
            summary = run_pretrain(job)
        else:
            with progress_bar(job.steps, f"pretrain {split}", quiet=quiet,
                              fields=("loss", "acc")) as advance:
                summary = run_pretrain(job, progress=advance)
    if summary.skipped:
        stdout_console.print(f"already trained: {summary.weights}", soft_wrap=True, markup=False,
                             highlight=False)
    last = summary.history[-1]
    table = Table(title=f"sppdet pretrain: {split}", show_header=False)
    table.add_row("backbone", f"{backbone} (width {width}), sizes {_join(sizes)}")
    table.add_row("data", f"{summary.images} images, classes {', '.join(summary.classes)}")
    table.add_row("epochs", str(len(summary.history)))
    table.add_row("final epoch", f"loss {last.loss:.4f}, window accuracy {last.accuracy:.3f}")
    table.add_row("time", f"{summary.seconds:.1f} s on {summary.device}"
                  + (" (earlier run)" if summary.skipped else ""))
    stdout_console.print(table)
    stdout_console.print(f"trunk: {summary.weights}", soft_wrap=True, markup=False, highlight=False)
    stdout_console.print(f"head: {summary.head}", soft_wrap=True, markup=False, highlight=False)
