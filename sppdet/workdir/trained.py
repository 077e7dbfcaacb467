"""The models a work directory's stages trained (and the trunk that computed its features),
loaded and checked against the features they read.

``train-svm``, ``train-bbox`` and ``finetune`` record their models in ``config.json``; these
functions find them (per ``--method``, ``sppdet.workdir.methods``), refuse models trained on other
features, and assemble the detector (``sppdet.models.detector``) or run it over a split.
:class:`DetectionModel` gathers everything detection on new image files needs (proposal settings,
trunk, pyramid, detector); :func:`workdir_model` loads it from a work directory, and
``sppdet.workdir.export`` writes it to, and reads it from, one ``.sppdet`` file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from sppdet.config import DEFAULT_SCORE_THRESHOLD, DetectConfig, ProposeConfig
from sppdet.errors import ModelError, WorkdirError
from sppdet.evaluation.voc_ap import Detections
from sppdet.fileio import file_hash
from sppdet.models.backbones import Backbone, build_backbone
from sppdet.models.bbox_reg import BboxRegressor
from sppdet.models.detector import Detector
from sppdet.models.head import FcHead, load_head
from sppdet.models.svm import SvmModel, svm_feature_id
from sppdet.ops.spp import LEVELS, pooled_dim
from sppdet.ops.views import check_views
from sppdet.parallel import Progress, no_progress
from sppdet.workdir.caches import FeaturesInfo, RcnnInfo
from sppdet.workdir.methods import DEFAULT_METHOD, stage_key
from sppdet.workdir.records import (BBOX_RECORD, EXTRACT_RECORD, FINETUNE_RECORD, SVM_RECORD,
                                    recorded_propose_config, recorded_views)
from sppdet.workdir.store import WorkDir
from sppdet.workdir.window_source import WindowSource, method_features, pooled_feature_hash


def finetuned_head(workdir: WorkDir, feature_hash: str, in_dim: int,
                   method: str = DEFAULT_METHOD) -> tuple[FcHead, str]:
    """The head recorded by the last ``finetune`` with ``method`` and its file hash;
    ``WorkdirError`` if there is none, ``ModelError`` if it was trained on other features than
    ``feature_hash``."""
    record = workdir.config().get("stages", {}).get(stage_key(FINETUNE_RECORD, method))
    if not record or not (workdir.root / record["head"]).is_file():
        flag = "" if method == DEFAULT_METHOD else f" --method {method}"
        raise WorkdirError(f"{workdir.root}: no fine-tuned fc head; run sppdet finetune{flag} first "
                           "(or use --layer pool5)")
    path = workdir.root / record["head"]
    head, meta = load_head(path, expected_in_dim=in_dim)
    if meta.get("feature_hash") != feature_hash:
        raise ModelError(f"{path}: trained on features {meta.get('feature_hash')}, these are "
                         f"{feature_hash}; re-run `sppdet finetune`")
    return head, file_hash(path)


def trained_svms(workdir: WorkDir, feature_hash: str, method: str = DEFAULT_METHOD) -> SvmModel:
    """The SVMs of the last ``train-svm`` with ``method``, checked against ``feature_hash``."""
    record = workdir.config().get("stages", {}).get(stage_key(SVM_RECORD, method))
    if not record:
        flag = "" if method == DEFAULT_METHOD else f" --method {method}"
        raise WorkdirError(f"{workdir.root}: no trained SVMs; run sppdet train-svm{flag} first")
    return SvmModel.load(workdir.root / record["model"], feature_hash=feature_hash)


def trained_regressors(workdir: WorkDir, feature_hash: str,
                       method: str = DEFAULT_METHOD) -> BboxRegressor | None:
    """The regressors of the last ``train-bbox`` with ``method`` checked against ``feature_hash``,
    or None if it never ran (detection then uses the unrefined boxes)."""
    record = workdir.config().get("stages", {}).get(stage_key(BBOX_RECORD, method))
    if not record:
        return None
    path = workdir.root / record["model"]
    if not path.is_file():
        raise WorkdirError(f"{path}: recorded by train-bbox but missing; re-run sppdet train-bbox")
    return BboxRegressor.load(path, feature_hash=svm_feature_id(feature_hash, "pool5"))


def load_detector(workdir: WorkDir, feature_hash: str, in_dim: int, config: DetectConfig = DetectConfig(),
                  method: str = DEFAULT_METHOD) -> Detector:
    """The detector of the models the work directory's last training stages with ``method``
    recorded, each checked against the pooled features ``feature_hash`` (``WindowSource.feature_hash``)
    of dimension ``in_dim``."""
    record = require_trained(workdir, method)
    layer = record["layer"]
    head, head_id = None, None
    if layer != "pool5":
        head, head_id = finetuned_head(workdir, feature_hash, in_dim, method)
    svm_hash = svm_feature_id(feature_hash, layer, head_id)
    svms = trained_svms(workdir, svm_hash, method)
    regressors = trained_regressors(workdir, feature_hash, method) if config.bbox_reg else None
    return Detector(svms.class_names, svms, head, regressors, config, layer)


def require_trained(workdir: WorkDir, method: str = DEFAULT_METHOD) -> dict:
    """The ``train-svm`` record of ``workdir`` for ``method``; ``WorkdirError`` saying which
    stages to run if none."""
    record = workdir.config().get("stages", {}).get(stage_key(SVM_RECORD, method))
    if not record:
        flag = "" if method == DEFAULT_METHOD else f" with --method {method}"
        raise WorkdirError(f"{workdir.root}: no trained detector{flag}; run sppdet propose, extract, "
                           f"finetune, train-svm and train-bbox{flag} first")
    return record


def detect_split(workdir: WorkDir, split: str, config: DetectConfig = DetectConfig(), data_root=None,
                 progress: Progress = no_progress, method: str = DEFAULT_METHOD,
                 source: WindowSource | None = None) -> Detections:
    """The detector trained with ``method`` run over every image of ``split`` from the caches;
    ``source``: the split's windows when the caller keeps one (it must pool at the recorded levels)."""
    levels = require_trained(workdir, method).get("levels")
    if source is None or tuple(source.levels) != tuple(levels or source.levels):
        source = WindowSource(workdir, split, data_root, levels=levels, method=method)
    detector = load_detector(workdir, source.feature_hash, source.dim, config, method)
    detector.fc7_of = source.fc7_function(detector.head)  # None unless the caller keeps a memo
    names = check_views(config.tta)
    per_image = {}
    for image_id in source.image_ids:
        windows = source.proposals(image_id)
        annotation = source.dataset.annotation(image_id)
        views = [(view, source.pool(image_id, windows, view)) for view in names]
        per_image[image_id] = detector.detect(source.pool(image_id, windows), windows,
                                              (annotation.height, annotation.width), views)
        progress(1)
    return Detections.from_images(per_image)


