"""Mapping a per-image function over processes, sharding a split, and progress callbacks.

Stages are written as a pure function of one image id (plus picklable settings) that writes
its own cache file; this module decides where that function runs. ``workers=1`` runs inline
(no process start-up, easiest to debug); more workers use a ``spawn`` process pool, so no
torch/OpenCV thread state is inherited from the parent. A worker that dies (e.g. killed by the
out-of-memory killer) is one ``WorkerError`` line naming the item it was on, never a hang.

Progress: library loops accept ``progress: Progress | None``, a callable invoked as
``progress(advance, **fields)`` (e.g. ``progress(1, loss=0.3)``) after each unit of work. The
library never renders anything; the CLI passes a rich progress bar.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, ContextManager, Iterable, Iterator, Sequence, TypeVar

from sppdet.errors import ConfigError, WorkerError

T = TypeVar("T")
R = TypeVar("R")

Progress = Callable[..., None]


#: ``progress_bar(total, description)``: a context manager yielding a :data:`Progress` callback
#: (the CLI passes rich bars); drivers that run several stages take one to show each stage's bar.
ProgressFactory = Callable[[int, str], ContextManager[Progress]]


def no_progress(advance: int = 1, **fields) -> None:
    """A progress callback that does nothing."""


@contextlib.contextmanager
def no_progress_bar(total: int, description: str) -> Iterator[Progress]:
    """A :data:`ProgressFactory` that shows nothing."""
    yield no_progress


def default_workers() -> int:
    """All cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"i/n"`` (1-based, ``1 <= i <= n``) as ``(i, n)``; ``None`` means ``(1, 1)``."""
    if text is None:
        return 1, 1
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text!r}: expected i/n, e.g. 1/4") from None
    if not 1 <= index <= count:
        raise ConfigError(f"--shard {text!r}: need 1 <= i <= n")
    return index, count


def select_shard(items: Sequence[T], index: int, count: int) -> list[T]:
    """Every ``count``-th item starting at ``index - 1``: shards 1..n cover ``items`` exactly once."""
    return list(items[index - 1 :: count])


#: In a pool worker: the queue on which it announces ``(pid, item index)`` before each item, so
#: the parent can name the item a dead worker was on (None outside a pool).
_STARTED = None


def _init_worker(started=None) -> None:
    """Set up a pool worker: one thread (the pool already uses every core); keep ``started``."""
    global _STARTED
    import cv2
    import torch

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    _STARTED = started


def _run_item(fn: Callable[[T], R], index: int, item: T) -> R:
    """In a pool worker: announce ``index`` on the started queue, then compute ``fn(item)``."""
    if _STARTED is not None:
        _STARTED.put((os.getpid(), index))
    return fn(item)


def map_unordered(fn: Callable[[T], R], items: Iterable[T], workers: int = 1,
                  describe: Callable[[T], str] = str) -> Iterator[R]:
    """Yield ``fn(item)`` for every item, in completion order when ``workers > 1``.

    ``fn`` and the items must be picklable (module-level function, plain data) for workers > 1.
    A worker that dies (killed, e.g. by the out-of-memory killer) raises :class:`WorkerError`
    naming ``describe(item)`` of the item it was on, never a hang: a ``ProcessPoolExecutor``
    notices the death (a ``multiprocessing.Pool`` would wait for the lost item for ever).
    """
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        for item in items:
            yield fn(item)
        return
    yield from _pool_map(fn, items, min(workers, len(items)), describe)


def _pool_map(fn: Callable[[T], R], items: list[T], workers: int,
              describe: Callable[[T], str]) -> Iterator[R]:
    """:func:`map_unordered` over a ``spawn`` process pool of ``workers`` processes."""
    context = multiprocessing.get_context("spawn")
    tracker = _Tracker(context.SimpleQueue())
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                               initargs=(tracker.started,))
    try:
        with _sigint_ignored_by_children():
            futures = {pool.submit(_run_item, fn, index, item): index for index, item in enumerate(items)}
        tracker.processes = {p.pid: p for p in multiprocessing.active_children()}  # all spawned by now
        for future in as_completed(futures):
            try:
                result = future.result()
            except BrokenProcessPool:
                pool.shutdown(wait=True)  # the workers are joined: their exit codes are known
                raise WorkerError(_death_message([describe(items[i]) for i in tracker.dead_items()])) from None
            tracker.finish(futures[future])
            yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # Ctrl-C, an error: start no more items


@contextlib.contextmanager
def _sigint_ignored_by_children() -> Iterator[None]:
    """Ignore SIGINT while pool workers are spawned (the pool spawns them on submit): a spawned
    interpreter keeps an ignored SIGINT, so Ctrl-C, which the terminal sends to the whole process
    group, interrupts only the parent; it stops handing out items, lets the running ones finish
    (their files are written atomically) and exits with one line, instead of every worker printing
    a KeyboardInterrupt traceback. Outside the main thread (where signals cannot be set) a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class _Tracker:
    """Which item each pool worker is on, from the ``(pid, index)`` announcements of
    :func:`_run_item` (drained after every result, so the pipe never fills up)."""

    def __init__(self, started):
        self.started = started
        self.processes: dict = {}  # pid -> multiprocessing.Process
        self.running: dict[int, int] = {}  # item index -> pid
        self.finished: set[int] = set()

    def drain(self) -> None:
        while not self.started.empty():
            pid, index = self.started.get()
            if index not in self.finished:
                self.running[index] = pid

    def finish(self, index: int) -> None:
        self.drain()
        self.finished.add(index)
        self.running.pop(index, None)

    def dead_items(self) -> list[int]:
        """The items whose worker died on its own: not terminated by the pool after the death
        (exit code -SIGTERM); every unfinished started item when that cannot be told."""
        self.drain()
        dead = [index for index, pid in sorted(self.running.items())
                if self._exit_code(pid) not in (0, -signal.SIGTERM)]
        return dead or sorted(self.running)

    def _exit_code(self, pid: int) -> int | None:
        process = self.processes.get(pid)
        return None if process is None else process.exitcode


def _death_message(names: list[str]) -> str:
    """The one line for a dead worker that was on the items ``names``."""
    # no name: it died before announcing an item, i.e. while starting (importing torch, OpenCV)
    on = f"while on {' or '.join(names)}" if names else "before it started on an image"
    return (f"a worker process died (killed, out of memory?) {on}; "
            "re-run to continue: finished images are kept")
