"""Tiny two-class scenes shared by tests that train a detector end to end (test_detect, test_rcnn)."""

from __future__ import annotations

import cv2
import numpy as np


def shape_scene(rng: np.random.Generator, classes: tuple[str, str], height: int, width: int,
                sizes: tuple[int, int]):
    """A noisy background with 1-2 filled shapes of random colour: (BGR uint8 image [H, W, 3],
    boxes float32 [G, 4] (x1, y1, x2, y2), names). A class named "square" is drawn as a square, any
    other as a disc; side lengths are drawn from ``sizes`` (low inclusive, high exclusive)."""
    image = rng.normal(110, 25, (height, width, 3)).clip(0, 255).astype(np.uint8)
    boxes, names = [], []
    for _ in range(rng.integers(1, 3)):
        name = classes[rng.integers(len(classes))]
        size = int(rng.integers(*sizes))
        x, y = int(rng.integers(0, width - size)), int(rng.integers(0, height - size))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if name == "square":
            cv2.rectangle(image, (x, y), (x + size - 1, y + size - 1), colour, cv2.FILLED)
        else:
            cv2.circle(image, (x + size // 2, y + size // 2), size // 2, colour, cv2.FILLED)
        boxes.append([x, y, x + size, y + size])
        names.append(name)
    return image, np.array(boxes, np.float32), tuple(names)
