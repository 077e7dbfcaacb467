"""Proposals and features of a split computed on demand, exactly as the trained detector expects.

``sppdet eval --split test`` after ``sppdet train`` finds no proposals or features for the test
images: ``train`` never touches the test split. :func:`ensure_split_caches` computes what is
missing with the settings the work directory recorded (the ``propose`` config; the ``extract``
trunk, scales, target and precision, plus any test-time views), into the same cache folders, so
the SVMs trained on those features score them. Images already cached are only checked.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from sppdet.errors import WorkdirError
from sppdet.stages.extract import prepare_extract_like, run_extract
from sppdet.workdir.caches import features_info
from sppdet.parallel import ProgressFactory, no_progress_bar
from sppdet.stages.propose import prepare_propose, run_propose
from sppdet.workdir.records import extract_record
from sppdet.workdir.records import recorded_propose_config
from sppdet.workdir.store import WorkDir


def ensure_split_caches(work: WorkDir, split: str, views: Sequence[str] = (),
                        data_root: str | os.PathLike | None = None,
                        progress_bar: ProgressFactory = no_progress_bar, device: str = "auto") -> dict[str, int]:
    """Compute the missing proposals and features (and ``views``' features) of ``split``; returns
    how many images each step computed (``{"propose": n, "extract": m}``). ``WorkdirError`` if the
    work directory records no extract (nothing to be consistent with). A ``data_root`` other than
    the recorded dataset computes nothing (the caches belong to the recorded one)."""
    record = extract_record(work)
    if not record:
        raise WorkdirError(f"{work.root}: no conv features recorded; run sppdet train (or extract) first")
    if data_root is not None and Path(data_root).expanduser().resolve() != work.data_root():
        return {"propose": 0, "extract": 0}  # another dataset: its caches are not this detector's to make
    propose_job = prepare_propose(work, recorded_propose_config(work), split)
    computed = {"propose": len(propose_job.todo), "extract": 0}
    if propose_job.todo:
        with progress_bar(len(propose_job.todo), f"propose {split}") as advance:
            run_propose(propose_job, progress=advance)
    config = features_info(work.root / record["folder"]).config
    weights = "none" if config.weights == "none" else work.recorded_path(record.get("weights_source"))
    job = prepare_extract_like(work, split, config, weights, device, views=views)
    if job.folder.name != record["folder"]:
        raise WorkdirError(f"{work.root / record['folder']}: the recorded trunk no longer rebuilds the same "
                           f"features (got {job.folder.name}); restore its weights file or re-run sppdet train")
    with progress_bar(len(job.image_ids), f"extract {split}") as advance:
        computed["extract"] = run_extract(job, progress=advance).computed
    return computed
