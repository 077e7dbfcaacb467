"""``sppdet synth``: write the built-in demo dataset (VOC layout) and print what it holds."""

from __future__ import annotations

import click
from rich.table import Table

from cli.common import library_errors, plain, progress_bar, quiet_option, stdout_console
from sppdet.parallel import default_workers


@click.command("synth")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--images", type=click.IntRange(min=3), default=400, show_default=True,
              help="Number of images (at least 3, one per split).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Random seed; the same seed gives byte-identical files.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Processes drawing images (default: all cores); the files do not depend on it.")
@quiet_option
def synth(out, images, seed, workers, quiet):
    """Write the built-in demo dataset to OUT in Pascal VOC layout.

    Five shape classes (circle, cross, square, star, triangle) in colours unrelated to the
    class, on cluttered backgrounds, with occlusion and truncation; hard objects are marked
    difficult. Splits: train, val, trainval (train + val) and test (40% of the images). OUT
    must be new, empty, or an earlier synth dataset (which is regenerated).

    Example: sppdet synth data/synth --images 400 --seed 0
    """
    from sppdet.data.synth import SPLITS, check_output, write_dataset
    with library_errors():
        root = check_output(out)
        with progress_bar(images, "synth", quiet=quiet) as advance:
            summary = write_dataset(root, images=images, seed=seed, progress=advance,
                                    workers=workers or default_workers())
    objects = Table(title=f"sppdet synth: {images} images, seed {seed}")
    objects.add_column("class")
    objects.add_column("objects", justify="right")
    objects.add_column("difficult", justify="right")
    for name, count in summary.objects.items():
        objects.add_row(plain(name), str(count), str(summary.difficult[name]))
    objects.add_row("all", str(sum(summary.objects.values())), str(sum(summary.difficult.values())),
                    style="bold")
    splits = Table()
    splits.add_column("split")
    splits.add_column("images", justify="right")
    for name in SPLITS:
        splits.add_row(plain(name), str(summary.splits[name]))
    stdout_console.print(objects)
    stdout_console.print(splits)
    stdout_console.print(f"dataset: {summary.root}", soft_wrap=True, markup=False, highlight=False)
