"""sppdet: SPP-net object detection (He et al., 2014) as cached, resumable stages.

The Python API in three lines (a work directory trained by ``sppdet train``)::

    import sppdet
    detector = sppdet.ImageDetector.from_workdir("sppdet-work")
    image, result = detector.detect("photo.jpg")  # result.boxes [N, 4] (x1, y1, x2, y2), .scores, .labels

The names below are imported on first use, so ``import sppdet`` stays instant (the command line's
``--help`` imports it). The library never imports click or rich; the command line lives in ``cli``.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: public name -> the module that defines it
_EXPORTS = {
    "ImageDetector": "sppdet.stages.detect",  # a trained work directory applied to image files
    "ImageResult": "sppdet.stages.detect",  # one image's boxes, scores and labels
    "detect_files": "sppdet.stages.detect",  # many files, with annotated copies and COCO JSON
    "Detector": "sppdet.models.detector",  # SVMs (+ head, regressors) on pooled windows
    "load_detector": "sppdet.workdir.trained",  # the Detector a work directory trained
    "WorkDir": "sppdet.workdir.store",
    "VocDataset": "sppdet.data.voc",
    "evaluate": "sppdet.evaluation.voc_ap",  # VOC AP exactly as the devkit
    "Detections": "sppdet.evaluation.voc_ap",
    "spp_pool": "sppdet.ops.spp",  # the pyramid pooling of windows on one conv map
    "pool_windows": "sppdet.ops.spp",
    "build_backbone": "sppdet.models.backbones",
    "run_train": "sppdet.pipelines.train",  # what `sppdet train` runs
    "prepare_train": "sppdet.pipelines.train",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sppdet' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
