"""The ``sppdet`` command group: one subcommand per module in this package."""

from __future__ import annotations

import click

from sppdet import __version__
from cli.bench import bench
from cli.detect import detect
from cli.eval import eval_command
from cli.extract import extract
from cli.finetune import finetune
from cli.pretrain import pretrain
from cli.propose import propose
from cli.scenery import scenery
from cli.status import status
from cli.synth import synth
from cli.train import train
from cli.train_bbox import train_bbox
from cli.train_svm import train_svm


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sppdet")
def cli() -> None:
    """SPP-net object detection as cached stages.

    One command trains everything, choosing its settings on a validation split:
    sppdet train --data DATASET, then sppdet eval --split test and sppdet detect IMAGES.
    The single stages (propose -> pretrain -> extract -> finetune -> train-svm -> train-bbox)
    run the same steps one at a time; each caches its output in the work directory, and
    sppdet status shows what is done.

    Example: sppdet synth data/synth && sppdet train --data data/synth
    """


cli.add_command(bench)
cli.add_command(detect)
cli.add_command(eval_command)
cli.add_command(extract)
cli.add_command(finetune)
cli.add_command(pretrain)
cli.add_command(propose)
cli.add_command(scenery)
cli.add_command(status)
cli.add_command(synth)
cli.add_command(train)
cli.add_command(train_bbox)
cli.add_command(train_svm)


def main() -> None:
    """Console-script entry point."""
    cli()
