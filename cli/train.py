"""``sppdet train``: propose -> pretrain -> extract -> finetune -> train-svm -> train-bbox in one
command, every data-dependent choice made on a validation split (``sppdet.pipelines.train``)."""

from __future__ import annotations

import click
from rich.table import Table

from cli.common import (data_option, device_option, library_errors, plain, progress_bar, quiet_option,
                        stderr_console, stdout_console, workdir_option)
from sppdet.errors import ConfigError


def _parse_augment(ctx, param, value: str | None):
    from sppdet.models.object_copies import check_augmentations
    if value is None:
        return None
    try:
        return check_augmentations([v.strip() for v in value.split(",") if v.strip() and v.strip() != "none"])
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command("train")
@data_option
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="TOML file of stage options ([propose], [pretrain], [extract], [finetune], "
                   "[train-svm], [train-bbox], [select]; README, \"Settings that follow your data\").")
@click.option("--augment", default=None, metavar="flip[,rot90,channels]", callback=_parse_augment,
              help="What the classes stay under: flip (default, natural images), rot90 (any quarter "
                   "turn), channels (any colour order), or none. Pretraining crops are augmented "
                   "with them, and object copies and test-time views are tried on val only where "
                   "they keep the class.")
@click.option("--val-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              help="Share of trainval carved as the validation split when the dataset has no "
                   "val.txt (default 0.2, stratified by class).")
@click.option("--pretrain-minutes", type=click.FloatRange(min=0), default=None,
              help="Time budget of pretraining: fewer epochs than the data rule's when a short timing "
                   "probe says they would not fit (0: no budget, the default).")
@click.option("--print-config", is_flag=True,
              help="Print the effective settings as a TOML file for --config, each with where it "
                   "comes from (default, data rule, file, flag), then stop.")
@device_option
@workdir_option
@quiet_option
def train(data_root, config_file, augment, val_fraction, pretrain_minutes, print_config, device, workdir, quiet):
    """Train the whole detector on a VOC-layout dataset, choosing settings on a validation split.

    Runs propose, pretrain, extract, finetune, train-bbox and train-svm (the same functions as
    those commands, cached the same way: a re-run skips what is done, an interrupted run
    continues). The SVM layer, C, object copies and test-time views are chosen by the mAP on
    val (the dataset's val.txt, or 20% of trainval carved by sppdet), then the SVMs and box
    regressors are refit on train+val. The test split is never read: score it afterwards with
    `sppdet eval --split test`.

    Example: sppdet train --data data/VOC2007 && sppdet eval --split test
    """
    from sppdet.pipelines.train import prepare_train, run_train

    with library_errors():
        plan = prepare_train(workdir, data_root, config_file, augment, val_fraction, device, pretrain_minutes)
        table = Table(title="sppdet train: settings", show_lines=False)
        for column in ("setting", "value", "from"):
            table.add_column(column)
        for name, value, source in plan.settings.rows():
            if source != "default":
                table.add_row(plain(name), plain(value), plain(source))
        if print_config:
            click.echo(plan.settings.to_toml() + f"# {plan.splits.describe()}")
            return
        if not quiet:
            stderr_console.print(table)
        stderr_console.print(plan.splits.describe(), markup=False, highlight=False)

        def bar(total: int, description: str):
            return progress_bar(total, description, quiet=quiet)

        result = run_train(plan, progress_bar=bar,
                           log=lambda line: stderr_console.print(line, markup=False, highlight=False, soft_wrap=True))
    times = Table(title=f"sppdet train: {result.seconds:.0f} s, val mAP {result.selection.val_map:.4f}")
    times.add_column("step")
    times.add_column("seconds", justify="right")
    times.add_column("result")
    for entry in result.times:
        times.add_row(plain(entry.name), f"{entry.seconds:.1f}", plain(entry.note))
    stdout_console.print(times)
    chosen = result.selection
    stdout_console.print(
        f"chosen on {plan.splits.val}: {chosen.describe()} (val mAP {chosen.val_map:.4f}, models trained on "
        f"{plan.splits.train}); final SVMs and regressors refit on {plan.splits.final}",
        markup=False, highlight=False)
    stdout_console.print(f"summary: {result.summary}", soft_wrap=True, markup=False, highlight=False)
    stdout_console.print("next: sppdet eval --split test", markup=False, highlight=False)
