"""``sppdet extract``: conv features of a split, once per image per scale, cached."""

from __future__ import annotations

import click
from rich.table import Table

from cli.common import (data_option, device_option, library_errors, progress_bar, quiet_option,
                        shard_option, split_option, stdout_console, workdir_option)
from sppdet.backbones import BACKBONES
from sppdet.extract_stage import prepare_extract, run_extract


def _parse_scales(ctx, param, value: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected whole numbers, e.g. 480,576,688") from None


@click.command("extract")
@split_option("trainval")
@click.option("--backbone", type=click.Choice(BACKBONES), default="zf5", show_default=True,
              help="Conv trunk: zf5 (the paper's ZF-5) or torchvision alexnet/vgg16 conv5.")
@click.option("--width", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="zf5 channel multiplier (0.25 = a small, CPU-friendly trunk).")
@click.option("--weights", default=None, metavar="none|imagenet|PATH",
              help="Trunk weights: random (none), torchvision ImageNet file, or a state dict. "
                   "Default: the trunk saved by `sppdet pretrain`, else none.")
@click.option("--scales", default="688", show_default=True, callback=_parse_scales,
              help="Shorter-side sizes, comma-separated (paper: 688, or 480,576,688,864,1200).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of random weights.")
@device_option
@workdir_option
@data_option
@shard_option
@quiet_option
def extract(split, backbone, width, weights, scales, seed, device, workdir, data_root, shard, quiet):
    """Compute conv5 features of every image of a split, once per scale, and cache them.

    One float16 file per image (every scale) in WORKDIR/features-<hash>; the hash covers the
    backbone, weights, scales and seed, so other settings never reuse a cache. Re-running skips
    images already done.

    Example: sppdet extract --split trainval --backbone zf5 --width 0.25 --scales 480,688
    """
    with library_errors():
        job = prepare_extract(workdir, split=split, backbone=backbone, width=width, weights=weights,
                              scales=scales, seed=seed, device=device, data_root=data_root,
                              shard=shard)
        with progress_bar(len(job.image_ids), f"extract {split}", quiet=quiet) as advance:
            summary = run_extract(job, progress=advance)
    table = Table(title=f"sppdet extract: {split}", show_header=False)
    table.add_row("backbone", f"{backbone} (width {width}), weights {summary.weights}")
    table.add_row("scales", ", ".join(str(s) for s in job.config.scales))
    table.add_row("images", f"{summary.images} ({summary.computed} computed, {summary.skipped} cached)")
    rate = (f"{summary.computed / summary.seconds:.2f} images/s" if summary.computed
            else "nothing to compute")
    table.add_row("time", f"{summary.seconds:.1f} s ({rate} on {summary.device})")
    stdout_console.print(table)
    stdout_console.print(f"features: {summary.folder} ({summary.cache_bytes / 1e6:.1f} MB)",
                         soft_wrap=True, markup=False, highlight=False)
