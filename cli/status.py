"""``sppdet status``: which stages of the work directory are done, with what settings, what next."""

from __future__ import annotations

import click
from rich.table import Table

from cli.common import library_errors, plain, quiet_option, stdout_console, workdir_option
from sppdet.stages.status import work_status
from sppdet.workdir.store import WorkDir


@click.command("status")
@workdir_option
@quiet_option
def status(workdir, quiet):
    """Show each stage of the work directory: done or not, its split and key settings, the
    choices `sppdet train` made on val, and the command to run next.

    Example: sppdet status --workdir sppdet-work
    """
    with library_errors():
        state = work_status(WorkDir(workdir))
    table = Table(title=f"sppdet status: {plain(state.root)}")
    for column in ("stage", "done", "split", "settings", "folder"):
        table.add_column(column)
    for stage in state.stages:
        table.add_row(plain(stage.name), "yes" if stage.done else "no", plain(stage.split), plain(stage.settings),
                      plain(stage.folder))
    stdout_console.print(table)
    stdout_console.print(f"dataset: {state.data_root or 'none recorded'}", markup=False, highlight=False)
    if state.selection:
        stdout_console.print(f"chosen on val: {state.selection}", markup=False, highlight=False)
    stdout_console.print(f"next: {state.next_step}", markup=False, highlight=False)