def feature_trunk(folder: Path, info, weights_source: str | None, remedy: str) -> Backbone:
    """The trunk that computed the features in ``folder`` (``info``: its ``features_info``, or
    the R-CNN cache's ``rcnn_info``), built from ``weights_source`` (a weights file; unused when
    the features came from a random trunk). ``ModelError`` ending in ``remedy`` if the file is
    gone or the built trunk is not the one recorded (weights hash, channels, stride, offset)."""
    config = info.config
    weights = "none"
    if config.weights != "none":
        if not weights_source or not Path(weights_source).is_file():
            raise ModelError(f"{weights_source or folder}: the trunk weights of the features "
                             f"{folder.name} are missing; restore the file, or {remedy}")
        weights = weights_source
    net = build_backbone(config.backbone, config.width, weights, config.seed, lrn=config.lrn)
    if (net.weights_id, net.channels, net.stride, net.offset) != (config.weights, info.channels,
                                                                   info.stride, info.offset):
        raise ModelError(f"{weights}: the rebuilt {config.backbone} trunk (weights {net.weights_id}) "
                         f"is not the one that computed {folder} (weights {config.weights}); "
                         f"restore the weights file, or {remedy}")
    return net


def rebuild_trunk(workdir: WorkDir, folder: Path, info,
                  stage: str = EXTRACT_RECORD) -> Backbone:
    """The trunk that computed the features in ``folder`` (``info = features_info(folder)``, or
    ``sppdet.workdir.caches.rcnn_info`` with ``stage = "extract:rcnn"``), from the weights file of
    the ``stage`` record (:func:`feature_trunk` checks it)."""
    record = workdir.config().get("stages", {}).get(stage) or {}
    source = workdir.recorded_path(record.get("weights_source")) if record.get("folder") == folder.name else None
    return feature_trunk(folder, info, source,
                         "re-run sppdet extract, finetune, train-svm and train-bbox")


