"""Portable models: a trained detector as one ``.sppdet`` file that runs without its work directory.

Shape shorthand: K classes, C conv5 channels, D = C * sum(n^2) the pooled length, H6/H7 the fc
head's hidden sizes, F the length of what the SVMs read (D for pool5, H7 for fc7, D + H7 for
pool5+fc7).

The file (:data:`MODEL_FORMAT_VERSION` 1) is a zip archive, members stored uncompressed with a
fixed timestamp (an unchanged detector exports to identical bytes), holding::

    manifest.json         what detection needs besides the arrays (below)
    trunk/<name>.npy      the conv trunk that computed the training features: its state dict
    head/<name>.npy       the fine-tuned fc head's state dict (fc6, fc7, fc8), when the SVMs read fc7
    svm/weights.npy       float32 [F, K]     svm/biases.npy       float32 [K]
    bbox_reg/weights.npy  float32 [K, D, 4]  bbox_reg/biases.npy  float32 [K, 4]   (when trained)

Every array is a plain ``.npy`` written and read with ``allow_pickle=False``: nothing in the file
is unpickled, so opening a model from someone else runs no code of theirs.

``manifest.json``: ``format`` ("sppdet-model") and ``format_version``; ``method`` (spp or rcnn);
``classes`` (label k is ``classes[k - 1]``); ``features``: the ``ExtractConfig`` (``RcnnConfig``
for rcnn) of the training features (backbone, width, weights id, scales, seed, target, precision)
plus the trunk's stride, offset and channels; ``levels`` (the pyramid); ``propose`` (the
``ProposeConfig``); ``svm`` (layer, feature_scale, fc7_weight); ``head`` (in_dim, hidden,
num_classes, or null); ``bbox_reg`` (feature_scale, or null); ``detect``: the test settings
``sppdet detect --model`` uses unless told otherwise (score threshold, NMS, top-k, test-time
views); ``trained_on``: the identities of the training features (for people; nothing checks them
on load); ``arrays``: each member's shape and dtype. No path of the exporting machine is stored.

Reading (:func:`read_model`) checks the whole file before building anything: a zip with every
member the manifest lists, this format version, each array of the shape and dtype the manifest
says and of the shape the manifest's settings imply (trunk keys and shapes of that backbone and
width, head of D inputs, SVMs of F rows and K columns, regressors [K, D, 4]). Any problem is one
``ModelError`` line naming the file.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

import sppdet
from sppdet.config import BACKBONES, SVM_LAYERS, DetectConfig, ExtractConfig, ProposeConfig, RcnnConfig
from sppdet.errors import ConfigError, ModelError, SppdetError
from sppdet.fileio import atomic_path
from sppdet.models.backbones import Backbone, build_backbone
from sppdet.models.bbox_reg import BboxRegressor
from sppdet.models.detector import Detector
from sppdet.models.head import FcHead
from sppdet.models.svm import SvmModel
from sppdet.ops.spp import pooled_dim
from sppdet.ops.views import check_views
from sppdet.workdir.caches import FeaturesInfo, RcnnInfo
from sppdet.workdir.methods import DEFAULT_METHOD, METHODS
from sppdet.workdir.store import WorkDir
from sppdet.workdir.trained import DetectionModel, workdir_model

MODEL_FORMAT = "sppdet-model"
MODEL_FORMAT_VERSION = 1
MODEL_SUFFIX = ".sppdet"
MANIFEST = "manifest.json"
_TIMESTAMP = (1980, 1, 1, 0, 0, 0)  # the zip format's earliest date: the bytes depend on the content only
_REMEDY = "export it again with `sppdet export`"


# ---------------------------------------------------------------------------------------------
# writing


def _state_arrays(prefix: str, module: torch.nn.Module) -> dict[str, np.ndarray]:
    return {f"{prefix}/{name}": np.ascontiguousarray(value.detach().cpu().numpy())
            for name, value in module.state_dict().items()}


def model_arrays(model: DetectionModel) -> dict[str, np.ndarray]:
    """The arrays of ``model`` by member name (without ``.npy``): trunk and head state dicts,
    SVMs, and box regressors when trained (module docstring)."""
    detector = model.detector
    arrays = _state_arrays("trunk", model.backbone.trunk)
    if detector.head is not None:
        arrays.update(_state_arrays("head", detector.head))
    arrays["svm/weights"], arrays["svm/biases"] = detector.svms.weights, detector.svms.biases
    if detector.regressors is not None:
        arrays["bbox_reg/weights"] = detector.regressors.weights
        arrays["bbox_reg/biases"] = detector.regressors.biases
    return {name: np.ascontiguousarray(array) for name, array in arrays.items()}


def model_manifest(model: DetectionModel, defaults: DetectConfig, arrays: dict[str, np.ndarray]) -> dict:
    """The JSON manifest of ``model`` with detect settings ``defaults`` (module docstring)."""
    detector = model.detector
    return {
        "format": MODEL_FORMAT, "format_version": MODEL_FORMAT_VERSION, "sppdet_version": sppdet.__version__,
        "method": model.method, "classes": list(model.classes),
        "features": {"config": dataclasses.asdict(model.info.config), "stride": model.info.stride,
                     "offset": model.info.offset, "channels": model.info.channels},
        "levels": list(model.levels), "propose": dataclasses.asdict(model.propose),
        "svm": {"layer": detector.layer, "feature_scale": detector.svms.feature_scale,
                "fc7_weight": detector.fc7_weight},
        "head": detector.head.describe() if detector.head is not None else None,
        "bbox_reg": ({"feature_scale": detector.regressors.feature_scale}
                     if detector.regressors is not None else None),
        "detect": {"score_threshold": defaults.score_threshold, "nms": defaults.nms, "top_k": defaults.top_k,
                   "tta": list(defaults.tta)},
        "trained_on": {"features": model.features_hash, "svm": detector.svms.metadata.get("feature_hash")},
        "arrays": {name: {"shape": list(array.shape), "dtype": str(array.dtype)} for name, array in arrays.items()},
    }


def _member(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=_TIMESTAMP)
    info.external_attr = 0o644 << 16
    archive.writestr(info, data)


def write_model(path: str | os.PathLike, model: DetectionModel, defaults: DetectConfig | None = None) -> None:
    """Write ``model`` to ``path`` as a ``.sppdet`` file (module docstring), atomically; its detect
    settings are ``defaults`` (None: ``model.defaults``)."""
    defaults = defaults or model.defaults
    arrays = model_arrays(model)
    manifest = model_manifest(model, defaults, arrays)
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as archive:
            _member(archive, MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
            for name, array in arrays.items():
                buffer = io.BytesIO()
                np.save(buffer, array, allow_pickle=False)
                _member(archive, f"{name}.npy", buffer.getvalue())


def export_model(workdir: str | os.PathLike | WorkDir | None, path: str | os.PathLike,
                 method: str = DEFAULT_METHOD, defaults: DetectConfig | None = None) -> DetectionModel:
    """Write the detector the work directory trained with ``method`` to ``path``
    (``sppdet export``) and return it. ``defaults``: the detect settings saved with it (None: the
    work directory's, ``DetectionModel.defaults``). ``WorkdirError`` if it is not trained."""
    work = workdir if isinstance(workdir, WorkDir) else WorkDir(workdir)
    model = workdir_model(work, method)
    defaults = defaults or model.defaults
    if check_views(defaults.tta) and method != DEFAULT_METHOD:
        raise ConfigError("--tta needs the SPP features of sppdet extract, not --method rcnn")
    write_model(path, model, defaults)
    return model


# ---------------------------------------------------------------------------------------------
# reading


class _Invalid(Exception):
    """A problem of the file, turned into one ``ModelError`` line by :func:`read_model`."""


#: Size limits checked before anything is decompressed, so a crafted file (a zip bomb, a
#: manifest or array header claiming more than the member holds) costs no memory.
MAX_MANIFEST_BYTES = 16 << 20
NPY_HEADER_SLACK = 1 << 16


def _npy_bytes(spec) -> int | None:
    """The data bytes of the array a manifest entry ``{"shape": [...], "dtype": "..."}`` lists,
    or None when the entry is not a plain numeric array."""
    try:
        dtype = np.dtype(spec["dtype"])
        shape = [int(n) for n in spec["shape"]]
    except (TypeError, KeyError, ValueError):
        return None
    if dtype.hasobject or any(n < 0 for n in shape):
        return None
    return int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


def _read_archive(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(manifest, arrays by name) of the zip at ``path``, each array as the manifest lists it."""
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise _Invalid(f"not a zip archive ({exc})") from None
    with archive:
        names = set(archive.namelist())
        if MANIFEST not in names:
            raise _Invalid(f"no {MANIFEST}")
        if archive.getinfo(MANIFEST).file_size > MAX_MANIFEST_BYTES:
            raise _Invalid(f"{MANIFEST} is larger than {MAX_MANIFEST_BYTES} bytes")
        try:
            manifest = json.loads(archive.read(MANIFEST).decode("utf-8"))
        except ValueError as exc:
            raise _Invalid(f"{MANIFEST} is not JSON ({exc})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != MODEL_FORMAT:
            raise _Invalid(f"{MANIFEST} does not describe an {MODEL_FORMAT}")
        version = manifest.get("format_version")
        if version != MODEL_FORMAT_VERSION:
            raise _Invalid(f"model format version {version}, this sppdet {sppdet.__version__} reads version "
                           f"{MODEL_FORMAT_VERSION}")
        listed = manifest.get("arrays")
        if not isinstance(listed, dict):
            raise _Invalid(f"{MANIFEST} lists no arrays")
        arrays = {}
        for name, spec in listed.items():
            member = f"{name}.npy"
            if member not in names:
                raise _Invalid(f"member {member} is missing")
            expected = _npy_bytes(spec)
            if expected is None or not expected <= archive.getinfo(member).file_size <= expected + NPY_HEADER_SLACK:
                raise _Invalid(f"member {member} is not the size of the array the manifest lists")
            try:
                array = np.lib.format.read_array(io.BytesIO(archive.read(member)), allow_pickle=False)
            except ValueError as exc:
                raise _Invalid(f"member {member} is not a readable array ({exc})") from None
            if list(array.shape) != list(spec["shape"]) or str(array.dtype) != spec["dtype"]:
                raise _Invalid(f"{name} is {array.dtype} {list(array.shape)}, the manifest says "
                               f"{spec['dtype']} {spec['shape']}")
            arrays[name] = array
    return manifest, arrays


def _part(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, torch.Tensor]:
    return {name[len(prefix) + 1:]: torch.from_numpy(array) for name, array in arrays.items()
            if name.startswith(f"{prefix}/")}


def _load_state(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Load ``state`` into ``module``; ``_Invalid`` naming missing, unexpected and misshapen keys."""
    expected = module.state_dict()
    problems = [f"{label}: {', '.join(keys[:3])}" for label, keys in (
        ("missing", [k for k in expected if k not in state]),
        ("unexpected", [k for k in state if k not in expected]),
        ("misshapen", [f"{k} {list(state[k].shape)} (expected {list(v.shape)})" for k, v in expected.items()
                       if k in state and state[k].shape != v.shape])) if keys]
    if problems:
        raise _Invalid(f"the {what} arrays do not fit ({'; '.join(problems)})")
    module.load_state_dict(state)


def _info(method: str, features: dict) -> FeaturesInfo | RcnnInfo:
    settings = {key: tuple(value) if isinstance(value, list) else value for key, value in features["config"].items()}
    config_class, info_class = (ExtractConfig, FeaturesInfo) if method == DEFAULT_METHOD else (RcnnConfig, RcnnInfo)
    return info_class(config_class(**settings), int(features["stride"]), float(features["offset"]),
                      int(features["channels"]))


def _trunk(path: Path, info: FeaturesInfo | RcnnInfo, state: dict[str, torch.Tensor]) -> Backbone:
    config = info.config
    if config.backbone not in BACKBONES:
        raise _Invalid(f"unknown backbone {config.backbone!r}")
    try:
        net = build_backbone(config.backbone, config.width, "none", config.seed, lrn=config.lrn)
    except SppdetError as exc:
        raise _Invalid(str(exc)) from None
    _load_state(net.trunk, state, f"{config.backbone} x{config.width} trunk")
    if (net.channels, net.stride, net.offset) != (info.channels, info.stride, info.offset):
        raise _Invalid(f"the {config.backbone} trunk has {net.channels} channels, stride {net.stride}, "
                       f"offset {net.offset}; the manifest says {info.channels}, {info.stride}, {info.offset}")
    return dataclasses.replace(net, weights_id=config.weights, weights_source=str(path))


def _head(spec: dict | None, state: dict[str, torch.Tensor], dim: int, classes: int) -> FcHead | None:
    if spec is None:
        return None
    if spec["in_dim"] != dim or spec["num_classes"] != classes:
        raise _Invalid(f"the head takes {spec['in_dim']}-d windows for {spec['num_classes']} classes; the "
                       f"features give {dim}-d windows and there are {classes} classes")
    head = FcHead(int(spec["in_dim"]), tuple(spec["hidden"]), int(spec["num_classes"]))
    _load_state(head, state, "fc head")
    return head.eval()


def _check_shape(arrays: dict[str, np.ndarray], name: str, shape: tuple[int, ...], why: str) -> np.ndarray:
    if name not in arrays:
        raise _Invalid(f"the manifest lists no {name}")
    if arrays[name].shape != shape:
        raise _Invalid(f"{name} is {list(arrays[name].shape)}; {why} needs {list(shape)}")
    return arrays[name]


def _build(path: Path, manifest: dict, arrays: dict[str, np.ndarray]) -> DetectionModel:
    method = manifest["method"]
    if method not in METHODS:
        raise _Invalid(f"unknown method {method!r}")
    classes = tuple(str(name) for name in manifest["classes"])
    k = len(classes)
    info = _info(method, manifest["features"])
    levels = tuple(int(n) for n in manifest["levels"])
    if method != DEFAULT_METHOD and levels != tuple(info.config.levels):
        raise _Invalid(f"levels {list(levels)} differ from the R-CNN features' {list(info.config.levels)}")
    dim = pooled_dim(info.channels, levels)
    backbone = _trunk(path, info, _part(arrays, "trunk"))
    head = _head(manifest["head"], _part(arrays, "head"), dim, k)
    svm = manifest["svm"]
    layer = svm["layer"]
    if layer not in SVM_LAYERS or (layer != "pool5" and head is None):
        raise _Invalid(f"SVM layer {layer!r} without the fc head it needs" if layer in SVM_LAYERS
                       else f"unknown SVM layer {layer!r}")
    rows = {"pool5": dim, "fc7": head.hidden[1] if head else 0, "pool5+fc7": dim + (head.hidden[1] if head else 0)}
    svms = SvmModel(_check_shape(arrays, "svm/weights", (rows[layer], k), f"layer {layer} with {k} classes"),
                    _check_shape(arrays, "svm/biases", (k,), f"{k} classes"), float(svm["feature_scale"]),
                    classes, {"fc7_weight": float(svm["fc7_weight"]), "feature_hash": manifest["trained_on"]["svm"]})
    regressors = None
    if manifest["bbox_reg"] is not None:
        regressors = BboxRegressor(
            _check_shape(arrays, "bbox_reg/weights", (k, dim, 4), f"{k} classes of {dim}-d windows"),
            _check_shape(arrays, "bbox_reg/biases", (k, 4), f"{k} classes"),
            float(manifest["bbox_reg"]["feature_scale"]), classes, {})
    detect = manifest["detect"]
    try:
        views = check_views(tuple(detect["tta"]))
    except ConfigError as exc:
        raise _Invalid(f"detect settings: {exc}") from None
    if views and method != DEFAULT_METHOD:
        raise _Invalid("test-time views are recorded for an rcnn model")
    defaults = DetectConfig(nms=float(detect["nms"]), top_k=int(detect["top_k"]),
                            score_threshold=float(detect["score_threshold"]), tta=views)
    return DetectionModel(method, ProposeConfig(**manifest["propose"]), info, backbone, levels,
                          Detector(classes, svms, head, regressors, DetectConfig(), layer),
                          str(manifest["trained_on"]["features"]), defaults)


def read_model(path: str | os.PathLike) -> DetectionModel:
    """The :class:`DetectionModel` of a ``.sppdet`` file (``sppdet export``), every array checked
    against the manifest and the manifest's settings; its ``features_hash`` is the exporting work
    directory's. ``ModelError`` naming ``path`` if it is not a valid model file of this format
    version (module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such model file; write one with `sppdet export`")
    try:
        manifest, arrays = _read_archive(path)
        return _build(path, manifest, arrays)
    except _Invalid as exc:
        raise ModelError(f"{path}: not a usable sppdet model file ({exc}); {_REMEDY}") from None
    except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise ModelError(f"{path}: not a usable sppdet model file (damaged archive: {exc or type(exc).__name__}); "
                         f"{_REMEDY}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        reason = f"no {exc.args[0]!r}" if isinstance(exc, KeyError) and exc.args else (
            (str(exc).splitlines() or [""])[0] or type(exc).__name__)
        raise ModelError(f"{path}: not a usable sppdet model file (malformed {MANIFEST}: {reason}); "
                         f"{_REMEDY}") from None
