"""``sppdet finetune``: train fc6/fc7/fc8 on cached pooled features, conv frozen; with
``--train-conv``, the conv trunk too, end to end (``sppdet.training.finetune_conv``)."""

from __future__ import annotations

import click
from click.core import ParameterSource
from rich.table import Table

from cli.common import (data_option, device_option, library_errors, method_option, plain, progress_bar,
                        quiet_option, split_option, stdout_console, workdir_option)
from sppdet.config import FinetuneConfig
from sppdet.workdir.store import WorkDir

DEFAULTS = FinetuneConfig()


def _parse_hidden(ctx, param, value: str) -> tuple[int, int]:
    try:
        sizes = tuple(int(v) for v in value.split(","))
    except ValueError:
        sizes = ()
    if len(sizes) != 2 or min(sizes) < 1:
        raise click.BadParameter(f"{value!r}: expected two sizes, e.g. 4096,4096")
    return sizes


@click.command("finetune")
@workdir_option
@data_option
@split_option("trainval")
@click.option("--hidden", default=",".join(map(str, DEFAULTS.hidden)), show_default=True,
              callback=_parse_hidden, help="fc6,fc7 sizes (paper: 4096,4096).")
@click.option("--epochs", type=click.IntRange(0), default=DEFAULTS.epochs, show_default=True,
              help="Passes over the split; 0 keeps the pretrained head as it is (SVMs on its fc7).")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=DEFAULTS.lr, show_default=True)
@click.option("--windows-per-image", type=click.IntRange(1), default=DEFAULTS.windows_per_image,
              show_default=True, help="Windows sampled from each image per pass (25% foreground).")
@click.option("--seed", type=int, default=DEFAULTS.seed, show_default=True)
@click.option("--train-conv", is_flag=True,
              help="Also fine-tune the conv trunk through the SPP pooling, on whole images (beyond "
                   "the paper, as Fast R-CNN), then recompute this split's features with it.")
@click.option("--images-per-batch", type=click.IntRange(1), default=DEFAULTS.images_per_batch,
              show_default=True, help="--train-conv: whole images per SGD step (Fast R-CNN: 2).")
@method_option
@device_option
@quiet_option
@click.pass_context
def finetune(ctx, workdir, data_root, split, hidden, epochs, lr, windows_per_image, seed, train_conv,
             images_per_batch, method, device, quiet):
    """Train the fc head (fc6, fc7, fc8) on cached SPP features, conv frozen as in the paper.

    Windows with IoU >= 0.5 to a ground-truth box are foreground, [0.1, 0.5) background; each
    pass samples windows per image (25% foreground) from the caches. Starts from the head of
    `sppdet pretrain` when its sizes match.

    --train-conv (spp only) trains the trunk of the extracted features with the head, end to end
    on whole images, saves it in the finetune folder, and recomputes this split's features with
    it (a new features folder; the old cache is no longer used). Afterwards run
    `sppdet extract --split test` (and any other split you use): it picks the fine-tuned trunk by
    default. --device applies to --train-conv only.

    Example: sppdet finetune --hidden 512,512 --epochs 12
    """
    from sppdet.stages.finetune import check_config, run_finetune
    from sppdet.workdir.window_source import WindowSource
    if not train_conv and ctx.get_parameter_source("images_per_batch") != ParameterSource.DEFAULT:
        raise click.UsageError("--images-per-batch applies to --train-conv only")
    config = FinetuneConfig(hidden=hidden, epochs=epochs, lr=lr, windows_per_image=windows_per_image,
                            seed=seed, train_conv=train_conv, images_per_batch=images_per_batch)
    with library_errors():
        check_config(config, method)
        work = WorkDir(workdir)
        images = len(WindowSource(work, split, data_root, method=method).image_ids)
        steps = (epochs + 1 if train_conv else epochs) * images
        with progress_bar(steps, f"finetune {split}", quiet, fields=("loss", "acc")) as advance:
            summary = run_finetune(work, split, config, data_root, advance, method, device)
    if summary.resumed_from:
        stdout_console.print(f"resumed from epoch {summary.resumed_from} (the checkpoint of a stopped run)")
    table = Table(title=f"sppdet finetune: {plain(split)}", show_header=False)
    table.add_row("head", f"fc6 {hidden[0]}, fc7 {hidden[1]}, init {plain(summary.init)}")
    table.add_row("trained", f"{summary.epochs} epochs in {summary.seconds:.1f} s" if summary.trained
                  else "already trained (cached)")
    table.add_row("final loss / acc", f"{summary.final_loss:.4f} / {summary.final_accuracy:.3f}")
    table.add_row("folder", plain(summary.folder))
    if summary.trunk is not None:
        table.add_row("conv", f"fine-tuned: {plain(summary.trunk)}")
        table.add_row("features", f"{plain(summary.features)} ({summary.computed} images computed); "
                      "run `sppdet extract --split test` for other splits")
    stdout_console.print(table)
