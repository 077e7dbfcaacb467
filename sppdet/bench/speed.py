"""Detection time per image of SPP-net (1 and 5 scales) against R-CNN on the same images,
proposals and model: the paper's timing table (docs/algorithm.md section 13; issue 6 section 2).

Shape shorthand: N windows per image (``proposals``), M R-CNN windows timed per image,
C conv5 channels, D = C * sum(n^2) pooled length (levels 1, 2, 3, 6), F the length the SVMs read
(fc7 width, or D when they read pool5), K classes. Boxes follow ``sppdet.structures.boxes``.

What each part times, per image, in seconds (the mean over the images):
    conv   SPP: resize to each scale (shorter side, ``sppdet.models.features.resize_to_scale``),
           preprocess, the conv trunk once per scale. R-CNN: preprocess, warp each window with
           16 px of context to 224 x 224 (``sppdet.models.crops.warp_crops``), the trunk on the crops in
           batches.
    pool   SPP: ``sppdet.ops.spp.pool_windows`` (scale choice, projection, pyramid pooling).
           R-CNN: the same pyramid over each crop's whole conv5 map (``sppdet.models.crops.pool_maps``).
    fc     fc6 + fc7 of the head over the N pooled vectors (0 when the SVMs read pool5).
    svm    the K linear SVMs over the N feature vectors (scaled, one matrix product).
    total  conv + pool + fc + svm. Selective search (``sppdet.models.selective_search``) runs once per image,
           its time is reported apart as ``proposals`` and left out of total, as in the paper.

Choices:
    * Same windows: selective search keeps up to N boxes; an image that yields fewer is topped up
      with seeded random boxes (:func:`top_up`: sides log-uniform from 16 px to the image side,
      anywhere inside it), so every method sees exactly N windows. How many were added is reported.
    * R-CNN on a subset: M windows drawn at random (seeded) are warped, run through the trunk
      and pooled; conv and pool are scaled by N / M (each crop is the same 224 x 224 work, so the
      cost is linear in windows). fc and svm run on N rows (the M pooled vectors repeated), so
      they are measured, not scaled.
    * Same load for all: per image the methods run in turn (spp_1, spp_5, rcnn), so other
      processes on the machine slow all of them alike; the first image is run once untimed
      first, so one-time set-up (kernel selection, allocator growth) is not counted.
    * Same model for all methods (``sppdet.bench.speed_model``): a work directory's trained detector,
      else a seeded random one. Maps stay float32 on the device: this times detection, not the
      feature cache of ``sppdet extract``.
Deviations from the paper's setting: a CPU by default, and whatever trunk and head widths are
given (the paper: full-width ZF-5 and 4096-wide fc6/fc7 on a GPU); R-CNN crops are 224 px
(the paper's R-CNN: 227, AlexNet's input), the input size of the trunks here.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from sppdet.bench.speed_config import METHODS, PARTS, SpeedConfig
from sppdet.models.backbones import resolve_device
from sppdet.structures.boxes import as_boxes
from sppdet.config import ProposeConfig
from sppdet.data import synth
from sppdet.data.images import load_bgr
from sppdet.data.voc import VocDataset
from sppdet.errors import ConfigError
from sppdet.models.features import resize_to_scale
from sppdet.parallel import Progress, no_progress
from sppdet.models.selective_search import selective_search
from sppdet.models.crops import pool_maps, warp_crops
from sppdet.ops.spp import LEVELS, pool_windows
from sppdet.bench.speed_model import SpeedModel, random_model, trained_model
from sppdet.workdir.store import WorkDir
from sppdet.bench.timing import timed

@dataclass
class SpeedReport:
    """Mean seconds per image: ``methods[m][part]`` for m in ``METHODS`` and part in ``PARTS``
    plus ``total`` and ``proposals``; ``settings`` says what was timed and how."""

    methods: dict[str, dict[str, float]]
    settings: dict = field(default_factory=dict)

    @property
    def speedups(self) -> dict[str, float]:
        """R-CNN time over SPP time, for conv and total, at 1 and 5 scales."""
        rcnn = self.methods["rcnn"]
        return {f"speedup_{part}_{n}": rcnn[part] / self.methods[f"spp_{n}"][part]
                for n in (1, 5) for part in ("conv", "total")}

    def to_json(self) -> dict:
        """``{"spp_1": {...}, "spp_5": {...}, "rcnn": {...}, "speedup_conv_1": x, ...,
        "settings": {...}}``."""
        return {**{m: dict(self.methods[m]) for m in METHODS}, **self.speedups, "settings": self.settings}


def top_up(boxes, count: int, image_hw: tuple[int, int], rng: np.random.Generator,
           min_size: float = 16.0) -> tuple[np.ndarray, int]:
    """Exactly ``count`` boxes float32 ``[count, 4]``: the first ``count`` of ``boxes`` ``[P, 4]``,
    then random boxes inside the image ``(H, W)`` (sides log-uniform from ``min_size``, or the
    image side if smaller, to the image side). Returns them and how many were added."""
    kept = as_boxes(boxes)[:count]
    missing = count - len(kept)
    if missing <= 0:
        return kept, 0
    height, width = image_hw
    sides = []
    for limit, draws in ((width, rng.random(missing)), (height, rng.random(missing))):
        low = np.log(min(min_size, limit))
        sides.append(np.exp(low + draws * (np.log(limit) - low)))
    w, h = sides
    x1, y1 = rng.random(missing) * (width - w), rng.random(missing) * (height - h)
    extra = np.stack([x1, y1, x1 + w, y1 + h], axis=1).astype(np.float32)
    return np.concatenate([kept, extra]), missing


class _Runner:
    """The model on a device; each ``*_seconds`` method times one image, per part."""

    def __init__(self, model: SpeedModel, config: SpeedConfig, device: torch.device):
        self.model, self.config, self.device = model, config, device
        self.trunk = model.backbone.trunk.to(device, memory_format=torch.channels_last).eval()
        self.head = model.head.to(device).eval() if model.head is not None else None
        self.weights = torch.as_tensor(model.svm_weights, dtype=torch.float32, device=device)
        self.biases = torch.as_tensor(model.svm_biases, dtype=torch.float32, device=device)

    def _time(self, seconds: dict, part: str, fn, *args, **kwargs):
        result, spent = timed(partial(fn, *args, **kwargs), self.device)
        seconds[part] += spent
        return result

    def _conv_at(self, bgr: np.ndarray, scale: int) -> tuple[torch.Tensor, float]:
        resized, factor = resize_to_scale(bgr, scale)
        return self.trunk(self.model.backbone.preprocess(resized, self.device)[None])[0], factor

    def _score(self, seconds: dict, pooled: torch.Tensor) -> None:
        features = pooled if self.head is None else self._time(seconds, "fc", self.head.fc7_features, pooled)
        if self.head is not None and self.model.fc7_weight is not None:  # layer "pool5+fc7"
            features = torch.cat([pooled, features * self.model.fc7_weight], dim=1)
        self._time(seconds, "svm", lambda: (features * self.model.feature_scale) @ self.weights + self.biases)

    def spp_seconds(self, bgr: np.ndarray, boxes: np.ndarray, scales: Sequence[int]) -> dict:
        """SPP-net on one image: conv once per scale, pool the N windows, fc, SVMs."""
        seconds = dict.fromkeys(PARTS, 0.0)
        net = self.model.backbone
        maps, factors = zip(*self._time(seconds, "conv", lambda: [self._conv_at(bgr, s) for s in scales]))
        pooled = self._time(seconds, "pool", pool_windows, maps, factors, boxes, net.stride,
                            net.offset, LEVELS, device=self.device)
        self._score(seconds, pooled)
        return seconds

    def rcnn_seconds(self, bgr: np.ndarray, boxes: np.ndarray, chosen: np.ndarray) -> dict:
        """R-CNN on one image: preprocess it, warp + conv and pool the windows ``chosen`` (M
        indices into ``boxes`` [N, 4]) scaled by N / M, then fc and SVMs on N rows."""
        seconds = dict.fromkeys(PARTS, 0.0)
        config, subset = self.config, boxes[chosen]
        image, preprocess_seconds = timed(
            lambda: self.model.backbone.preprocess(bgr, self.device).contiguous(), self.device)
        pooled = []
        for start in range(0, len(subset), config.rcnn_batch):
            batch = subset[start:start + config.rcnn_batch]
            maps = self._time(seconds, "conv", self._crop_maps, image, batch)
            pooled.append(self._time(seconds, "pool", pool_maps, maps))
        for part in ("conv", "pool"):
            seconds[part] *= len(boxes) / len(subset)
        seconds["conv"] += preprocess_seconds
        rows = torch.arange(len(boxes), device=self.device) % len(subset)
        self._score(seconds, torch.cat(pooled)[rows])
        return seconds

    def image_seconds(self, bgr: np.ndarray, boxes: np.ndarray, chosen: np.ndarray) -> dict:
        """``{method: {part: seconds}}`` of one image, the methods in turn (``METHODS`` order)."""
        return {"spp_1": self.spp_seconds(bgr, boxes, self.config.scales_1),
                "spp_5": self.spp_seconds(bgr, boxes, self.config.scales_5),
                "rcnn": self.rcnn_seconds(bgr, boxes, chosen)}

    def _crop_maps(self, image: torch.Tensor, boxes: np.ndarray) -> torch.Tensor:
        crops = warp_crops(image, boxes, self.config.rcnn_size, self.config.rcnn_context)
        return self.trunk(crops.contiguous(memory_format=torch.channels_last))


def run_speed(images: Sequence[str | os.PathLike], model: SpeedModel, config: SpeedConfig = SpeedConfig(),
              device: str | torch.device = "cpu", progress: Progress = no_progress) -> SpeedReport:
    """Time proposals, SPP at ``config.scales_1`` and ``config.scales_5``, and R-CNN on each image
    file (see the module docstring); ``progress(1)`` after each image."""
    if not images:
        raise ConfigError("bench speed: no images to time")
    if config.proposals < 1 or config.rcnn_windows < 1 or config.rcnn_batch < 1:
        raise ConfigError("--proposals, --rcnn-windows and the R-CNN batch must be at least 1")
    device = torch.device(device)
    runner = _Runner(model, config, device)
    rng = np.random.default_rng(config.seed)
    propose = ProposeConfig(max_proposals=config.proposals)
    sample = min(config.rcnn_windows, config.proposals)
    per_image: dict[str, list[dict]] = {m: [] for m in METHODS}
    found, sizes, proposal_seconds = [], [], []
    start_wall, start_cpu, load_before = time.perf_counter(), time.process_time(), os.getloadavg()
    with torch.inference_mode():
        for index, path in enumerate(images):
            bgr = load_bgr(path)
            boxes, seconds = timed(partial(selective_search, bgr, propose), "cpu")
            found.append(len(boxes))
            boxes, _ = top_up(boxes, config.proposals, bgr.shape[:2], rng)
            chosen = np.sort(rng.choice(config.proposals, sample, replace=False))
            if index == 0:
                runner.image_seconds(bgr, boxes, chosen)
            for method, parts in runner.image_seconds(bgr, boxes, chosen).items():
                per_image[method].append(parts)
            proposal_seconds.append(seconds)
            sizes.append(bgr.shape[:2])
            progress(1)
    methods = {}
    for method, rows in per_image.items():
        mean = {part: float(np.mean([row[part] for row in rows])) for part in PARTS}
        mean["total"] = sum(mean[part] for part in PARTS)
        mean["proposals"] = float(np.mean(proposal_seconds))
        methods[method] = mean
    settings = {
        "images": len(images), "image_hw_mean": np.mean(sizes, axis=0).round(1).tolist(),
        "proposals": config.proposals, "selective_search_boxes_mean": float(np.mean(found)),
        "topped_up_mean": float(np.mean([max(0, config.proposals - n) for n in found])),
        "rcnn_windows_timed": sample, "rcnn_scaled": "conv and pool x proposals / rcnn_windows_timed",
        "scales_1": list(config.scales_1), "scales_5": list(config.scales_5),
        "rcnn_crop": config.rcnn_size, "rcnn_context": config.rcnn_context, "levels": list(LEVELS),
        "model": model.description, "device": str(device), "torch_threads": torch.get_num_threads(),
        "wall_seconds": time.perf_counter() - start_wall, "cpu_seconds": time.process_time() - start_cpu,
        "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
    }
    return SpeedReport(methods, settings)


def image_files(data_root: str | os.PathLike, split: str, count: int) -> list[Path]:
    """The first ``count`` image files of ``split`` of a VOC-layout dataset."""
    dataset = VocDataset(data_root, split, classes=())
    if count < 1 or not dataset.image_ids:
        raise ConfigError(f"--images {count}: need at least 1 image (split {split!r} of {dataset.root} "
                          f"has {len(dataset.image_ids)})")
    return [dataset.image_path(image_id) for image_id in dataset.image_ids[:count]]


def bench_speed(images: int = 3, config: SpeedConfig = SpeedConfig(), workdir=None, data_root=None,
                split: str = "test", backbone: str = "zf5", width: float = 0.25,
                hidden: Sequence[int] = (512, 512), device: str = "auto",
                progress: Progress = no_progress) -> SpeedReport:
    """``sppdet bench speed``: pick the model (the trained one of ``workdir``, else
    :func:`random_model` with ``backbone``, ``width``, ``hidden``), the images (the first
    ``images`` of ``split`` of ``data_root``, else of the trained work directory's dataset, else
    synth images written to a temporary folder) and run :func:`run_speed`."""
    torch_device = resolve_device(device)
    model = trained_model(workdir)
    if model is not None and data_root is None:
        data_root = WorkDir(workdir).data_root()
    with tempfile.TemporaryDirectory(prefix="sppdet-speed-") as scratch:
        if data_root is None:
            synth.write_dataset(scratch, images=max(3, images), seed=config.seed)
            paths = [Path(scratch) / "JPEGImages" / f"{synth.image_id(i)}.jpg" for i in range(1, images + 1)]
            source, classes = f"synth (seed {config.seed}, temporary folder)", synth.CLASSES
        else:
            paths = image_files(data_root, split, images)
            source = f"{Path(data_root).resolve()}, split {split}"
            classes = VocDataset(data_root, split, check_images=False).classes if model is None else ()
        if model is None:
            model = random_model(backbone, width, hidden, len(classes), config.seed)
        report = run_speed(paths, model, config, torch_device, progress)
    report.settings["images_source"] = source
    return report
