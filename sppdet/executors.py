"""Where a stage's per-image work runs: this process and its pool (``local``) or a Ray cluster (``ray``).

``sppdet propose``, ``extract`` (both methods) and ``detect`` take ``--executor local|ray``. The
local executor is ``sppdet.parallel``; this module is the Ray one. A stage hands
:func:`map_batches` a picklable function of a list of items (a module-level function, or a
``functools.partial`` of one with plain settings and, for the trunk stages, the built trunk) that
computes each item and writes its per-image cache files atomically through the very code the
local path runs, so a Ray run writes byte for byte the files a local run writes, and a killed
Ray run resumes like a killed local one. The stage, in the driver, decides what to compute before
the map and writes its records (``config.json``, summaries) after it: tasks never touch shared
state.

Tasks: each batch of items is one Ray task needing one CPU (and one GPU when ``num_gpus=1``),
run with one OpenCV and one torch thread, as many side by side as the cluster has CPUs. The
function is put in Ray's object store once; each task deserialises it once, so a trunk inside it
is built once per task, never per image. Results come back in completion order.

Connecting (``address``): a Ray this process already started is used as it is; None lets
``ray.init`` look for a running cluster ($RAY_ADDRESS, else one ``ray start`` began on this
machine) and otherwise start a local Ray for the run, shut down after it; ``"auto"`` requires a
running cluster; ``host:port`` or ``ray://host:port`` connects there. Every node must see the
dataset and the work directory at the same paths (a shared filesystem) and have sppdet installed.

Failures: a task whose worker dies (killed, out of memory, a lost node) is run again by Ray, up
to ``max_retries`` times; a retried batch recomputes its images (the same bytes, renamed over the
same files). After the last retry, a :class:`~sppdet.errors.WorkerError` line names the batch's
items. A ``SppdetError`` or ``OSError`` raised in a task (an unreadable image, a full disk) is
raised again in the driver as itself, one line. Either way, and on Ctrl-C, the tasks not yet
finished are cancelled and the images finished so far are kept.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import socket
from typing import Callable, Iterator, Sequence, TypeVar

from sppdet.errors import ConfigError, SppdetError, WorkerError

T = TypeVar("T")
R = TypeVar("R")

EXECUTORS = ("local", "ray")
DEFAULT_EXECUTOR = "local"
INSTALL_HINT = "pip install 'sppdet[ray]'"
#: batches per cluster CPU when the batch size is automatic: enough tasks that the last ones
#: finish close together, few enough that per-task costs (the trunk's transfer) stay small
TASKS_PER_CPU = 4
MAX_AUTO_BATCH = 16
#: tasks submitted at a time per cluster CPU (the rest wait in the driver, as plain items)
IN_FLIGHT_PER_CPU = 2
CONNECT_TIMEOUT_S = 10


class RayUnavailable(SppdetError):
    """``--executor ray`` was asked for, but Ray is not installed."""


def check_executor(name: str) -> str:
    """``name`` if it is one of :data:`EXECUTORS`, else ``ConfigError``."""
    if name not in EXECUTORS:
        raise ConfigError(f"--executor {name}: choose one of {', '.join(EXECUTORS)}")
    return name


def require_ray():
    """The ``ray`` module; ``RayUnavailable`` with the install line if it is not installed."""
    try:
        import ray
    except ImportError:
        raise RayUnavailable(f"--executor ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


@contextlib.contextmanager
def ray_session(address: str | None = None) -> Iterator[object]:
    """Yield the ``ray`` module connected as the module docstring ("Connecting") says; a Ray
    started here is shut down at the end. A cluster that cannot be reached is one
    ``SppdetError`` line."""
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    if address not in (None, "auto"):
        _check_reachable(address)
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.ERROR)
    except ConnectionError as exc:
        where = f"--ray-address {address}" if address else "Ray"
        raise SppdetError(f"{where}: no Ray cluster to connect to ({str(exc).splitlines()[0]}); start one "
                          "with `ray start --head`, or leave out --ray-address for a local Ray") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _check_reachable(address: str) -> None:
    """One ``SppdetError`` line if nothing listens at ``[ray://]host:port`` (Ray itself would
    retry for minutes before failing)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--ray-address {address}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise SppdetError(f"--ray-address {address}: cannot connect ({exc.strerror or exc}); is the Ray head "
                          "running there (`ray start --head`)?") from None


