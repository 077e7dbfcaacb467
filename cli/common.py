"""Options shared by several commands, error translation, warnings and progress bars.

``sppdet`` raises ``SppdetError`` for user mistakes; :func:`library_errors` turns them, and any
``OSError`` from the environment (read-only or full disk, permissions), into
``click.ClickException`` (one line, exit 1). Bad command lines are ``click.UsageError`` (exit 2).
Warnings are shown as one line ``warning: MESSAGE`` (:func:`show_warnings_as_lines`), as the
commands print their own warnings.

Rich interprets ``[...]`` in printed strings and table cells as markup: any text that comes from a
dataset, a path or the command line goes through :func:`plain` first (a class named ``x[/b]``
must print as itself, not raise ``MarkupError``).
"""

from __future__ import annotations

import contextlib
import errno
import warnings
from typing import Iterator

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task,
                           TextColumn, TimeElapsedColumn, TimeRemainingColumn)
from rich.text import Text

from sppdet.errors import ConfigError, SppdetError
from sppdet.workdir.methods import DEFAULT_METHOD, METHODS

stderr_console = Console(stderr=True)
stdout_console = Console()


def plain(value: object) -> str:
    """``str(value)`` escaped for rich markup, so it prints exactly as it is."""
    return escape(str(value))


#: what to do about an OSError, by errno (the rest: check the file and run again)
_OS_ERROR_ADVICE = {
    errno.ENOSPC: "the disk is full; free some space (or use another --workdir) and run again",
    errno.EDQUOT: "the disk quota is exhausted; free some space (or use another --workdir) and run again",
    errno.EROFS: "the file system is read-only; use a writable --workdir",
    errno.EACCES: "permission denied; make it writable (readable) for you or use another --workdir",
    errno.EPERM: "operation not permitted; make it writable for you or use another --workdir",
}


def os_error_line(exc: OSError) -> str:
    """One line for an ``OSError``: the file it is about, what happened and what to do."""
    where = exc.filename if exc.filename is not None else "a file"
    reason = exc.strerror or str(exc) or type(exc).__name__
    advice = _OS_ERROR_ADVICE.get(exc.errno, "check the file and the disk, then run again")
    return f"{where}: {reason}; {advice}"


@contextlib.contextmanager
def library_errors() -> Iterator[None]:
    """Re-raise ``SppdetError`` and ``OSError`` as a one-line ``click.ClickException``."""
    try:
        yield
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    except SppdetError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(os_error_line(exc)) from None


