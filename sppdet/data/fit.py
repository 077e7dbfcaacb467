"""Settings that follow the data: rules that turn a training split's annotations into defaults.

Only the annotations of the training split are read (sizes of images and of their non-difficult
objects; no pixels, never another split), so a rule cannot see the validation or test images.
Each rule is written so a user can predict it (README, "Settings that follow your data"):

- **Scales** (:func:`fit_scales`): each window is pooled at the scale where it measures about
  ``target`` px (docs/algorithm.md section 4), so an object of side ``s`` (square root of its box area) in an
  image of shorter side ``m`` wants the scale ``target * m / s``. The scales span the 10th to
  90th percentile of that wish over the training objects, at most ``sqrt(2)`` apart (the paper's
  five scales are 1.2-1.25x apart) but at most five (a wider span gets wider steps), within
  ``[MIN_SCALE, MAX_SCALE]`` (MAX_SCALE is the paper's largest, 1200) and at most
  ``MAX_UPSAMPLE`` times the median shorter image side (an image has no detail to show beyond
  that), rounded to multiples of 16.
- **Proposals** (:func:`fit_proposals`): selective search runs on the image shrunk so its longer
  side is ``max_side``; small objects need resolution, large images cost time (the search grows
  with the pixels). ``max_side`` is the median longer side scaled so the 10th-percentile object
  keeps ``SEARCH_OBJECT_SIDE`` px, within ``[MIN_SEARCH_SIDE, MAX_SEARCH_SIDE]``; ``min_size``
  drops boxes under 3/4 of the 5th-percentile object's smaller side (at most the default 16 px).
- **Pretraining length** (:func:`fit_pretrain_epochs`): a few hundred images give few SGD steps
  per epoch, so the epochs are set to see about ``PRETRAIN_OBJECT_PASSES`` object crops in all
  (the demo's 240 trainval images hold ~690 objects and trained 16 epochs, better than 12, before
  this rule), within ``[MIN_PRETRAIN_EPOCHS, MAX_PRETRAIN_EPOCHS]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sppdet.data.voc import VocDataset
from sppdet.errors import DatasetError

MIN_SCALE = 128
MAX_SCALE = 1200
MAX_UPSAMPLE = 3.0
MAX_SCALES = 5
SCALE_STEP = math.sqrt(2.0)
SCALE_ROUND = 16
SEARCH_OBJECT_SIDE = 16.0
MIN_SEARCH_SIDE = 256
MAX_SEARCH_SIDE = 500
DEFAULT_MIN_BOX = 16
PRETRAIN_OBJECT_PASSES = 8_000
MIN_PRETRAIN_EPOCHS = 4
MAX_PRETRAIN_EPOCHS = 32


@dataclass(frozen=True)
class ObjectSizes:
    """Sizes in a training split: per non-difficult object its side ``sqrt(w * h)`` [N], its
    smaller box side [N] and its image's shorter and longer side [N]; per image the longer
    side [I]; the number of images and objects."""

    sides: np.ndarray
    min_sides: np.ndarray
    image_short: np.ndarray
    image_long_per_image: np.ndarray
    images: int

    @property
    def objects(self) -> int:
        return len(self.sides)


def object_sizes(dataset: VocDataset) -> ObjectSizes:
    """The :class:`ObjectSizes` of ``dataset`` (annotations only); ``DatasetError`` if the split
    has no non-difficult object."""
    sides, min_sides, shorts, longs = [], [], [], []
    for annotation in dataset.annotations():
        boxes = annotation.boxes[~annotation.difficult]
        widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        sides.append(np.sqrt(widths * heights))
        min_sides.append(np.minimum(widths, heights))
        shorts.append(np.full(len(boxes), min(annotation.width, annotation.height), np.float64))
        longs.append(max(annotation.width, annotation.height))
    if not sides or not sum(len(s) for s in sides):
        raise DatasetError(f"{dataset.split_file}: no objects (other than difficult ones) in split "
                           f"{dataset.split!r}; annotate some objects to train on")
    return ObjectSizes(sides=np.concatenate(sides).astype(np.float64), min_sides=np.concatenate(min_sides),
                       image_short=np.concatenate(shorts), image_long_per_image=np.array(longs, np.float64),
                       images=len(dataset))


def _round(value: float, step: int) -> int:
    return int(max(step, round(value / step) * step))


def fit_scales(sizes: ObjectSizes, target: int) -> tuple[int, ...]:
    """Scales (shorter image sides, px, ascending) for objects of ``sizes`` to be pooled near
    ``target`` px (module docstring)."""
    wished = target * sizes.image_short / np.maximum(sizes.sides, 1.0)
    ceiling = max(MIN_SCALE, min(MAX_SCALE, MAX_UPSAMPLE * float(np.median(sizes.image_short))))
    low, high = np.percentile(np.log(wished), [10, 90])
    low = min(max(math.exp(low), MIN_SCALE), ceiling)
    high = min(max(math.exp(high), low), ceiling)
    count = min(MAX_SCALES, 1 + math.ceil(math.log(high / low) / math.log(SCALE_STEP) - 1e-9))
    if count == 1:
        return (_round(math.sqrt(low * high), SCALE_ROUND),)
    values = np.exp(np.linspace(math.log(low), math.log(high), count))
    return tuple(sorted({_round(v, SCALE_ROUND) for v in values}))


def fit_proposals(sizes: ObjectSizes) -> tuple[int, int]:
    """(max_side, min_size) for selective search on images and objects like ``sizes``."""
    long_side = float(np.median(sizes.image_long_per_image))
    small = float(np.percentile(sizes.sides, 10))
    wanted = long_side * SEARCH_OBJECT_SIDE / max(small, 1.0)
    max_side = int(min(max(wanted, MIN_SEARCH_SIDE), MAX_SEARCH_SIDE, max(long_side, MIN_SEARCH_SIDE)))
    min_size = int(min(DEFAULT_MIN_BOX, max(2, math.floor(0.75 * np.percentile(sizes.min_sides, 5)))))
    return _round(max_side, 32) if max_side >= 32 else max_side, min_size


def fit_pretrain_epochs(sizes: ObjectSizes) -> int:
    """Pretraining epochs for a split with ``sizes.objects`` objects (module docstring)."""
    epochs = round(PRETRAIN_OBJECT_PASSES / max(sizes.objects, 1))
    return int(min(max(epochs, MIN_PRETRAIN_EPOCHS), MAX_PRETRAIN_EPOCHS))
