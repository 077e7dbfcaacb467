"""What ``sppdet bench speed`` times: its settings, the methods compared and the parts of each
(kept apart from ``sppdet.bench.speed`` so the command's ``--help`` needs no torch)."""

from __future__ import annotations

from dataclasses import dataclass

METHODS = ("spp_1", "spp_5", "rcnn")
PARTS = ("conv", "pool", "fc", "svm")
SCALES_1 = (688,)
SCALES_5 = (480, 576, 688, 864, 1200)


@dataclass(frozen=True)
class SpeedConfig:
    """What ``sppdet bench speed`` times (paper values in the comments)."""

    proposals: int = 2000  # windows per image, N (paper: ~2,000)
    scales_1: tuple[int, ...] = SCALES_1  # single-scale SPP (paper: 688)
    scales_5: tuple[int, ...] = SCALES_5  # multi-scale SPP (paper: 480, 576, 688, 864, 1200)
    rcnn_windows: int = 200  # R-CNN windows timed per image, M, scaled to N (paper: all)
    rcnn_size: int = 224  # R-CNN crop side (R-CNN: 227)
    rcnn_context: int = 16  # R-CNN context padding in crop pixels (R-CNN: 16)
    rcnn_batch: int = 128  # crops per trunk call
    seed: int = 0  # top-up boxes and the R-CNN subset
