"""Wall-clock timing of torch work, with CUDA synchronised around every timed call.

CUDA kernels run asynchronously: without ``torch.cuda.synchronize`` before and after, a timer
measures the launch, not the work. On the CPU the calls are plain ``time.perf_counter`` pairs.
:func:`interleaved_medians` alternates the functions being compared within each round, so load
from other processes on a shared machine hits all of them alike (used by ``sppdet.bench.speed`` and the
scripts in ``benchmarks/``).
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, Sequence, TypeVar

import torch

T = TypeVar("T")


def synchronize(device: torch.device | str) -> None:
    """Wait for queued CUDA work on ``device``; nothing on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], T], device: torch.device | str) -> tuple[T, float]:
    """``(fn(), seconds)``: wall time of one call, synchronising ``device`` before and after."""
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return result, time.perf_counter() - start


def interleaved_medians(fns: Sequence[Callable[[], object]], reps: int,
                        device: torch.device | str) -> list[float]:
    """Median seconds of each function over ``reps`` rounds after one untimed warm-up round; the
    functions alternate within a round (``fns[0]``, ``fns[1]``, ..., then again)."""
    if reps < 1:
        raise ValueError(f"interleaved_medians: reps must be >= 1, got {reps}")
    samples: list[list[float]] = [[] for _ in fns]
    for round_index in range(reps + 1):
        for fn, spent in zip(fns, samples):
            _, seconds = timed(fn, device)
            if round_index:
                spent.append(seconds)
    return [statistics.median(spent) for spent in samples]
