"""The ``propose`` stage: selective search over a split, cached per image, with a recall summary.

Cache: one file ``<image_id>.npy`` (float32 ``[N, 4]``, ``sppdet.structures.boxes`` convention, the order of
``sppdet.models.selective_search``) per image in the work directory folder ``proposals-<hash>``. The hash covers
the ``ProposeConfig`` and the dataset root (so proposals of another dataset with the same image
ids are never reused); proposals do not depend on the split, so all splits share the folder.
Files are written atomically; a re-run skips an image whose file loads as a valid array and was
computed from the image's current content (``<image_id>.source.json``, ``sppdet.workdir.caches``),
and recomputes a missing, corrupt or stale one: an image regenerated in place recomputes that
image only. ``--shard i/n`` does every n-th image of the split.

Busy: while computing, a run holds the folder's lock (``sppdet.workdir.store.stage_lock``), so a
second ``sppdet propose`` on the same folder stops with one line instead of duplicating the work;
shards ``i/n`` lock only their own part and run side by side.

Images run in parallel over ``workers`` processes (``sppdet.parallel.map_unordered``, OpenCV
limited to one thread in each), since OpenCV's selective search is single-threaded. A worker
that dies (e.g. killed by the out-of-memory killer) is one line naming its image, never a hang;
the images finished so far are kept. ``executor="ray"`` runs the same per-image function in
batches as Ray tasks instead (``sppdet.executors``): the same files, byte for byte.

Records: ``--data`` (when given) becomes the work directory's dataset root (one work directory
holds one dataset: another root than the recorded one is a ``WorkdirError``), and
``config.json["stages"]["propose"]`` holds the folder name (relative to the work directory), the
config and the dataset root; later stages find the proposals through :func:`proposals_dir` /
:func:`load_proposals`.

Summary (``summary-<split>.json`` in the folder): over every image of the split that has valid
proposals (after sharded runs, whatever the shards have done so far): proposals per image,
seconds per image of the images computed in this run, and the recall of the non-difficult
ground-truth boxes at IoU 0.5 and 0.7. A run that computes nothing rewrites it only when it
covers another number of images (e.g. the final unsharded run after shards that finished at
the same time), so a fully cached re-run writes nothing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from typing import Iterator
from pathlib import Path

import numpy as np

from sppdet.data.identity import image_signature
from sppdet.workdir.caches import proposal_path, read_valid, record_source, source_is_current
from sppdet.config import ProposeConfig
from sppdet.data.images import load_bgr
from sppdet.data.voc import VocDataset
from sppdet.executors import DEFAULT_EXECUTOR, check_executor, map_batches
from sppdet.parallel import (Progress, default_workers, map_unordered, no_progress, parse_shard,
                             select_shard)
from sppdet.models.selective_search import check_config, proposal_recall, selective_search
from sppdet.fileio import atomic_save_npy, atomic_write_json
from sppdet.workdir.records import PROPOSE_RECORD
from sppdet.workdir.store import WorkDir, stage_lock

STAGE = PROPOSE_RECORD
FOLDER_STAGE = "proposals"
RECALL_THRESHOLDS = (0.5, 0.7)


@dataclass
class ProposeJob:
    """A resolved ``propose`` run: the dataset, this shard's image ids, those still to compute,
    and the cache folder."""

    workdir: WorkDir
    dataset: VocDataset
    config: ProposeConfig
    folder: Path
    image_ids: list[str]
    todo: list[str]
    shard: tuple[int, int] = (1, 1)  # (i, n) of --shard i/n; (1, 1) when not sharded


@dataclass(frozen=True)
class ProposeSummary:
    """What a run found. Counts cover the split's images with valid proposals (``images`` of
    ``images_in_split``); ``computed`` and ``seconds_per_image`` (None if nothing was computed)
    cover this run; ``recall`` maps "0.5"/"0.7" to the recall of ``gt_boxes`` non-difficult boxes."""

    split: str
    folder: Path
    images: int
    images_in_split: int
    computed: int
    proposals_mean: float
    proposals_min: int
    proposals_max: int
    seconds_per_image: float | None
    wall_seconds: float
    gt_boxes: int
    recall: dict[str, float]


def prepare_propose(workdir: str | os.PathLike | WorkDir | None = None,
                    config: ProposeConfig = ProposeConfig(), split: str = "trainval",
                    data_root: str | os.PathLike | None = None, shard: str | None = None) -> ProposeJob:
    """Resolve a ``propose`` run (nothing is computed): check the config, open the split (the
    recorded dataset root unless ``data_root`` is given, which is then recorded), pick this shard's
    images and find those without a valid, current cache file (:func:`is_cached`)."""
    check_config(config)
    shard_index, shard_count = parse_shard(shard)
    work = workdir if isinstance(workdir, WorkDir) else WorkDir(workdir)
    root = work.data_root(data_root)
    dataset = VocDataset(root, split, classes=(), split_dir=work.split_dir(root))  # no class list needed
    if data_root is not None:
        work.set_data_root(root)
    folder = work.stage_dir(FOLDER_STAGE, config, inputs={"data_root": str(root)})
    image_ids = select_shard(dataset.image_ids, shard_index, shard_count)
    todo = [i for i in image_ids if not is_cached(folder, dataset, i)]
    return ProposeJob(work, dataset, config, folder, image_ids, todo, (shard_index, shard_count))


def is_cached(folder: Path, dataset: VocDataset, image_id: str) -> bool:
    """Whether ``image_id``'s proposals in ``folder`` are a valid array computed from the current
    content of its image file (``sppdet.workdir.caches.source_is_current``)."""
    return (read_valid(proposal_path(folder, image_id)) is not None
            and source_is_current(folder, image_id, dataset.image_path(image_id)))


def _propose_image(task: tuple[str, str, str, ProposeConfig]) -> tuple[str, float]:
    """Worker: search one image and cache its boxes, then record the image's signature (taken
    before reading it) as their source; returns (image id, seconds)."""
    image_id, image_file, out_file, config = task
    start = time.perf_counter()
    signature = image_signature(image_file)
    boxes = selective_search(load_bgr(image_file), config)
    atomic_save_npy(out_file, boxes)
    record_source(Path(out_file).parent, image_id, signature)
    return image_id, time.perf_counter() - start


def _propose_batch(tasks: list[tuple[str, str, str, ProposeConfig]]) -> list[tuple[str, float]]:
    """A Ray task: :func:`_propose_image` of each task in turn."""
    return [_propose_image(task) for task in tasks]


def _task_image(task: tuple[str, str, str, ProposeConfig]) -> str:
    """The image file of a :func:`_propose_image` task (what a dead worker's error names)."""
    return task[1]


def _computed(tasks: list, workers: int, executor: str, ray_address: str | None) -> Iterator[list[tuple[str, float]]]:
    """The ``(image id, seconds)`` of :func:`_propose_image` over ``tasks``, in groups as they finish:
    one per image from the local pool, one per batch from Ray."""
    if executor == "ray":
        yield from map_batches(_propose_batch, tasks, address=ray_address, describe=_task_image)
        return
    for result in map_unordered(_propose_image, tasks, workers, describe=_task_image):
        yield [result]


def _summary_is_current(summary_file: Path, summary: ProposeSummary) -> bool:
    """Whether ``summary_file`` exists and covers as many images as ``summary``."""
    try:
        return json.loads(summary_file.read_text(encoding="utf-8")).get("images") == summary.images
    except (OSError, ValueError, AttributeError):
        return False


def run_propose(job: ProposeJob, workers: int | None = None, progress: Progress | None = None,
                executor: str = DEFAULT_EXECUTOR, ray_address: str | None = None) -> ProposeSummary:
    """Compute and cache the proposals of ``job.todo`` over ``workers`` processes (default: all
    cores), or as Ray tasks with ``executor="ray"`` (``sppdet.executors.map_batches``; ``workers``
    unused), record the stage, and write (unless nothing was computed and it is current) and
    return the split's summary. While computing it holds the folder's lock (module docstring,
    "Busy"; ``WorkdirError`` if another process computes the same folder or shard).

    ``progress(n)`` is called as images finish: one at a time locally, a batch at a time on Ray.
    """
    progress = progress or no_progress
    check_executor(executor)
    start = time.perf_counter()
    seconds = []
    if job.todo:
        with stage_lock(job.folder, job.shard, shardable=True):
            job.todo = [i for i in job.todo if not is_cached(job.folder, job.dataset, i)]  # done meanwhile
            tasks = [(i, str(job.dataset.image_path(i)), str(proposal_path(job.folder, i)), job.config)
                     for i in job.todo]
            for finished in _computed(tasks, workers or default_workers(), executor, ray_address):
                seconds.extend(took for _, took in finished)
                progress(len(finished))
    job.workdir.record_stage(STAGE, {"folder": job.folder.name, "config": job.config,
                                     "data_root": str(job.dataset.root)})
    summary = summarise(job, seconds, time.perf_counter() - start)
    summary_file = job.folder / f"summary-{job.dataset.split}.json"
    if seconds or not _summary_is_current(summary_file, summary):  # a fully cached re-run writes nothing
        atomic_write_json(summary_file, dataclasses.asdict(summary))
    return summary


def summarise(job: ProposeJob, seconds: list[float], wall_seconds: float) -> ProposeSummary:
    """The summary of ``job``'s split over the images whose proposals are cached and valid."""
    gt_list, proposal_list = [], []
    for image_id in job.dataset.image_ids:
        boxes = read_valid(proposal_path(job.folder, image_id))
        if boxes is None:
            continue
        annotation = job.dataset.annotation(image_id)
        gt_list.append(annotation.boxes[~annotation.difficult])
        proposal_list.append(boxes)
    counts = np.array([len(b) for b in proposal_list], dtype=np.int64)
    recall = proposal_recall(gt_list, proposal_list, RECALL_THRESHOLDS)
    return ProposeSummary(
        split=job.dataset.split, folder=job.folder, images=len(counts),
        images_in_split=len(job.dataset.image_ids), computed=len(seconds),
        proposals_mean=float(counts.mean()) if len(counts) else 0.0,
        proposals_min=int(counts.min()) if len(counts) else 0,
        proposals_max=int(counts.max()) if len(counts) else 0,
        seconds_per_image=float(np.mean(seconds)) if seconds else None,
        wall_seconds=wall_seconds, gt_boxes=int(sum(len(g) for g in gt_list)),
        recall={str(t): float(r) for t, r in zip(RECALL_THRESHOLDS, recall)})


