"""One frozen dataclass per stage; each field's comment gives its meaning and the paper's value.

The resolved config of every stage is stored in the work directory's ``config.json`` and hashed
into the stage's folder name (``sppdet.store``), so changing any field gives a new cache folder.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ProposeConfig:
    """Selective search (SPEC section 1)."""

    mode: str = "fast"  # "fast" (paper: fast mode, HSV+Lab, k in {50,100,150,300}) or "quality"
    max_proposals: int = 2000  # boxes kept per image (paper: ~2,000)
    min_size: int = 16  # px; smaller boxes are dropped (original: min box width 20)
    max_side: int = 500  # px; larger images are downscaled for the search, boxes scaled back


@dataclass(frozen=True)
class ExtractConfig:
    """One-pass conv features (SPEC sections 2-3)."""

    backbone: str = "zf5"  # "zf5" (paper), "alexnet" or "vgg16" (torchvision features[:-1])
    width: float = 1.0  # zf5 channel multiplier (1.0 = the paper's 96-256-384-384-256)
    weights: str = "none"  # hash of the weights file used ("none" = random init from seed)
    scales: tuple[int, ...] = (688,)  # shorter side; paper: 688, or (480, 576, 688, 864, 1200)
    seed: int = 0  # random-init seed (matters only with weights "none"; paper: ImageNet weights)
