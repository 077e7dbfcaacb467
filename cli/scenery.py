"""``sppdet scenery``: write a synthetic dataset of another look than the demo's (VOC layout)."""

from __future__ import annotations

import click
from rich.table import Table

from sppdet.config import SCENERY_LOOKS
from cli.common import library_errors, plain, progress_bar, quiet_option, stdout_console
from sppdet.parallel import default_workers


@click.command("scenery")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--look", type=click.Choice(SCENERY_LOOKS), required=True,
              help="glyphs: characters A, K, R, 7 on paper; signs: road-sign icons in a street; "
                   "cells: small blobs of four shapes on a dark microscope field.")
@click.option("--images", type=click.IntRange(min=2), default=200, show_default=True,
              help="Number of images (at least 2; 3 with --with-val).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Random seed; the same look and seed give byte-identical files.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Processes drawing images (default: all cores); the files do not depend on it.")
@click.option("--with-val", is_flag=True,
              help="Also write train and val (halves of trainval); by default only trainval and test.")
@quiet_option
def scenery(out, look, images, seed, workers, with_val, quiet):
    """Write a synthetic dataset of one LOOK to OUT in Pascal VOC layout.

    Looks: glyphs (classes a, k, r, seven: rendered characters on paper), signs (arrow, ring,
    stop, yield: road signs whose colour carries the class, in a street, partly occluded) and
    cells (oval, pair, round, spiky: 4-15 small blobs per image on a dark noisy field). Hard
    objects are marked difficult. Splits: test (40% of the images) and trainval, so that
    training carves its own validation split; --with-val also writes train and val. OUT must
    be new, empty, or an earlier scenery dataset (which is regenerated).

    Example: sppdet scenery data/signs --look signs --images 200 --seed 0
    """
    from sppdet.data.scenery import CLASSES, check_output, write_scenery
    with library_errors():
        root = check_output(out)
        with progress_bar(images, f"scenery {look}", quiet=quiet) as advance:
            summary = write_scenery(root, look, images=images, seed=seed, workers=workers or default_workers(),
                                    progress=advance, with_val=with_val)
    objects = Table(title=f"sppdet scenery {look}: {images} images, seed {seed}")
    objects.add_column("class")
    objects.add_column("objects", justify="right")
    objects.add_column("difficult", justify="right")
    for name in CLASSES[look]:
        objects.add_row(plain(name), str(summary.objects[name]), str(summary.difficult[name]))
    objects.add_row("all", str(sum(summary.objects.values())), str(sum(summary.difficult.values())),
                    style="bold")
    splits = Table()
    splits.add_column("split")
    splits.add_column("images", justify="right")
    for name, count in summary.splits.items():
        splits.add_row(plain(name), str(count))
    stdout_console.print(objects)
    stdout_console.print(splits)
    stdout_console.print(f"dataset: {summary.root}", soft_wrap=True, markup=False, highlight=False)