@dataclass(frozen=True)
class DetectionModel:
    """A trained detector ready for new image files, wherever it was loaded from: a work directory
    (:func:`workdir_model`) or a ``.sppdet`` file (``sppdet.workdir.export.read_model``).

    Per image: selective search with ``propose``; conv maps (spp) or warped crops (rcnn) from
    ``backbone``, at ``info.config``'s scales, target and precision; pyramid pooling at ``levels``
    with ``info``'s stride and offset (D = ``dim``); then ``detector``'s models."""

    method: str  # "spp" or "rcnn" (sppdet.workdir.methods)
    propose: ProposeConfig  # the selective search the models were trained on
    info: FeaturesInfo | RcnnInfo  # the features' config (backbone, width, scales, ...) and geometry
    backbone: Backbone  # the trunk that computed the training features, weights loaded
    levels: tuple[int, ...]  # pyramid levels of the pooled windows
    detector: Detector  # fc head, SVMs, box regressors (None if never trained) with default DetectConfig
    features_hash: str  # identity of the training features (work directory: the features folder's hash)
    defaults: DetectConfig  # test settings ``sppdet detect`` uses unless told otherwise (views, threshold)

    @property
    def dim(self) -> int:
        """D, the length of one pooled window."""
        return pooled_dim(self.info.channels, self.levels)

    @property
    def classes(self) -> tuple[str, ...]:
        """Class names; label k (1..K) is ``classes[k - 1]``."""
        return self.detector.classes

    def detector_for(self, config: DetectConfig) -> Detector:
        """The detector with test settings ``config`` (without box regression when
        ``config.bbox_reg`` is False)."""
        return dataclasses.replace(self.detector, config=config,
                                   regressors=self.detector.regressors if config.bbox_reg else None)


def workdir_model(workdir: WorkDir, method: str = DEFAULT_METHOD) -> DetectionModel:
    """The :class:`DetectionModel` the work directory's last stages with ``method`` trained: its
    recorded propose settings, the trunk that computed its features (:func:`rebuild_trunk`, which
    checks the weights), the models checked against those features (:func:`load_detector`), and
    as defaults the views ``sppdet train`` chose (spp only) and ``DEFAULT_SCORE_THRESHOLD``.
    ``WorkdirError`` naming the stages to run when it is not trained (:func:`require_trained`)."""
    levels = tuple(require_trained(workdir, method).get("levels") or LEVELS)
    propose = recorded_propose_config(workdir)
    folder, info = method_features(workdir, method)
    if method != DEFAULT_METHOD:
        levels = tuple(info.config.levels)
    backbone = rebuild_trunk(workdir, folder, info, stage_key(EXTRACT_RECORD, method))
    features_hash = workdir.stage_hash(folder)
    detector = load_detector(workdir, pooled_feature_hash(features_hash, levels, method),
                             pooled_dim(info.channels, levels), DetectConfig(), method)
    views = recorded_views(workdir) if method == DEFAULT_METHOD else ()
    return DetectionModel(method, propose, info, backbone, levels, detector, features_hash,
                          DetectConfig(score_threshold=DEFAULT_SCORE_THRESHOLD, tta=views))
