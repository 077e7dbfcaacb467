"""Functions that tests/test_faults.py runs in spawned processes. They live in their own module,
which imports only what they need, because a ``spawn`` child imports the module of the function
it runs: importing test_faults (torch, OpenCV, the CLI) would take seconds in every child."""

from __future__ import annotations

import os
import signal

from sppdet.workdir.store import WorkDir


def record_many(work: str, writer: int, count: int) -> None:
    """Record ``count`` stages and as many top-level keys, all named after ``writer``, one update
    of ``config.json`` each (as concurrent stages of several runs would)."""
    workdir = WorkDir(work)
    for index in range(count):
        workdir.record_stage(f"w{writer}-s{index}", {"writer": writer, "index": index})
        workdir.update_config(**{f"w{writer}-k{index}": index})


def die_on_boom(item: str) -> str:
    """``item`` upper-cased, except that the process kills itself with SIGKILL (as the OOM killer
    does) on ``"boom"``."""
    if item == "boom":
        os.kill(os.getpid(), signal.SIGKILL)
    return item.upper()


def hold_stage_lock(folder: str, shard: tuple[int, int], ready) -> None:
    """Hold the busy lock of stage folder ``folder`` (shard ``(i, n)``) as a computing stage
    would: set ``ready`` once it is held, then keep it until killed (60 s at most)."""
    import time
    from pathlib import Path

    from sppdet.workdir.store import stage_lock

    with stage_lock(Path(folder), tuple(shard), shardable=True):
        ready.set()
        time.sleep(60)


def sigint_ignored(_item) -> bool:
    """In a pool worker: whether Ctrl-C (SIGINT) is ignored there."""
    import signal

    return signal.getsignal(signal.SIGINT) == signal.SIG_IGN
