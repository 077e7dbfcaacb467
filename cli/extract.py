"""``sppdet extract``: conv features of a split, once per image per scale, cached; with
``--method rcnn``, the R-CNN baseline's warped-window features instead (``sppdet.stages.extract_rcnn``)."""

from __future__ import annotations

import click
from click.core import ParameterSource
from rich.table import Table

from sppdet.config import AUTO_PRECISION, BACKBONES, PRECISIONS, RcnnConfig
from cli.common import (check_executor_options, data_option, device_option, executor_option, library_errors,
                        method_option, plain, progress_bar, quiet_option, shard_option, split_option, stderr_console,
                        stdout_console, tta_option, workdir_option)

SPP_ONLY = ("scales", "target", "tta", "precision")
RCNN_ONLY = ("crop_size", "context", "batch")


def _parse_scales(ctx, param, value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        return tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected whole numbers, e.g. 480,576,688") from None


@click.command("extract")
@split_option("trainval")
@click.option("--backbone", type=click.Choice(BACKBONES), default=None,
              help="Conv trunk: zf5 (the paper's ZF-5) or torchvision alexnet/vgg16 conv5. Default: "
                   "that of the trunk `sppdet pretrain` trained, else zf5.")
@click.option("--width", type=click.FloatRange(min=0, min_open=True), default=None,
              help="zf5 channel multiplier (0.25 = a small, CPU-friendly trunk). Default: that of the "
                   "trained trunk, else 1.0.")
@click.option("--weights", default=None, metavar="none|imagenet|PATH",
              help="Trunk weights: random (none), torchvision's ImageNet file (downloaded into "
                   "$TORCH_HOME on first use), or a state dict. "
                   "Default: the trunk saved by `sppdet pretrain` (or finetune --train-conv); "
                   "without one, random weights with a warning.")
@click.option("--scales", default=None, callback=_parse_scales,
              help="Shorter-side sizes, comma-separated (paper: 688, or 480,576,688,864,1200). Default: "
                   "those of the last extract with the same trunk, else chosen from the training "
                   "objects' sizes (README, \"Settings that follow your data\").")
@click.option("--target", type=click.IntRange(min=1), default=None,
              help="Pool each window at the scale where it is closest to TARGET x TARGET px "
                   "(paper: 224). Default: 1.5 x the main (first) crop side of a `sppdet pretrain` "
                   "trunk (96 for its default 64,96 px crops), else 224.")
@click.option("--precision", type=click.Choice((*PRECISIONS, AUTO_PRECISION)), default=None,
              help="The trunk's arithmetic; bfloat16 runs ~1.5x faster on CPUs with bfloat16 units "
                   "(AVX512-BF16, AMX) and on recent GPUs, conv5 within ~0.5%; auto picks bfloat16 "
                   "where the device has such units. Part of the cache's identity. Default: that of "
                   "the last extract with the same trunk, else float32.")
@tta_option("Also cache the features of these views of each image (one conv pass each), for "
            "sppdet eval / detect --tta.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of random weights.")
@method_option
@click.option("--crop-size", type=click.IntRange(min=1), default=RcnnConfig.crop_size, show_default=True,
              help="rcnn: side of the warped crops (R-CNN: 227; ZF-5's input: 224).")
@click.option("--context", type=click.IntRange(min=0), default=RcnnConfig.context, show_default=True,
              help="rcnn: pixels of context around each window in its crop (R-CNN: 16).")
@click.option("--batch", type=click.IntRange(min=1), default=128, show_default=True,
              help="rcnn: crops per forward pass of the trunk.")
@device_option
@workdir_option
@data_option
@executor_option
@shard_option
@quiet_option
@click.pass_context
def extract(ctx, split, backbone, width, weights, scales, target, precision, tta, seed, method, crop_size, context,
            batch, device, workdir, data_root, executor, ray_address, shard, quiet):
    """Compute conv5 features of every image of a split, once per scale, and cache them.

    One float16 file per image (every scale) in WORKDIR/features-<hash>; the hash covers the
    backbone, weights, scales and seed, so other settings never reuse a cache. Re-running skips
    images already done.

    With --method rcnn (the R-CNN baseline; needs `sppdet propose` first), every ground-truth box
    and proposal is instead warped with context to a crop, run through the same trunk and
    pyramid-pooled; the pooled vectors go to WORKDIR/rcnn-features-<hash>.

    --executor ray computes batches of images as tasks on a Ray cluster instead (same files).

    Example: sppdet extract --split trainval --backbone zf5 --width 0.25 --scales 480,688
    """
    from sppdet.stages.extract import prepare_extract, run_extract
    other = RCNN_ONLY if method == "spp" else SPP_ONLY
    given = [name for name in other if ctx.get_parameter_source(name) != ParameterSource.DEFAULT]
    if given:
        option = "--" + given[0].replace("_", "-")
        raise click.UsageError(f"{option} does not apply to --method {method}")
    check_executor_options(executor, ray_address)
    if method == "rcnn":
        _extract_rcnn(split, backbone, width, weights, seed, crop_size, context, batch, device,
                      workdir, data_root, shard, quiet, executor, ray_address)
        return
    with library_errors():
        job = prepare_extract(workdir, split=split, backbone=backbone, width=width, weights=weights,
                              scales=scales, seed=seed, device=device, data_root=data_root,
                              shard=shard, target=target, views=tta or (), precision=precision)
        for line in job.settings.warnings:
            stderr_console.print(f"warning: {line}", style="yellow", markup=False, highlight=False)
        with progress_bar(len(job.image_ids), f"extract {split}", quiet=quiet) as advance:
            summary = run_extract(job, progress=advance, executor=executor, ray_address=ray_address)
    rate = f"{summary.computed / summary.seconds:.2f} images/s" if summary.computed else None
    config, sources = job.config, job.settings.sources
    _report(f"sppdet extract: {split}", summary, f"{config.backbone} (width {config.width:g})",
            ("scales", f"{', '.join(str(s) for s in config.scales)} (target {config.target} px)"),
            rate, sources=[f"{name}: {sources[name]}" for name in
                           ("backbone", "width", "weights", "scales", "target", "precision")])


def _extract_rcnn(split, backbone, width, weights, seed, crop_size, context, batch, device, workdir,
                  data_root, shard, quiet, executor, ray_address):
    from sppdet.stages.extract_rcnn import prepare_rcnn_extract, run_rcnn_extract
    with library_errors():
        job = prepare_rcnn_extract(workdir, split=split, backbone=backbone, width=width,
                                   weights=weights, crop_size=crop_size, context=context, seed=seed,
                                   batch=batch, device=device, data_root=data_root, shard=shard)
        with progress_bar(len(job.image_ids), f"extract {split} (rcnn)", quiet=quiet) as advance:
            summary = run_rcnn_extract(job, progress=advance, executor=executor, ray_address=ray_address)
    rate = f"{summary.windows / summary.seconds:.1f} windows/s" if summary.computed else None
    _report(f"sppdet extract --method rcnn: {split}", summary,
            f"{job.config.backbone} (width {job.config.width:g})",
            ("crops", f"{crop_size} x {crop_size}, context {context} px"), rate)


def _report(title: str, summary, trunk: str, setting: tuple[str, str], rate: str | None,
            sources: list[str] = ()) -> None:
    """The result table of either extract (SPP or R-CNN summary) and the cache folder line;
    ``sources``: where each setting came from (flag, default, recorded, data)."""
    table = Table(title=plain(title), show_header=False)
    table.add_row("backbone", plain(f"{trunk}, weights {summary.weights}"))
    table.add_row(*(plain(cell) for cell in setting))
    if sources:
        table.add_row("settings from", plain("; ".join(sources)))
    table.add_row("images", f"{summary.images} ({summary.computed} computed, {summary.skipped} cached)")
    table.add_row("time", f"{summary.seconds:.1f} s ({rate or 'nothing to compute'} on {summary.device})")
    stdout_console.print(table)
    stdout_console.print(f"features: {summary.folder} ({summary.cache_bytes / 1e6:.1f} MB)",
                         soft_wrap=True, markup=False, highlight=False)
