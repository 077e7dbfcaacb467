"""``sppdet bench``: measurements that reproduce the paper's claims; ``bench speed`` is its timing table."""

from __future__ import annotations

import click
from rich.table import Table

from sppdet.bench.speed_config import METHODS, PARTS, SCALES_1, SCALES_5, SpeedConfig
from sppdet.config import BACKBONES
from cli.common import (device_option, library_errors, progress_bar, quiet_option, stdout_console,
                        workdir_option)
from sppdet.fileio import atomic_write_json

DEFAULTS = SpeedConfig()
HEADERS = {"spp_1": "SPP 1-scale", "spp_5": "SPP 5-scale", "rcnn": "R-CNN"}


def _int_list(ctx, param, value: str) -> tuple[int, ...]:
    try:
        numbers = tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected whole numbers, e.g. 480,576,688") from None
    if not numbers or min(numbers) <= 0:
        raise click.BadParameter(f"{value!r}: expected positive whole numbers")
    return numbers


@click.group("bench")
def bench() -> None:
    """Measure sppdet against the paper's claims on this machine.

    Example: sppdet bench speed --images 5 --json speed.json
    """


@bench.command("speed")
@click.option("--images", type=click.IntRange(min=1), default=3, show_default=True,
              help="Images to time (the first ones of --split, or synth images).")
@click.option("--proposals", type=click.IntRange(min=1), default=DEFAULTS.proposals, show_default=True,
              help="Windows per image; selective search, topped up with random boxes when short.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the table as JSON (seconds per image, speed-ups, settings).")
@workdir_option
@click.option("--data", "data_root", type=click.Path(exists=True, file_okay=False), default=None,
              help="VOC-layout dataset to take images from (default: the trained work "
                   "directory's dataset, else synth images in a temporary folder).")
@click.option("--split", default="test", show_default=True, help="Split of --data to take images from.")
@click.option("--backbone", type=click.Choice(BACKBONES), default="zf5", show_default=True,
              help="Trunk of the random model (ignored when --workdir holds a trained detector).")
@click.option("--width", type=click.FloatRange(min=0, min_open=True), default=0.25, show_default=True,
              help="zf5 channel multiplier of the random model.")
@click.option("--hidden", default="512,512", show_default=True, callback=_int_list,
              help="fc6,fc7 sizes of the random model (paper: 4096,4096).")
@click.option("--scale", type=click.IntRange(min=1), default=SCALES_1[0], show_default=True,
              help="Shorter side for single-scale SPP (paper: 688).")
@click.option("--scales", default=",".join(map(str, SCALES_5)), show_default=True, callback=_int_list,
              help="Shorter sides for multi-scale SPP.")
@click.option("--rcnn-windows", type=click.IntRange(min=1), default=DEFAULTS.rcnn_windows,
              show_default=True, help="R-CNN windows timed per image, scaled to --proposals.")
@click.option("--crop-size", type=click.IntRange(min=1), default=DEFAULTS.rcnn_size, show_default=True,
              help="R-CNN crop side (R-CNN: 227).")
@click.option("--context", type=click.IntRange(min=0), default=DEFAULTS.rcnn_context, show_default=True,
              help="R-CNN context padding in crop pixels.")
@click.option("--seed", type=int, default=DEFAULTS.seed, show_default=True,
              help="Seed of the random model, the top-up boxes and the R-CNN subset.")
@device_option
@quiet_option
def speed(images, proposals, json_path, workdir, data_root, split, backbone, width, hidden, scale,
          scales, rcnn_windows, crop_size, context, seed, device, quiet):
    """Time SPP-net (1 and 5 scales) against R-CNN per image, as the paper's timing table.

    Same images, same windows, same model for all three: the trained detector of --workdir if it
    holds one, else a random one of the given shapes (time does not depend on the weights).
    Parts: conv (R-CNN: warp + conv), pyramid pooling, fc6/fc7, SVM scoring; total excludes
    selective search, which is reported apart. Use OMP_NUM_THREADS=1 on a shared machine.

    Example: sppdet bench speed --images 5 --proposals 2000 --json speed.json
    """
    from sppdet.bench.speed import bench_speed
    if len(hidden) != 2:
        raise click.BadParameter(f"{hidden}: expected two sizes, fc6,fc7", param_hint="--hidden")
    config = SpeedConfig(proposals=proposals, scales_1=(scale,), scales_5=scales,
                         rcnn_windows=rcnn_windows, rcnn_size=crop_size, rcnn_context=context, seed=seed)
    with library_errors():
        with progress_bar(images, "bench speed", quiet=quiet) as advance:
            report = bench_speed(images, config, workdir, data_root, split, backbone, width, hidden,
                                 device, advance)
        result = report.to_json()
        if json_path:
            atomic_write_json(json_path, result)
    settings = report.settings
    table = Table(title=f"seconds per image, {settings['images']} images, {proposals} windows each")
    table.add_column("")
    for method in METHODS:
        table.add_column(HEADERS[method], justify="right")
    for part in (*PARTS, "total"):
        table.add_row(part, *(f"{result[m][part]:.4f}" for m in METHODS))
    table.add_row("proposals (not in total)", *(f"{result[m]['proposals']:.4f}" for m in METHODS))
    for part in ("conv", "total"):
        table.add_row(f"speed-up vs R-CNN, {part}", f"{result[f'speedup_{part}_1']:.1f}x",
                      f"{result[f'speedup_{part}_5']:.1f}x", "1x")
    stdout_console.print(table)
    lines = [
        f"model: {settings['model']}",
        f"images: {settings['images_source']} (mean size {settings['image_hw_mean']})",
        f"windows: selective search found {settings['selective_search_boxes_mean']:.0f} per image, "
        f"{settings['topped_up_mean']:.0f} random boxes added to reach {proposals}",
        f"R-CNN: {settings['rcnn_windows_timed']} windows per image timed, conv and pool scaled to "
        f"{proposals}; crops {crop_size} px, context {context} px",
        f"device: {settings['device']}, {settings['torch_threads']} torch threads; load average "
        f"{settings['load_average_before_after'][0]} -> {settings['load_average_before_after'][1]}; "
        f"CPU {settings['cpu_seconds']:.1f} s over {settings['wall_seconds']:.1f} s wall",
    ]
    if json_path:
        lines.append(f"JSON: {json_path}")
    for line in lines:
        stdout_console.print(line, markup=False, highlight=False, soft_wrap=True)