_shown_warnings: set[str] = set()


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` as one line on stderr: ``warning: MESSAGE`` for sppdet's own
    warnings, ``warning: CATEGORY: MESSAGE`` for others; never a line of source code."""
    from sppdet.errors import SppdetWarning

    text = (str(message).splitlines() or [""])[0]
    if not issubclass(category, SppdetWarning):
        text = f"{category.__name__}: {text}"
    if text in _shown_warnings:  # e.g. one annotation parsed by two steps of a command
        return
    _shown_warnings.add(text)
    stderr_console.print(f"warning: {text}", style="yellow", markup=False, highlight=False, soft_wrap=True)


def show_warnings_as_lines() -> None:
    """Show every warning of this process as one line (:func:`_show_warning`), each once."""
    _shown_warnings.clear()
    warnings.showwarning = _show_warning


def workdir_option(func):
    """``--workdir DIR`` (env SPPDET_WORKDIR, default ./sppdet-work)."""
    return click.option(
        "--workdir", type=click.Path(file_okay=False), envvar="SPPDET_WORKDIR",
        default="sppdet-work", show_default=True, show_envvar=True,
        help="Work directory holding every stage's cache.",
    )(func)


def quiet_option(func):
    """``--quiet``: no progress bars."""
    return click.option("--quiet", "-q", is_flag=True, help="No progress bars.")(func)


def shard_option(func):
    """``--shard i/n``: process only every n-th image starting at the i-th."""
    return click.option(
        "--shard", metavar="i/n", default=None,
        help="Process only shard i of n (1-based); shards 1..n cover the split once.",
    )(func)


def executor_option(func):
    """``--executor local|ray`` and ``--ray-address ADDRESS`` (``sppdet.executors``)."""
    from sppdet.executors import DEFAULT_EXECUTOR, EXECUTORS

    func = click.option(
        "--ray-address", default=None, metavar="auto|HOST:PORT",
        help="With --executor ray: the Ray cluster to run on (auto: the running one, an error if none). "
             "Default: $RAY_ADDRESS or a cluster `ray start` began on this machine, else a local Ray "
             "started for this run.",
    )(func)
    return click.option(
        "--executor", type=click.Choice(EXECUTORS), default=DEFAULT_EXECUTOR, show_default=True,
        help="Where images are computed: local (this machine) or ray (batches of images as Ray tasks "
             "on a cluster; same cache files; pip install 'sppdet[ray]').",
    )(func)


def check_executor_options(executor: str, ray_address: str | None) -> None:
    """``--ray-address`` only with ``--executor ray``; with it, Ray must be installed (one line)."""
    from sppdet.executors import require_ray

    if ray_address is not None and executor != "ray":
        raise click.UsageError("--ray-address applies to --executor ray")
    if executor == "ray":
        with library_errors():
            require_ray()


def split_option(default: str):
    """``--split NAME`` with a per-command default."""
    return click.option("--split", default=default, show_default=True,
                        help="Dataset split (ImageSets/Main/<split>.txt).")


def data_option(func):
    """``--data ROOT``: the VOC-layout dataset (recorded in the work directory by propose)."""
    return click.option(
        "--data", "data_root", type=click.Path(exists=True, file_okay=False), default=None,
        help="VOC-layout dataset root (default: the one recorded in the work directory).",
    )(func)


def method_option(func):
    """``--method spp|rcnn``: SPP-net windows (default) or the R-CNN baseline (``sppdet.workdir.methods``)."""
    return click.option(
        "--method", type=click.Choice(METHODS), default=DEFAULT_METHOD, show_default=True,
        help="Window features: spp pools each window on the image's conv5 (SPP-net); rcnn warps "
             "each window and runs the trunk on the crop (the R-CNN baseline).",
    )(func)


def _parse_views(ctx, param, value: str | None) -> tuple[str, ...] | None:
    from sppdet.ops.views import check_views
    if value is None:
        return None
    try:
        return check_views([v.strip() for v in value.split(",") if v.strip() and v.strip() != "none"])
    except ConfigError as exc:
        raise click.BadParameter(str(exc).removeprefix("--tta ")) from None  # the option is named already


def tta_option(help_text: str):
    """``--tta VIEWS``: test-time views of each image (``sppdet.ops.views``), comma-separated."""
    return click.option("--tta", default=None, metavar="hflip[,vflip,rot180]", callback=_parse_views,
                        help=help_text + " hflip suits natural images; vflip and rot180 only classes "
                                         "that stay themselves upside down (the demo's shapes). "
                                         "Default: none, or the views `sppdet train` chose on val "
                                         "(for eval and detect); --tta none for none.")


def device_option(func):
    """``--device auto|cpu|cuda``."""
    return click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
                        show_default=True, help="auto uses CUDA when available.")(func)


class RateColumn(ProgressColumn):
    """Items per second (e.g. images/s)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("  -/s" if speed is None else f"{speed:5.2f}/s")


@contextlib.contextmanager
def progress_bar(total: int, description: str, quiet: bool = False, fields: tuple[str, ...] = ()):
    """A rich progress bar on stderr; yields ``advance(n=1, **fields)`` (a ``sppdet`` Progress).

    ``fields`` names extra values (e.g. ``loss``) shown after the bar.
    """
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               RateColumn(), TimeElapsedColumn(),
               TimeRemainingColumn()]
    columns += [TextColumn(f"{name}={{task.fields[{name}]}}") for name in fields]
    with Progress(*columns, console=stderr_console, disable=quiet, transient=False) as progress:
        task = progress.add_task(plain(description), total=total, **{name: "-" for name in fields})

        def advance(n: int = 1, **values) -> None:
            shown = {k: (f"{v:.4g}" if isinstance(v, float) else plain(v)) for k, v in values.items()}
            progress.update(task, advance=n, **shown)

        yield advance