def auto_batch_size(items: int, cpus: float) -> int:
    """Items per task: about :data:`TASKS_PER_CPU` tasks per CPU, at most :data:`MAX_AUTO_BATCH`."""
    return max(1, min(MAX_AUTO_BATCH, math.ceil(items / max(1.0, cpus * TASKS_PER_CPU))))


def batches(items: Sequence[T], size: int) -> list[list[T]]:
    """``items`` cut into consecutive lists of ``size`` (the last one shorter)."""
    return [list(items[start:start + size]) for start in range(0, len(items), size)]


class _Failed:
    """A ``SppdetError`` or ``OSError`` a task raised, carried back to be raised in the driver."""

    def __init__(self, error: BaseException):
        self.error = error


def _run_batch(fn: Callable[[list[T]], list[R]], batch: list[T]) -> list[R] | _Failed:
    """In a Ray task: ``fn(batch)`` with one OpenCV and one torch thread (the task has one CPU)."""
    import cv2
    import torch

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    try:
        return fn(batch)
    except (SppdetError, OSError) as exc:
        return _Failed(exc)


def map_batches(fn: Callable[[list[T]], list[R]], items: Sequence[T], batch_size: int | None = None,
                address: str | None = None, *, num_gpus: int = 0, max_retries: int = 3,
                describe: Callable[[T], str] = str) -> Iterator[list[R]]:
    """Yield ``fn(batch)`` for consecutive batches of ``items``, each batch one Ray task, in the
    order the tasks complete (module docstring). ``batch_size`` None: :func:`auto_batch_size` for
    the cluster's CPUs. At most :data:`IN_FLIGHT_PER_CPU` tasks per CPU are submitted at a time,
    the next as each finishes (the driver's memory and Ray's bookkeeping stay flat for 100k images).
    ``fn`` and the items must be picklable; ``fn`` returns one result per item. ``describe(item)``
    names an item in the line of a task that died ``max_retries + 1`` times.
    """
    items = list(items)
    if not items:
        return
    with ray_session(address) as ray:
        cpus = ray.cluster_resources().get("CPU", 1)
        queue = iter(batches(items, batch_size or auto_batch_size(len(items), cpus)))
        task = ray.remote(_run_batch).options(num_cpus=1, num_gpus=num_gpus, max_retries=max_retries)
        fn_ref = ray.put(fn)
        pending = {}

        def submit(count: int) -> None:
            for batch in itertools.islice(queue, count):
                pending[task.remote(fn_ref, batch)] = batch

        try:
            submit(max(2, int(IN_FLIGHT_PER_CPU * cpus)))
            while pending:
                ray.wait(list(pending), num_returns=1)
                ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0)  # all finished by now
                for ref in ready:
                    batch = pending.pop(ref)
                    result = _result(ray, ref, batch, max_retries, describe)
                    submit(1)
                    yield result
        finally:
            for ref in pending:  # an error, Ctrl-C or a consumer that stopped: start no more batches
                ray.cancel(ref)


def _result(ray, ref, batch: list[T], max_retries: int, describe: Callable[[T], str]) -> list[R]:
    """The results of a finished task; its ``SppdetError`` or ``OSError`` raised as itself, its
    worker's death (after the retries) as a ``WorkerError`` naming the batch's items."""
    try:
        result = ray.get(ref)
    except ray.exceptions.RayTaskError:
        raise  # a bug in fn: its traceback
    except ray.exceptions.RayError as exc:
        names = ", ".join(describe(item) for item in batch)
        raise WorkerError(f"a Ray task died ({type(exc).__name__}, retried {max_retries} times) "
                          f"while on {names}; re-run to continue: finished images are kept") from None
    if isinstance(result, _Failed):
        raise result.error
    return result
