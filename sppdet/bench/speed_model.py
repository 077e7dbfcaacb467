"""The detector ``sppdet bench speed`` times: a work directory's trained one, or a random one.

Shape shorthand: C conv5 channels, D = C * sum(n^2) pooled length (levels 1, 2, 3, 6), F the
length the SVMs read (fc7 width, or D when they read pool5), K classes.

A trained work directory gives the trunk that computed its features (rebuilt as ``sppdet detect``
does), its fine-tuned head and its SVMs; box regressors are left out (the paper's timing table
has no column for them). Otherwise a seeded random trunk, head and SVMs of the requested shapes:
time does not depend on the values.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from sppdet.workdir.trained import load_detector
from sppdet.models.backbones import Backbone, build_backbone
from sppdet.config import DetectConfig
from sppdet.data import synth
from sppdet.workdir.trained import rebuild_trunk
from sppdet.workdir.caches import features_dir, features_info
from sppdet.models.head import FcHead
from sppdet.ops.spp import LEVELS, pooled_dim
from sppdet.workdir.store import WorkDir
from sppdet.stages.train_svm import STAGE as SVM_STAGE
from sppdet.workdir.window_source import pooled_feature_hash


@dataclass
class SpeedModel:
    """A detector to time: the trunk, the fc head (None when the SVMs read pool5) and the SVMs
    (``svm_weights`` float32 ``[F, K]``, ``svm_biases`` float32 ``[K]``, applied to features
    multiplied by ``feature_scale``); ``description`` says where they came from."""

    backbone: Backbone
    head: FcHead | None
    svm_weights: np.ndarray
    svm_biases: np.ndarray
    feature_scale: float
    description: str
    fc7_weight: float | None = None  # SVMs on [pool5, fc7_weight * fc7] (layer "pool5+fc7")


def random_model(backbone: str = "zf5", width: float = 0.25, hidden: Sequence[int] = (512, 512),
                 num_classes: int = len(synth.CLASSES), seed: int = 0) -> SpeedModel:
    """A seeded random detector: trunk (``sppdet.models.backbones``), fc head ``D -> hidden``, K SVMs."""
    net = build_backbone(backbone, width, "none", seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = FcHead(pooled_dim(net.channels), tuple(hidden), num_classes).eval()
    rng = np.random.default_rng(seed)
    weights = rng.standard_normal((int(hidden[1]), num_classes)).astype(np.float32) * 0.01
    return SpeedModel(net, head, weights, np.zeros(num_classes, np.float32), 1.0,
                      f"random init (seed {seed}): {backbone} width {width}, fc {hidden[0]}-{hidden[1]}, "
                      f"{num_classes} classes")


def trained_model(workdir: str | os.PathLike | WorkDir | None) -> SpeedModel | None:
    """The trained detector of ``workdir`` (None if it holds none): the trunk that computed its
    features, its fine-tuned head (None for pool5 SVMs) and its SVMs."""
    work = workdir if isinstance(workdir, WorkDir) else WorkDir(workdir)
    if not work.config_path.is_file() or not work.config().get("stages", {}).get(SVM_STAGE):
        return None
    folder = features_dir(work)
    info = features_info(folder)
    backbone = rebuild_trunk(work, folder, info)
    detector = load_detector(work, pooled_feature_hash(work.stage_hash(folder), LEVELS),
                                     pooled_dim(info.channels, LEVELS), DetectConfig(bbox_reg=False))
    svms = detector.svms
    return SpeedModel(backbone, detector.head, svms.weights, svms.biases, svms.feature_scale,
                      f"trained: {work.root} ({info.config.backbone} width {info.config.width}, "
                      f"weights {backbone.weights_source}, SVMs on {detector.layer})",
                      detector.fc7_weight if detector.layer == "pool5+fc7" else None)
