"""Train / val / test splits of an imported dataset, stratified by class and repeatable.

Rule (:func:`stratified_split`): each image is filed under the rarest class among its objects
(counted over the whole dataset; images without objects form their own group), as
``sppdet.training.splits`` does when it carves a validation split. In each group the images are
ranked by the SHA-256 of ``(seed, image id)`` and dealt out in the ratios: ``floor(ratio * n)``
per split, the leftover images to the splits with the largest remainders, then, when the group
has at least as many images as there are splits with a positive ratio, each such split that got
none takes one from the largest. So every class with three or more images appears in train, val
and test; a class with one image goes to train, with two to train and val. The result depends
only on the ids, the class names of each image and the seed, never on file order.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from typing import Mapping, Sequence

from sppdet.errors import ConfigError

SPLIT_NAMES = ("train", "val", "test")
DEFAULT_RATIOS = (0.6, 0.2, 0.2)


def parse_ratios(text: str) -> tuple[float, float, float]:
    """``"0.6,0.2,0.2"`` as (train, val, test) shares; ``ConfigError`` unless they are three
    numbers >= 0 summing to 1 with a positive train share."""
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) and v >= 0 for v in values):
        raise ConfigError(f"--split-ratios {text!r}: expected three shares train,val,test, e.g. 0.6,0.2,0.2")
    if abs(sum(values) - 1.0) > 1e-6 or values[0] <= 0:
        raise ConfigError(f"--split-ratios {text!r}: the shares must sum to 1 and train's must be above 0")
    return values  # type: ignore[return-value]


def _allocate(count: int, ratios: Sequence[float]) -> list[int]:
    """How many of ``count`` images each split gets (module docstring)."""
    exact = [ratio * count for ratio in ratios]
    counts = [math.floor(value) for value in exact]
    by_remainder = sorted(range(len(ratios)), key=lambda j: (-(exact[j] - counts[j]), j))
    for j in by_remainder[:count - sum(counts)]:
        counts[j] += 1
    wanted = [j for j, ratio in enumerate(ratios) if ratio > 0]
    if count >= len(wanted):
        for j in wanted:
            if counts[j] == 0:
                donor = max(range(len(counts)), key=lambda k: (counts[k], -k))
                counts[donor] -= 1
                counts[j] += 1
    return counts


def _rank_key(seed: int, image_id: str) -> str:
    return hashlib.sha256(f"{seed}:{image_id}".encode()).hexdigest()


def stratified_split(names: Mapping[str, Sequence[str]], ratios: Sequence[float] = DEFAULT_RATIOS,
                     seed: int = 0) -> dict[str, list[str]]:
    """``{"train", "val", "test"} -> sorted image ids`` for images ``names`` (image id -> the class
    names of its objects), by the rule of the module docstring."""
    counts = Counter(name for image_names in names.values() for name in image_names)
    groups: dict[str, list[str]] = {}
    for image_id, image_names in names.items():
        rarest = min(image_names, key=lambda name: (counts[name], name)) if image_names else ""
        groups.setdefault(rarest, []).append(image_id)
    splits: dict[str, list[str]] = {name: [] for name in SPLIT_NAMES}
    for members in groups.values():
        ranked = sorted(members, key=lambda image_id: _rank_key(seed, image_id))
        start = 0
        for name, size in zip(SPLIT_NAMES, _allocate(len(ranked), ratios)):
            splits[name] += ranked[start:start + size]
            start += size
    return {name: sorted(ids) for name, ids in splits.items()}
