"""``sppdet pretrain``: train the conv trunk as an SPP window classifier on the dataset itself."""

from __future__ import annotations

import click
from rich.table import Table

from sppdet.config import BACKBONES, WINDOW_SOURCES
from cli.common import (data_option, device_option, library_errors, plain, progress_bar, quiet_option,
                        split_option, stdout_console, workdir_option)
from sppdet.config import PretrainConfig

DEFAULTS = PretrainConfig()


def _parse_ints(ctx, param, value: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected whole numbers, e.g. 64,52") from None
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
              help="Crop sides in pixels, alternated epoch by epoch (multi-size training; "
                   "paper: 224,180).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=DEFAULTS.lr,
              show_default=True, help="Peak SGD learning rate (warm-up, then cosine decay).")
@click.option("--batch-size", type=click.IntRange(min=2), default=DEFAULTS.batch_size,
              show_default=True, help="Crops per SGD step.")
@click.option("--augment", default=_join(DEFAULTS.augment), show_default=True,
              callback=lambda ctx, param, value: tuple(p.strip() for p in value.split(",") if p.strip()),
              help="Crop augmentations, comma-separated: flip, rot90, channels. Add rot90 and "
                   "channels only when a class stays itself when turned or recoloured (the demo's "
                   "shapes), not for VOC.")
@click.option("--hidden", default=_join(DEFAULTS.hidden), show_default=True, callback=_parse_ints,
              help="fc6,fc7 sizes of the classifier head (paper: 4096,4096).")
@click.option("--windows", type=click.Choice(WINDOW_SOURCES), default=DEFAULTS.windows,
              show_default=True,
              help="Candidate windows: the proposals of `sppdet propose`, or random boxes plus "
                   "jittered ground truth (no proposals needed: pretrain on a separate dataset "
                   "given with --data, as the paper pretrains on ImageNet).")
@click.option("--parts-per-object", type=click.IntRange(min=0), default=DEFAULTS.parts_per_object,
              show_default=True,
              help="With --windows random: boxes drawn inside each object (20-55% of its sides), "
                   "background crops of object parts.")
@click.option("--seed", type=int, default=DEFAULTS.seed, show_default=True,
              help="Seed of the init, window sampling, flips and image order.")
@device_option
@workdir_option
@data_option
@quiet_option
def pretrain(split, backbone, width, epochs, sizes, lr, batch_size, augment, hidden, windows,
             parts_per_object, seed, device, workdir, data_root, quiet):
    """Train the conv trunk on the dataset when no ImageNet weights exist.

    The trunk (with batch norm, folded away when saved), an SPP layer and an fc6-fc7 head
    classify warped crops of ground-truth boxes, proposals with IoU >= 0.5 to them and background
    proposals (IoU < 0.3 to every object) into the K classes + background, in mini-batches, with
    two crop sizes alternated per epoch. Needs `sppdet propose` first, unless --windows random
    (then --data may name another VOC-layout dataset to pretrain on). The trunk goes to
    WORKDIR/pretrain-<hash>/trunk.pt, which `sppdet extract` then uses by default (same
    --backbone/--width); the same settings again reuse it.

    Example: sppdet pretrain --backbone zf5 --width 0.25 --epochs 16 --sizes 64,96

    On a separate dataset: sppdet pretrain --data data/big --windows random --epochs 3
    """
    from sppdet.stages.pretrain import prepare_pretrain, run_pretrain
    if len(hidden) != 2:
        raise click.BadParameter(f"{_join(hidden)!r}: expected two sizes, fc6,fc7", param_hint="--hidden")
    config = PretrainConfig(backbone=backbone, width=width, sizes=sizes, epochs=epochs, lr=lr,
                            batch_size=batch_size, augment=augment, hidden=hidden, windows=windows,
                            parts_per_object=parts_per_object, seed=seed)
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
    if summary.resumed_from:
        stdout_console.print(f"resumed from epoch {summary.resumed_from} (the checkpoint of a stopped run)")
    last = summary.history[-1]
    table = Table(title=f"sppdet pretrain: {plain(split)}", show_header=False)
    table.add_row("backbone", f"{backbone} (width {width}), crops {_join(sizes)}, augment {plain(_join(augment))}")
    table.add_row("data", f"{summary.images} images, classes {plain(', '.join(summary.classes))}")
    table.add_row("epochs", str(len(summary.history)))
    table.add_row("final epoch", f"loss {last.loss:.4f}, crop accuracy {last.accuracy:.3f}")
    table.add_row("time", f"{summary.seconds:.1f} s on {summary.device}"
                  + (" (earlier run)" if summary.skipped else ""))
    stdout_console.print(table)
    stdout_console.print(f"trunk: {summary.weights}", soft_wrap=True, markup=False, highlight=False)
    stdout_console.print(f"head: {summary.head}", soft_wrap=True, markup=False, highlight=False)
