"""The ``sppdet`` command group: one subcommand per module in this package.

Commands are imported only when they run (or show their own ``--help``): ``sppdet --help`` lists
them from :data:`COMMANDS` without importing torch, OpenCV or scikit-learn, and each command
module imports those inside the command. ``tests/test_cli.py`` checks that :data:`COMMANDS`
says what each command's docstring says.
"""

from __future__ import annotations

import importlib
import os

import click

from sppdet import __version__
from sppdet.config import MAX_IMAGE_PIXELS, MAX_PIXELS_ENV

#: name -> (module, function, the first sentence of its docstring as ``sppdet --help`` shows it)
COMMANDS = {
    'bench': ('cli.bench', 'bench',
             "Measure sppdet against the paper's claims on this machine."),
    'data': ('cli.data', 'data', 'Import, check and show datasets in Pascal VOC layout.'),
    'detect': ('cli.detect', 'detect',
              "Detect objects in new images with the work directory's trained detector."),
    'eval': ('cli.eval', 'eval_command',
            "Score detections on a split with the Pascal VOC devkit's rules."),
    'export': ('cli.export', 'export',
               'Write the trained detector to one portable file for sppdet detect --model.'),
    'extract': ('cli.extract', 'extract',
               'Compute conv5 features of every image of a split, once per scale, and cache them.'),
    'finetune': ('cli.finetune', 'finetune',
                'Train the fc head (fc6, fc7, fc8) on cached SPP features, conv frozen as in the paper.'),
    'pretrain': ('cli.pretrain', 'pretrain',
                'Train the conv trunk on the dataset when no ImageNet weights exist.'),
    'propose': ('cli.propose', 'propose',
               'Run selective search on every image of a split and cache the boxes.'),
    'scenery': ('cli.scenery', 'scenery',
               'Write a synthetic dataset of one LOOK to OUT in Pascal VOC layout.'),
    'status': ('cli.status', 'status',
              ('Show each stage of the work directory: done or not, its split and key settings, the choices '
               '`sppdet train` made on val, and the command to run next.')),
    'synth': ('cli.synth', 'synth',
             'Write the built-in demo dataset to OUT in Pascal VOC layout.'),
    'train': ('cli.train', 'train',
             'Train the whole detector on a VOC-layout dataset, choosing settings on a validation split.'),
    'train-bbox': ('cli.train_bbox', 'train_bbox',
                  'Train one ridge box regressor per class on pooled conv5 features.'),
    'train-svm': ('cli.train_svm', 'train_svm',
                 "Train one linear SVM per class with R-CNN's hard-negative mining."),
}


class LazyGroup(click.Group):
    """A group whose commands are imported on first use (module docstring)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, function, _ = COMMANDS[name]
        return getattr(importlib.import_module(module), function)

    def invoke(self, ctx: click.Context):
        """Run the command; an ``OSError`` it let through (a full or read-only disk, a
        permission) is one line and exit 1 too, as ``cli.common.library_errors`` makes it (a
        broken pipe stays click's to handle)."""
        import errno
        try:
            return super().invoke(ctx)
        except OSError as exc:
            if exc.errno == errno.EPIPE:
                raise
            from cli.common import os_error_line
            raise click.ClickException(os_error_line(exc)) from None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        limit = formatter.width - 6 - max(map(len, COMMANDS))
        rows = [(name, _shortened(COMMANDS[name][2], limit)) for name in sorted(COMMANDS)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _shortened(text: str, limit: int) -> str:
    """``text`` cut at a word to at most ``limit`` characters, "..." marking a cut (as click does)."""
    if len(text) <= limit:
        return text
    return text[:max(limit - 3, 0)].rsplit(" ", 1)[0].rstrip(",;:") + "..."


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sppdet")
@click.option("--max-pixels", type=click.IntRange(min=1), default=None, metavar="PIXELS",
              help=f"Refuse images larger than this (width x height); default {MAX_IMAGE_PIXELS:,} "
                   f"or ${MAX_PIXELS_ENV}.")
def cli(max_pixels: int | None) -> None:
    """SPP-net object detection as cached stages.

    One command trains everything, choosing its settings on a validation split:
    sppdet train --data DATASET, then sppdet eval --split test and sppdet detect IMAGES.
    The single stages (propose -> pretrain -> extract -> finetune -> train-svm -> train-bbox)
    run the same steps one at a time; each caches its output in the work directory, and
    sppdet status shows what is done.

    Example: sppdet synth data/synth && sppdet train --data data/synth
    """
    from cli.common import show_warnings_as_lines  # here: rich stays out of `sppdet --help`
    show_warnings_as_lines()
    if max_pixels is not None:  # through the environment, so that worker processes see it too
        os.environ[MAX_PIXELS_ENV] = str(max_pixels)


def main() -> None:
    """Console-script entry point."""
    cli()
