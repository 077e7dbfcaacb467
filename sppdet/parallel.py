"""Mapping a per-image function over processes, sharding a split, and progress callbacks.

Stages are written as a pure function of one image id (plus picklable settings) that writes
its own cache file; this module decides where that function runs. ``workers=1`` runs inline
(no process start-up, easiest to debug); more workers use a ``spawn`` process pool, so no
torch/OpenCV thread state is inherited from the parent.

Progress: library loops accept ``progress: Progress | None``, a callable invoked as
``progress(advance, **fields)`` (e.g. ``progress(1, loss=0.3)``) after each unit of work. The
library never renders anything; the CLI passes a rich progress bar.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from typing import Callable, ContextManager, Iterable, Iterator, Sequence, TypeVar

from sppdet.errors import ConfigError

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


def _init_worker() -> None:
    # One thread per worker: the pool already uses every core.
    import cv2
    import torch

    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def map_unordered(fn: Callable[[T], R], items: Iterable[T], workers: int = 1) -> Iterator[R]:
    """Yield ``fn(item)`` for every item, in completion order when ``workers > 1``.

    ``fn`` and the items must be picklable (module-level function, plain data) for workers > 1.
    """
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        for item in items:
            yield fn(item)
        return
    context = multiprocessing.get_context("spawn")
    with context.Pool(min(workers, len(items)), initializer=_init_worker) as pool:
        yield from pool.imap_unordered(fn, items, chunksize=1)
