"""Scenery: synthetic datasets in VOC layout that do not look like ``sppdet synth``.

Three looks, each with its own classes, image sizes and clutter, for checking that the detector
works on data in general and not only on the demo's polygons:

``glyphs`` (classes ``a``, ``k``, ``r``, ``seven``: the characters A, K, R, 7)
    W and H each uniform in [320, 640] px. Paper: a light paper colour (white, cream, grey,
    bluish, yellowish) with uneven lighting and grain; plain, ruled (sometimes with a margin line)
    or squared; faint pencil strokes, stains and lines of small filler text. 2-8 class glyphs of
    box height 20-120 px (log-uniform, at most 40% of H) drawn with ``cv2.putText`` in one of six
    Hershey fonts (sometimes italic), stroke 4.5-11% of the glyph height, rotated by at most 12
    degrees and slanted by at most 8 (at most 20 together; no mirroring: characters change
    identity), width stretched by 0.85-1.15, in ink colours of the image (black, blue, red,
    green, graphite); 0-3 distractor glyphs of the same kind from ``BEFHLMNPSTXZ234568``. Glyphs
    never overlap (one that finds no free place is left out) and lie wholly inside the image.
``signs`` (classes ``arrow``, ``ring``, ``stop``, ``yield``)
    W uniform in [400, 800], H in [300, 600] px. A street: sky gradient with clouds, buildings
    with windows, background trees, ground (asphalt with road markings, grass or dirt), all
    blurred (depth of field). 1-5 signs of size 24-200 px (log-uniform, at most 45% of the
    shorter side) on grey poles, turned by up to 40 degrees about the vertical (narrower) and
    rotated by up to 8 in the plane, lit unevenly and hazed towards the sky. Colour carries class
    information here: ``stop`` red octagon with a white rim and white bar; ``yield`` inverted
    triangle, red border and yellow inside; ``arrow`` blue disc with a white arrow pointing
    right (not mirror invariant: a flipped image shows no arrow of this class); ``ring`` white
    disc in a thick green ring. 0-3 distractor plates share the colours (blue and green
    rectangular boards, yellow warning diamonds, red/white barriers); 0-2 foreground occluders
    (foliage, posts, cars), half of them placed on a sign's edge, partly hide signs; signs may
    overlap each other and be cut by the border.
``cells`` (classes ``oval``, ``pair``, ``round``, ``spiky``)
    W and H each uniform in [256, 384] px. A dark, noisy fluorescence-like field with vignetting,
    out-of-focus glows, dim fibres and bright debris dots. 4-15 cells (fewer where no free place
    is found) of size 12-48 px (log-uniform) with soft edges, all in one stain colour per image,
    so only the shape tells the class: ``round`` a disc with a darker nucleus; ``spiky`` a body
    with 7-12 spikes; ``oval`` an ellipse 2-3 times longer than wide; ``pair`` two touching discs
    with nuclei (a dividing cell). Cells never touch each other (their boxes are apart), so two
    rounds never make a pair; they may be cut by the border.

Shared by all looks: every random choice for image ``index`` (ids ``000001``, ...) comes from
``numpy.random.default_rng([seed, look number, index])``, so a build is byte-identical for the
same (look, seed, images) and ``images=12`` gives the first 12 images of ``images=400``. A quarter
of the images are PNG, the rest JPEG (quality 90); the annotation's ``<filename>`` names it.

Ground truth (boxes in the convention of ``sppdet.structures.boxes``): the tight box of the pixels an object
covers by about a quarter or more (objects are rendered 4x supersampled, or at least 2.5x for
glyphs), so boxes are integral and exact after the VOC round trip; cut at the image border
(truncation, as VOC annotates it). Occlusion is tracked per pixel (coverage >= 1/2; distractors
and occluders count as occluding): an object is ``difficult`` if its box is under 10 px in
geometric mean side, if under 40% of its in-image pixels stay visible, or if under 60% of its
pixels lie in the image; one with under 5% of its pixels visible is drawn but not annotated.

Splits: 40% of the images are ``test``, the rest ``trainval``; only these two split files are
written, so that a consumer carves its own validation split. ``with_val=True`` also writes
``val`` (half of trainval) and ``train`` (the other half). Output folders are claimed by
``scenery.json``; a non-empty folder without it is refused, one with it is regenerated.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import NamedTuple, Sequence

import cv2
import numpy as np

from sppdet.config import SCENERY_LOOKS
from sppdet.data.voc import Annotation, read_annotation, write_annotation, write_split
from sppdet.data.claim import check_output as claimed_output
from sppdet.errors import ConfigError
from sppdet.parallel import Progress, map_unordered, no_progress
from sppdet.fileio import atomic_write_bytes, atomic_write_json

LOOKS = SCENERY_LOOKS
#: Class names per look, sorted (as ``voc.discover_classes`` lists them).
CLASSES = {
    "glyphs": ("a", "k", "r", "seven"),
    "signs": ("arrow", "ring", "stop", "yield"),
    "cells": ("oval", "pair", "round", "spiky"),
}
SPLITS = ("trainval", "test")
VAL_SPLITS = ("train", "val", "trainval", "test")
MARKER = "scenery.json"
GENERATOR = "sppdet scenery"
FORMAT = 1  # bump when the images or annotations for a given (look, seed) change

TEST_FRACTION = 0.4
PNG_FRACTION = 0.25
JPEG_QUALITY = 90
BOX_ALPHA = 64  # coverage (of 255) that puts a pixel in an object's box
SOLID_ALPHA = 128  # coverage that makes a pixel an object's own (for visibility)
DIFFICULT_SIZE = 10.0  # px, geometric mean of the box sides
DIFFICULT_VISIBLE = 0.4  # of the in-image pixels
DIFFICULT_INSIDE = 0.6  # of all pixels
DROP_VISIBLE = 0.05  # of all pixels
SUPERSAMPLE = 4
SHIFT = 4  # cv2 fixed-point bits

GLYPH_SIDES = (320, 640)
GLYPH_HEIGHT = (20.0, 120.0)
SIGN_WIDTH, SIGN_HEIGHT = (400, 800), (300, 600)
SIGN_SIZE = (24.0, 200.0)
CELL_SIDES = (256, 384)
CELL_SIZE = (12.0, 48.0)


@dataclass(frozen=True)
class ScenerySummary:
    """What :func:`write_scenery` wrote: per-class object counts (difficult included) and
    difficult counts, and the number of images per split written."""

    root: Path
    look: str
    seed: int
    images: int
    objects: dict[str, int]
    difficult: dict[str, int]
    splits: dict[str, int]


class _Sprite(NamedTuple):
    """A drawable patch: ``alpha`` uint8 [h, w] coverage, ``layer`` float32 [h, w, 3] BGR (or
    one colour [3]) and ``top_left`` int64 (x, y) of the patch in the image."""

    alpha: np.ndarray
    layer: np.ndarray
    top_left: np.ndarray


# ---------------------------------------------------------------------------------------------
# drawing helpers


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """float32 values rounded and saturated to uint8 (same shape; ``values`` is overwritten)."""
    values += 0.5
    return np.clip(values, 0, 255, out=values).astype(np.uint8)


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: int, channels: int = 0) -> np.ndarray:
    """float32 noise of about unit deviation varying over ``cell`` px: [H, W] or [H, W, channels]."""
    shape = (height // cell + 2, width // cell + 2) + ((channels,) if channels else ())
    coarse = rng.standard_normal(shape, dtype=np.float32)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)


def _ramp(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """float32 [H, W] linear ramp from 0 to 1 along a random direction."""
    angle = rng.uniform(0, 2 * np.pi)
    t = (np.arange(width, dtype=np.float32)[None] * np.float32(np.cos(angle))
         + np.arange(height, dtype=np.float32)[:, None] * np.float32(np.sin(angle)))
    t -= t.min()
    return t / max(float(t.max()), 1e-6)


def _blend_mask(canvas: np.ndarray, mask: np.ndarray, colour, strength: float) -> None:
    """Blend ``colour`` into float32 ``canvas`` [H, W, 3] (in place) through uint8 ``mask`` [H, W]."""
    a = mask.astype(np.float32)[..., None] * np.float32(strength / 255)
    canvas += (np.asarray(colour, np.float32) - canvas) * a


def _window(top_left: np.ndarray, shape: tuple[int, ...], height: int, width: int):
    """Where a patch of ``shape`` (h, w, ...) at integer ``top_left`` (x, y), possibly outside the
    image, meets the [H, W] image: (image slices, patch slices), both (rows, cols)."""
    left, top = int(top_left[0]), int(top_left[1])
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = max(min(left + shape[1], width), x0), max(min(top + shape[0], height), y0)
    return (slice(y0, y1), slice(x0, x1)), (slice(y0 - top, y1 - top), slice(x0 - left, x1 - left))


def _ellipse(rx: float, ry: float, angle: float = 0.0, points: int = 48) -> np.ndarray:
    """Polygon [P, 2] of an ellipse with radii (rx, ry) rotated by ``angle``, centred on 0."""
    t = np.linspace(0, 2 * np.pi, points, endpoint=False)
    return _turn(np.stack([rx * np.cos(t), ry * np.sin(t)], axis=1), angle)


def _regular(sides: int, radius: float, phase: float) -> np.ndarray:
    """Regular polygon [sides, 2] with vertex radius ``radius``, first vertex at angle ``phase``."""
    t = phase + np.arange(sides) * 2 * np.pi / sides
    return radius * np.stack([np.cos(t), np.sin(t)], axis=1)


def _turn(points: np.ndarray, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


def _blob(rng: np.random.Generator, radius: float, lumps: float = 0.2, points: int = 40) -> np.ndarray:
    """A lumpy closed polygon [P, 2] of about ``radius`` centred on 0 (harmonics 2-5)."""
    t = np.linspace(0, 2 * np.pi, points, endpoint=False)
    amplitude, phase = rng.uniform(0, lumps, 4), rng.uniform(0, 2 * np.pi, 4)
    r = radius * (1 + (amplitude[:, None] * np.cos(np.arange(2, 6)[:, None] * t + phase[:, None])).sum(0))
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _raster(parts: Sequence[tuple[Sequence[np.ndarray], Sequence[float]]], pad: float = 1.0,
            blur: float = 0.0) -> _Sprite:
    """Paint ``parts`` (polygons [P, 2] in continuous image coordinates, BGR colour), in order,
    into a sprite: alpha is the union's covered fraction of each pixel and the layer the
    coverage-weighted colour (drawn 4x finer and averaged), optionally blurred by ``blur`` px."""
    points = np.concatenate([polygon for polygons, _ in parts for polygon in polygons])
    pad += 3 * blur
    top_left = np.floor(points.min(axis=0) - pad).astype(np.int64)
    size = np.ceil(points.max(axis=0) + pad).astype(np.int64) - top_left
    width, height = int(size[0]), int(size[1])
    fine_alpha = np.zeros((height * SUPERSAMPLE, width * SUPERSAMPLE), np.uint8)
    fine_colour = np.zeros((height * SUPERSAMPLE, width * SUPERSAMPLE, 3), np.uint8)
    for polygons, colour in parts:
        colour = tuple(float(np.clip(c, 0, 255)) for c in colour)
        for polygon in polygons:  # one at a time: one fillPoly call would XOR overlaps
            # cv2 puts integer point (i, j) at the centre of pixel (i, j): continuous (i + .5, j + .5).
            fixed = np.round(((polygon - top_left) * SUPERSAMPLE - 0.5) * (1 << SHIFT)).astype(np.int32)[None]
            cv2.fillPoly(fine_alpha, fixed, 255, cv2.LINE_8, SHIFT)
            cv2.fillPoly(fine_colour, fixed, colour, cv2.LINE_8, SHIFT)
    alpha = cv2.resize(fine_alpha, (width, height), interpolation=cv2.INTER_AREA).astype(np.float32)
    premultiplied = cv2.resize(fine_colour, (width, height), interpolation=cv2.INTER_AREA).astype(np.float32)
    if blur > 0:
        alpha = cv2.GaussianBlur(alpha, (0, 0), blur)
        premultiplied = cv2.GaussianBlur(premultiplied, (0, 0), blur)
    layer = premultiplied * (255 / np.maximum(alpha, 1.0))[..., None]
    return _Sprite(_to_uint8(alpha), np.clip(layer, 0, 255, out=layer), top_left)


def _shade(rng: np.random.Generator, sprite: _Sprite, low: float, high: float, texture: float = 0.0) -> _Sprite:
    """The sprite with its layer lit by a random linear gradient between ``low`` and ``high``
    times the colour, plus smooth relative texture of deviation ``texture``."""
    height, width = sprite.alpha.shape
    light = np.float32(low) + np.float32(high - low) * _ramp(rng, height, width)
    if texture:
        light *= 1 + np.float32(texture) * _smooth_noise(rng, height, width, max(2, min(height, width) // 4))
    return sprite._replace(layer=sprite.layer * light[..., None])


class _Scene:
    """A float32 BGR canvas plus who owns each pixel; collects the annotated objects."""

    def __init__(self, canvas: np.ndarray):
        self.canvas = canvas
        self.height, self.width = canvas.shape[:2]
        self.owner = np.zeros((self.height, self.width), np.int32)  # 0 = background, k = k-th object
        self.names: list[str] = []
        self.boxes: list[tuple[int, int, int, int]] = []
        self.full: list[int] = []
        self.inside: list[int] = []

    def paste(self, sprite: _Sprite, name: str | None = None, opacity: float = 1.0) -> None:
        """Composite ``sprite`` over the canvas; an object of class ``name`` if given, else a
        distractor or occluder (whose solid pixels hide what lies below)."""
        alpha, layer, top_left = sprite
        image, patch = _window(top_left, alpha.shape, self.height, self.width)
        shown = alpha[patch]
        region = self.canvas[image]
        colour = layer[patch] if layer.ndim == 3 else np.asarray(layer, np.float32)
        region += (colour - region) * (shown.astype(np.float32)[..., None] * np.float32(opacity / 255))
        solid = shown >= SOLID_ALPHA
        if name is None:
            self.owner[image][solid] = 0
            return
        rows = np.flatnonzero((alpha >= BOX_ALPHA).any(axis=1))
        cols = np.flatnonzero((alpha >= BOX_ALPHA).any(axis=0))
        if not rows.size:
            return
        left, top = int(top_left[0]), int(top_left[1])
        box = (min(max(left + int(cols[0]), 0), self.width), min(max(top + int(rows[0]), 0), self.height),
               min(max(left + int(cols[-1]) + 1, 0), self.width), min(max(top + int(rows[-1]) + 1, 0), self.height))
        self.names.append(name)
        self.boxes.append(box)
        self.full.append(int((alpha >= SOLID_ALPHA).sum()))
        self.inside.append(int(solid.sum()))
        self.owner[image][solid] = len(self.names)

    def finish(self, rng: np.random.Generator, noise: tuple[float, float], image_id: str,
               suffix: str) -> tuple[np.ndarray, Annotation]:
        """The uint8 image with sensor noise (deviation uniform in ``noise``) and the annotation."""
        jitter = rng.random(self.canvas.shape, dtype=np.float32) - np.float32(0.5)
        self.canvas += jitter * np.float32(np.sqrt(12) * rng.uniform(*noise))
        image = _to_uint8(self.canvas)
        count = len(self.names)
        boxes = np.array(self.boxes, np.float32).reshape(-1, 4)
        full = np.maximum(np.array(self.full, np.int64), 1)
        inside = np.array(self.inside, np.int64)
        visible = np.bincount(self.owner.ravel(), minlength=count + 1)[1:count + 1]
        sides = np.clip(boxes[:, 2:] - boxes[:, :2], 0, None)
        keep = (visible >= DROP_VISIBLE * full) & np.all(sides > 0, axis=1)
        difficult = ((np.sqrt(sides[:, 0] * sides[:, 1]) < DIFFICULT_SIZE)
                     | (visible < DIFFICULT_VISIBLE * np.maximum(inside, 1)) | (inside < DIFFICULT_INSIDE * full))
        return image, Annotation(
            image_id=image_id, width=self.width, height=self.height, boxes=boxes[keep],
            names=tuple(n for n, k in zip(self.names, keep) if k), difficult=difficult[keep],
            filename=f"{image_id}{suffix}")


def _apart(box: np.ndarray, boxes: list[np.ndarray], gap: float) -> bool:
    """True if ``box`` (x1, y1, x2, y2) keeps ``gap`` px from every box in ``boxes``."""
    return all(box[0] >= b[2] + gap or b[0] >= box[2] + gap or box[1] >= b[3] + gap or b[1] >= box[3] + gap
               for b in boxes)


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(max(high, low)))))


# ---------------------------------------------------------------------------------------------
# glyphs

GLYPH_TEXT = {"a": "A", "k": "K", "r": "R", "seven": "7"}
FILLER_TEXT = "BEFHLMNPSTXZ234568"  # none is a class glyph or easily read as one
FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_PLAIN, cv2.FONT_HERSHEY_DUPLEX,
         cv2.FONT_HERSHEY_COMPLEX, cv2.FONT_HERSHEY_TRIPLEX, cv2.FONT_HERSHEY_COMPLEX_SMALL)
PAPERS = ((246, 246, 246), (222, 238, 247), (228, 228, 228), (247, 236, 226), (200, 232, 240))  # BGR
INKS = ((35, 30, 30), (150, 60, 25), (110, 40, 10), (45, 45, 185), (60, 110, 30), (95, 95, 95))
GLYPH_FINE = 96  # px, height of a glyph's cap before it is shrunk to size (at least 2.5x supersampled)


def _glyph_mask(rng: np.random.Generator, text: str, height: float) -> np.ndarray:
    """uint8 coverage [h, w] of one character, cropped tight: ``height`` px tall, random font,
    stroke, rotation (<= 12 deg) and slant (<= 8 deg, none if italic), width jitter."""
    font = int(FONTS[int(rng.integers(len(FONTS)))])
    italic = rng.random() < 0.25
    font |= cv2.FONT_ITALIC if italic else 0
    fine = max(GLYPH_FINE, int(np.ceil(2.5 * height)))
    (text_width, text_height), baseline = cv2.getTextSize(text, font, 1.0, 1)
    scale = fine / max(text_height, 1)
    thickness = max(2, int(round(fine * rng.uniform(0.045, 0.11))))
    pad = thickness + 4
    mask = np.zeros((int((text_height + baseline) * scale) + 2 * pad, int(text_width * scale) + 2 * pad), np.uint8)
    cv2.putText(mask, text, (pad, pad + fine), font, scale, 255, thickness, cv2.LINE_AA)
    angle = np.radians(rng.uniform(-8, 8) if italic else rng.uniform(-12, 12))
    slant = 0.0 if italic else np.tan(np.radians(rng.uniform(-8, 8)))
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    linear = rotation @ np.array([[1, slant], [0, 1]])
    h, w = mask.shape
    corners = np.array([(0, 0), (w, 0), (0, h), (w, h)], np.float64) @ linear.T
    shift = -corners.min(axis=0)
    size = np.ceil(corners.max(axis=0) + shift).astype(int)
    warped = cv2.warpAffine(mask, np.hstack([linear, shift[:, None]]), (int(size[0]), int(size[1])),
                            flags=cv2.INTER_LINEAR)
    rows = np.flatnonzero((warped >= 32).any(axis=1))
    cols = np.flatnonzero((warped >= 32).any(axis=0))
    crop = warped[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    out_height = max(int(round(height)), 1)
    out_width = max(int(round(crop.shape[1] * out_height / crop.shape[0] * rng.uniform(0.85, 1.15))), 1)
    return cv2.resize(crop, (out_width, out_height), interpolation=cv2.INTER_AREA)


def _paper(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """float32 BGR [H, W, 3]: paper with lighting, grain, rules or squares, stains, pencil
    strokes and lines of small filler text."""
    base = np.asarray(PAPERS[int(rng.integers(len(PAPERS)))], np.float32) + rng.uniform(-8, 8, 3).astype(np.float32)
    light = 1 - np.float32(rng.uniform(0.0, 0.14)) * _ramp(rng, height, width)
    light += np.float32(rng.uniform(0.005, 0.025)) * _smooth_noise(rng, height, width, 48)
    canvas = base * light[..., None]
    grain = rng.random((height, width), dtype=np.float32) - np.float32(0.5)
    canvas += (cv2.GaussianBlur(grain, (0, 0), 0.8) * np.float32(rng.uniform(8, 24)))[..., None]

    lines = np.zeros((height, width), np.uint8)
    kind = rng.random()
    tilt = np.tan(np.radians(rng.uniform(-1.5, 1.5)))
    spacing = rng.uniform(16, 34)
    if kind >= 0.3:  # ruled or squared
        for y in np.arange(rng.uniform(4, spacing), height + width * abs(tilt), spacing):
            cv2.line(lines, (0, int(y)), (width - 1, int(y - width * tilt)), 255, 1, cv2.LINE_AA)
    if kind >= 0.7:  # squared
        for x in np.arange(rng.uniform(4, spacing), width + height * abs(tilt), spacing):
            cv2.line(lines, (int(x), 0), (int(x + height * tilt), height - 1), 255, 1, cv2.LINE_AA)
    line_colour = base * np.float32(rng.uniform(0.55, 0.8)) + np.float32([40, 10, -10])
    _blend_mask(canvas, lines, line_colour, rng.uniform(0.35, 0.7))
    if 0.3 <= kind < 0.7 and rng.random() < 0.5:  # margin
        lines[:] = 0
        x = int(rng.uniform(0.08, 0.2) * width)
        cv2.line(lines, (x, 0), (x, height - 1), 255, 1 + int(rng.integers(2)), cv2.LINE_AA)
        _blend_mask(canvas, lines, (70, 70, 210), rng.uniform(0.4, 0.7))

    marks = np.zeros((height, width), np.uint8)
    for _ in range(int(rng.integers(0, 3))):  # stains: soft rings
        centre = rng.uniform((0, 0), (width, height))
        axes = rng.uniform(15, 70, 2)
        cv2.ellipse(marks, (int(centre[0]), int(centre[1])), (int(axes[0]), int(axes[1])),
                    float(rng.uniform(0, 180)), 0, 360, 255, int(rng.integers(2, 7)), cv2.LINE_AA)
    if marks.any():
        _blend_mask(canvas, cv2.GaussianBlur(marks, (0, 0), 2.0), (90, 140, 170), rng.uniform(0.15, 0.35))
    marks[:] = 0
    for _ in range(int(rng.integers(0, 5))):  # pencil strokes
        steps = rng.normal(0, 1, (int(rng.integers(2, 7)), 2)) * rng.uniform(10, 60)
        points = np.round(rng.uniform((0, 0), (width, height)) + np.cumsum(steps, axis=0)).astype(np.int32)
        cv2.polylines(marks, [points], False, 255, int(rng.integers(1, 3)), cv2.LINE_AA)
    _blend_mask(canvas, marks, (80, 80, 80), rng.uniform(0.2, 0.45))
    marks[:] = 0
    for _ in range(int(rng.integers(0, 4))):  # lines of small filler text
        size = rng.uniform(7, 13)
        font = int(FONTS[int(rng.integers(len(FONTS)))])
        scale = size / cv2.getTextSize("H", font, 1.0, 1)[0][1]
        words = " ".join("".join(FILLER_TEXT[int(i)] for i in rng.integers(0, len(FILLER_TEXT), rng.integers(2, 7)))
                         for _ in range(int(rng.integers(2, 7))))
        origin = (int(rng.uniform(-0.2, 0.7) * width), int(rng.uniform(size, height)))
        cv2.putText(marks, words, origin, font, scale, 255, 1, cv2.LINE_AA)
    _blend_mask(canvas, marks, INKS[int(rng.integers(len(INKS)))], rng.uniform(0.3, 0.7))
    return canvas


def _render_glyphs(rng: np.random.Generator, image_id: str, suffix: str) -> tuple[np.ndarray, Annotation]:
    width, height = (int(v) for v in rng.integers(GLYPH_SIDES[0], GLYPH_SIDES[1] + 1, 2))
    scene = _Scene(_paper(rng, height, width))
    inks = [INKS[int(i)] for i in rng.choice(len(INKS), 2, replace=False)]
    classes = CLASSES["glyphs"]
    wanted = [classes[int(rng.integers(len(classes)))] for _ in range(int(rng.integers(2, 9)))]
    wanted += [None] * int(rng.integers(0, 4))  # distractor glyphs
    placed: list[np.ndarray] = []
    for name in wanted:
        text = GLYPH_TEXT[name] if name else FILLER_TEXT[int(rng.integers(len(FILLER_TEXT)))]
        mask = _glyph_mask(rng, text, _log_uniform(rng, GLYPH_HEIGHT[0], min(GLYPH_HEIGHT[1], 0.4 * height)))
        h, w = mask.shape
        ink = np.asarray(inks[int(rng.integers(2))], np.float32) + rng.uniform(-12, 12, 3).astype(np.float32)
        opacity = rng.uniform(0.75, 1.0)
        for _ in range(25):
            top_left = rng.integers((0, 0), (max(width - w, 0) + 1, max(height - h, 0) + 1))
            box = np.array([top_left[0], top_left[1], top_left[0] + w, top_left[1] + h])
            if box[2] <= width and box[3] <= height and _apart(box, placed, 3):
                placed.append(box)
                scene.paste(_Sprite(mask, ink, top_left.astype(np.int64)), name, opacity)
                break
    scene.canvas = cv2.GaussianBlur(scene.canvas, (0, 0), rng.uniform(0.3, 0.8))  # print and scan blur
    return scene.finish(rng, (1.5, 5.0), image_id, suffix)


# ---------------------------------------------------------------------------------------------
# signs

RED, WHITE, YELLOW, BLUE, GREEN, DARK = (35, 30, 200), (242, 242, 242), (20, 200, 245), (190, 95, 20), \
    (50, 145, 35), (45, 45, 45)
_ARROW = np.array([(-0.62, -0.15), (0.08, -0.15), (0.08, -0.44), (0.66, 0.0), (0.08, 0.44), (0.08, 0.15),
                   (-0.62, 0.15)])
_DOWN_TRIANGLE = _regular(3, 1.0, np.pi / 2)  # centroid at 0; its box is centred on (0, 0.25)


def _sign_parts(name: str) -> list[tuple[list[np.ndarray], tuple]]:
    """A class's sign in unit coordinates (about [-1, 1]^2, y down): polygons and colours."""
    if name == "stop":
        return [([_regular(8, 1.0, np.pi / 8)], WHITE), ([_regular(8, 0.9, np.pi / 8)], RED),
                ([np.array([(-0.62, -0.15), (0.62, -0.15), (0.62, 0.15), (-0.62, 0.15)])], WHITE)]
    if name == "yield":
        return [([_DOWN_TRIANGLE * k + (0, -0.25)], colour) for k, colour in ((1, WHITE), (0.92, RED), (0.48, YELLOW))]
    if name == "arrow":
        return [([_ellipse(1, 1, points=64)], WHITE), ([_ellipse(0.92, 0.92, points=64)], BLUE), ([_ARROW], WHITE)]
    if name == "ring":
        return [([_ellipse(1, 1, points=64)], DARK), ([_ellipse(0.95, 0.95, points=64)], GREEN),
                ([_ellipse(0.58, 0.58, points=64)], WHITE)]
    raise ValueError(name)


def _plate_parts(rng: np.random.Generator) -> list[tuple[list[np.ndarray], tuple]]:
    """A distractor plate (not a class) in unit coordinates: a board, a warning diamond or a barrier."""
    kind = int(rng.integers(4))
    if kind <= 1:  # blue or green board with a white rim and lines of "text"
        aspect = rng.uniform(1.3, 2.4)
        rim = np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)]) * (1, 1 / aspect)
        parts = [([rim], WHITE), ([rim * 0.92], BLUE if kind == 0 else GREEN)]
        rows = int(rng.integers(1, 4))
        for row in range(rows):
            y = (row + 0.5) / rows * 1.2 / aspect - 0.6 / aspect
            length = rng.uniform(0.4, 0.75)
            parts.append(([np.array([(-0.75, y - 0.05), (-0.75 + 2 * length, y - 0.05), (-0.75 + 2 * length, y + 0.05),
                                     (-0.75, y + 0.05)])], WHITE))
        return parts
    if kind == 2:  # yellow warning diamond with a black border and an exclamation mark
        diamond = _regular(4, 1.0, 0.0)
        return [([diamond], DARK), ([diamond * 0.86], YELLOW),
                ([np.array([(-0.07, -0.5), (0.07, -0.5), (0.05, 0.15), (-0.05, 0.15)]),
                  _ellipse(0.08, 0.08, points=16) + (0, 0.35)], DARK)]
    stripes = int(rng.integers(3, 6))  # red/white barrier
    parts = [([np.array([(-1, -0.3), (1, -0.3), (1, 0.3), (-1, 0.3)])], WHITE)]
    for k in range(stripes):
        x = -1 + 2 * k / stripes
        parts.append(([np.array([(x, -0.3), (x + 1 / stripes, -0.3), (x + 1 / stripes, 0.3), (x, 0.3)])], RED))
    return parts


def _placed(parts, centre, size: float, squeeze: float, angle: float):
    """Unit-coordinate parts scaled to ``size`` px across, narrowed by ``squeeze``, rotated, moved."""
    linear = size / 2 * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) \
        @ np.diag([squeeze, 1.0])
    return [([polygon @ linear.T + centre for polygon in polygons], colour) for polygons, colour in parts]


def _street(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, int, np.ndarray]:
    """float32 BGR street background [H, W, 3], the horizon row and the sky colour there."""
    horizon = int(height * rng.uniform(0.35, 0.6))
    skies = (((200, 140, 70), (240, 215, 185)), ((175, 172, 165), (215, 212, 208)), ((140, 100, 110), (140, 185, 235)))
    top, bottom = (np.asarray(c, np.float32) + rng.uniform(-12, 12, 3).astype(np.float32)
                   for c in skies[int(rng.integers(len(skies)))])
    t = (np.arange(height, dtype=np.float32) / max(horizon, 1)).clip(0, 1)[:, None, None]
    canvas = np.broadcast_to(top + t * (bottom - top), (height, width, 3)).copy()
    clouds = _smooth_noise(rng, height, width, 90) + np.float32(0.4) * _smooth_noise(rng, height, width, 30)
    clouds = np.clip(clouds - np.float32(rng.uniform(0.2, 1.2)), 0, 1)
    canvas += (np.float32(245) - canvas) * (clouds * np.float32(rng.uniform(0.2, 0.6)))[..., None]

    for _ in range(int(rng.integers(2, 11))):  # buildings standing on the horizon
        x0 = int(rng.uniform(-50, width))
        w, h = int(rng.uniform(30, 180)), int(rng.uniform(0.15, 0.95) * horizon)
        grey = rng.uniform(70, 200)
        haze = rng.uniform(0, 0.4)
        colour = np.clip(grey + rng.uniform(-25, 25, 3), 0, 255) * (1 - haze) + bottom * haze
        cv2.rectangle(canvas, (x0, horizon - h), (x0 + w, horizon), colour.tolist(), -1)
        if rng.random() < 0.65:
            cell = rng.uniform(8, 18)
            window = (colour * rng.uniform(0.4, 0.7) + np.array([30, 10, 0])).tolist()
            for wy in np.arange(horizon - h + cell / 2, horizon - cell, cell):
                for wx in np.arange(x0 + cell / 2, x0 + w - cell / 2, cell):
                    cv2.rectangle(canvas, (int(wx), int(wy)), (int(wx + cell / 2), int(wy + cell / 2)), window, -1)
    grounds = ((95, 95, 98), (60, 130, 80), (80, 115, 140))
    kind = int(rng.integers(len(grounds)))
    near = np.asarray(grounds[kind], np.float32) * np.float32(rng.uniform(0.7, 1.1))
    far = near * np.float32(0.6) + bottom * np.float32(0.4)
    t = np.linspace(0, 1, height - horizon, dtype=np.float32)[:, None, None]
    canvas[horizon:] = far + t * (near - far)
    texture = _smooth_noise(rng, height - horizon, width, 12)[..., None]
    canvas[horizon:] *= 1 + np.float32(rng.uniform(0.03, 0.07)) * texture
    if kind == 0:  # road markings towards a vanishing point
        vanish = rng.uniform(0.2, 0.8) * width
        marks = np.zeros((height, width), np.uint8)
        for spread in rng.uniform(-1.5, 1.5, int(rng.integers(1, 4))):
            foot = vanish + spread * width
            for k in range(0, 12, 2):
                a, b = (1 - 0.5 ** (k / 3)), (1 - 0.5 ** ((k + 1) / 3))
                p = [(vanish + (foot - vanish) * f, horizon + (height - horizon) * f) for f in (a, b)]
                thick = max(1, int(round(6 * b)))
                cv2.line(marks, tuple(int(v) for v in p[0]), tuple(int(v) for v in p[1]), 255, thick, cv2.LINE_AA)
        _blend_mask(canvas, marks, (225, 230, 230), 0.8)
    for _ in range(int(rng.integers(0, 5))):  # background trees
        radius = rng.uniform(15, 60)
        centre = np.array([rng.uniform(0, width), horizon - rng.uniform(0.3, 1.2) * radius])
        colour = np.array([40, 110, 50]) * rng.uniform(0.6, 1.2)
        trunk = np.array([(-0.1, 0), (0.1, 0), (0.1, 1.6), (-0.1, 1.6)]) * radius + centre
        _Scene(canvas).paste(_raster([([trunk], (40, 60, 80)), ([_blob(rng, radius, 0.25) + centre], colour)]))
    canvas = cv2.GaussianBlur(canvas, (0, 0), rng.uniform(0.8, 2.0))  # depth of field
    return canvas, horizon, bottom


def _mount(rng: np.random.Generator, scene: _Scene, parts, centre: np.ndarray, size: float, horizon: int,
           sky: np.ndarray, name: str | None) -> None:
    """Draw a grey pole below ``centre``, then the sign or plate on it, lit and hazed."""
    if rng.random() < 0.8:
        foot = max(centre[1] + size * rng.uniform(0.8, 2.5), horizon + rng.uniform(5, 40))
        half = max(1.2, size * rng.uniform(0.03, 0.05))
        pole = np.array([(-half, 0), (half, 0), (half, foot - centre[1]), (-half, foot - centre[1])]) + centre
        grey = rng.uniform(90, 160)
        scene.paste(_shade(rng, _raster([([pole], (grey, grey, grey))]), 0.7, 1.1))
    squeeze = np.cos(np.radians(rng.uniform(0, 40)))
    sprite = _raster(_placed(parts, centre, size, squeeze, np.radians(rng.uniform(-8, 8))))
    brightness = rng.uniform(0.55, 1.1)
    sprite = _shade(rng, sprite, brightness * rng.uniform(0.8, 1.0), brightness * rng.uniform(1.0, 1.15), 0.03)
    haze = np.float32(rng.uniform(0, 0.3))
    sprite = sprite._replace(layer=sprite.layer * (1 - haze) + sky * haze)
    if size < 60 and rng.random() < 0.5:  # far away: a little out of focus
        sprite = sprite._replace(layer=cv2.GaussianBlur(sprite.layer, (0, 0), 0.6))
    scene.paste(sprite, name)


def _occluder(rng: np.random.Generator, scene: _Scene, targets: list[np.ndarray]) -> None:
    """Foliage, a post or a car in front, half the time over part of a sign."""
    height, width = scene.height, scene.width
    if targets and rng.random() < 0.5:
        box = targets[int(rng.integers(len(targets)))]
        side = rng.integers(4)
        centre = np.array([box[0] if side == 0 else box[2] if side == 1 else rng.uniform(box[0], box[2]),
                           box[1] if side == 2 else box[3] if side == 3 else rng.uniform(box[1], box[3])])
    else:
        centre = rng.uniform((0, 0), (width, height))
    kind = int(rng.integers(3))
    if kind == 0:
        foliage = _blob(rng, rng.uniform(15, 70), 0.3) + centre
        sprite = _raster([([foliage], np.array([35, 95, 45]) * rng.uniform(0.5, 1.2))], blur=0.7)
        scene.paste(_shade(rng, sprite, 0.6, 1.2, 0.25))
    elif kind == 1:
        half = rng.uniform(3, 10)
        post = np.array([(-half, centre[1] - height), (half, centre[1] - height), (half, height + 5),
                         (-half, height + 5)]) + (centre[0], 0)
        grey = rng.uniform(30, 90)
        scene.paste(_shade(rng, _raster([([post], (grey, grey, grey))]), 0.7, 1.3))
    else:
        w, h = rng.uniform(90, 260), rng.uniform(35, 80)
        body = np.array([(-w / 2, 0), (w / 2, 0), (w / 2, h), (-w / 2, h)]) + centre
        cabin = np.array([(-w / 3, -0.6 * h), (w / 4, -0.6 * h), (w / 3, 0), (-w * 0.4, 0)]) + centre
        glass = np.array([(-w / 3.6, -0.5 * h), (w / 4.5, -0.5 * h), (w / 3.6, -0.05 * h),
                          (-w / 2.9, -0.05 * h)]) + centre
        colour = rng.uniform(20, 230, 3)
        wheels = [_ellipse(h / 3, h / 3) + centre + (x * w, h) for x in (-0.3, 0.3)]
        sprite = _raster([([body, cabin], colour), ([glass], (70, 60, 50)), (wheels, (25, 25, 25))])
        scene.paste(_shade(rng, sprite, 0.7, 1.15))


def _render_signs(rng: np.random.Generator, image_id: str, suffix: str) -> tuple[np.ndarray, Annotation]:
    width = int(rng.integers(SIGN_WIDTH[0], SIGN_WIDTH[1] + 1))
    height = int(rng.integers(SIGN_HEIGHT[0], SIGN_HEIGHT[1] + 1))
    canvas, horizon, sky = _street(rng, height, width)
    scene = _Scene(canvas)
    classes = CLASSES["signs"]
    wanted = [classes[int(rng.integers(len(classes)))] for _ in range(int(rng.integers(1, 6)))]
    wanted += [None] * int(rng.integers(0, 4))
    order = rng.permutation(len(wanted))
    boxes: list[np.ndarray] = []
    for k in order:
        name = wanted[int(k)]
        size = _log_uniform(rng, SIGN_SIZE[0], min(SIGN_SIZE[1], 0.45 * min(width, height)))
        parts = _sign_parts(name) if name else _plate_parts(rng)
        for _ in range(10):
            centre = np.array([rng.uniform(-0.15 * size, width + 0.15 * size), rng.uniform(0.1, 0.85) * height])
            box = np.concatenate([centre - size / 2, centre + size / 2])
            if all(_overlap(box, b) <= 0.3 for b in boxes):
                break
        boxes.append(box)
        _mount(rng, scene, parts, centre, size, horizon, sky, name)
    for _ in range(int(rng.integers(0, 3))):
        _occluder(rng, scene, boxes)
    return scene.finish(rng, (1.5, 5.0), image_id, suffix)


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over the smaller box's area of boxes (x1, y1, x2, y2)."""
    w = max(min(a[2], b[2]) - max(a[0], b[0]), 0)
    h = max(min(a[3], b[3]) - max(a[1], b[1]), 0)
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return float(w * h / max(smaller, 1e-6))


# ---------------------------------------------------------------------------------------------
# cells

STAINS = ((70, 235, 90), (90, 100, 255), (230, 215, 70), (50, 215, 235), (225, 90, 220))  # BGR


def _cell_parts(rng: np.random.Generator, name: str, size: float, stain: np.ndarray):
    """A cell of class ``name`` about ``size`` px across, centred on 0: polygons and colours."""
    radius, angle = size / 2, rng.uniform(0, 2 * np.pi)
    dark = stain * rng.uniform(0.3, 0.5)
    if name == "round":
        body = _ellipse(radius, radius * rng.uniform(0.85, 1.0), angle)
        nucleus = _ellipse(*(radius * rng.uniform(0.35, 0.5, 2)), angle) + rng.uniform(-0.2, 0.2, 2) * radius
        return [([body], stain), ([nucleus], dark)]
    if name == "oval":
        return [([_ellipse(radius, radius / rng.uniform(2.0, 3.0), angle)], stain)]
    if name == "spiky":
        spikes = int(rng.integers(7, 13))
        t = angle + (np.arange(2 * spikes) + rng.uniform(-0.25, 0.25, 2 * spikes)) * np.pi / spikes
        r = np.where(np.arange(2 * spikes) % 2 == 0, rng.uniform(0.85, 1.0, 2 * spikes),
                     rng.uniform(0.45, 0.6, 2 * spikes)) * radius
        return [([np.stack([r * np.cos(t), r * np.sin(t)], axis=1)], stain)]
    if name == "pair":
        small = radius * rng.uniform(0.5, 0.56, 2)
        axis = np.array([np.cos(angle), np.sin(angle)])
        gap = (small[0] + small[1]) * rng.uniform(0.82, 0.95)
        centres = (-small[0] * axis, (gap - small[0]) * axis)
        shift = -(centres[0] + centres[1]) / 2
        parts = [([_ellipse(s, s * rng.uniform(0.9, 1.0), angle) + c + shift for s, c in zip(small, centres)], stain)]
        parts.append(([_ellipse(s * 0.45, s * 0.4, angle) + c + shift + rng.uniform(-0.15, 0.15, 2) * s
                       for s, c in zip(small, centres)], dark))
        return parts
    raise ValueError(name)


def _dish(rng: np.random.Generator, height: int, width: int, stain: np.ndarray) -> np.ndarray:
    """float32 BGR [H, W, 3]: dark field with vignetting, glows, fibres and debris."""
    tint = (stain / 255 * 0.4 + 0.6).astype(np.float32)
    ys, xs = np.ogrid[0:height, 0:width]
    r2 = ((xs - width / 2) / (width / 2)) ** 2 + ((ys - height / 2) / (height / 2)) ** 2
    field = (rng.uniform(6, 22) * (1 - rng.uniform(0.2, 0.6) * r2 / 2)).astype(np.float32)
    field += np.clip(_smooth_noise(rng, height, width, 24), 0, None) * np.float32(rng.uniform(2, 8))
    canvas = field[..., None] * tint
    glow = np.zeros((height, width), np.float32)
    for _ in range(int(rng.integers(1, 6))):
        centre = rng.uniform((0, 0), (width, height))
        cv2.circle(glow, (int(centre[0]), int(centre[1])), int(rng.uniform(8, 40)), float(rng.uniform(10, 45)), -1)
    canvas += cv2.GaussianBlur(glow, (0, 0), rng.uniform(6, 12))[..., None] * tint
    marks = np.zeros((height, width), np.uint8)
    for _ in range(int(rng.integers(0, 4))):  # fibres
        steps = rng.normal(0, 1, (int(rng.integers(4, 10)), 2)) * rng.uniform(8, 25)
        points = np.round(rng.uniform((0, 0), (width, height)) + np.cumsum(steps, axis=0)).astype(np.int32)
        cv2.polylines(marks, [points], False, 255, 1, cv2.LINE_AA)
    canvas += marks.astype(np.float32)[..., None] * np.float32(rng.uniform(0.08, 0.25)) * tint
    marks[:] = 0
    for _ in range(int(rng.integers(5, 31))):  # debris
        centre = rng.uniform((0, 0), (width, height))
        cv2.circle(marks, (int(centre[0]), int(centre[1])), int(rng.integers(1, 3)), int(rng.integers(60, 256)), -1,
                   cv2.LINE_AA)
    canvas += marks.astype(np.float32)[..., None] * np.float32(0.8) * tint
    return canvas


def _render_cells(rng: np.random.Generator, image_id: str, suffix: str) -> tuple[np.ndarray, Annotation]:
    width, height = (int(v) for v in rng.integers(CELL_SIDES[0], CELL_SIDES[1] + 1, 2))
    stain = np.asarray(STAINS[int(rng.integers(len(STAINS)))], np.float64)
    scene = _Scene(_dish(rng, height, width, stain))
    classes = CLASSES["cells"]
    placed: list[np.ndarray] = []
    for _ in range(int(rng.integers(4, 16))):
        name = classes[int(rng.integers(len(classes)))]
        parts = _cell_parts(rng, name, _log_uniform(rng, *CELL_SIZE), stain * rng.uniform(0.55, 1.0))
        points = np.concatenate([p for polygons, _ in parts for p in polygons])
        low, high = points.min(axis=0), points.max(axis=0)
        for _ in range(30):
            centre = rng.uniform((0, 0), (width, height))
            if _apart(np.concatenate([low + centre, high + centre]), placed, 3):
                placed.append(np.concatenate([low + centre, high + centre]))
                moved = [([p + centre for p in polygons], colour) for polygons, colour in parts]
                scene.paste(_shade(rng, _raster(moved, blur=rng.uniform(0.4, 0.9)), 0.8, 1.1, 0.08), name)
                break
    return scene.finish(rng, (3.0, 8.0), image_id, suffix)


# ---------------------------------------------------------------------------------------------
# the dataset

_RENDERERS = {"glyphs": _render_glyphs, "signs": _render_signs, "cells": _render_cells}


def image_id(index: int) -> str:
    """The id of image ``index`` (1-based): ``000001``."""
    return f"{index:06d}"


def _check_look(look: str) -> int:
    if look not in LOOKS:
        raise ConfigError(f"--look {look!r}: unknown look; choose one of {', '.join(LOOKS)}")
    return LOOKS.index(look) + 1


def image_suffix(look: str, seed: int, index: int) -> str:
    """``.png`` for about a quarter of the images, else ``.jpg`` (a stream of its own, so a
    folder's expected file names are known without drawing)."""
    stream = np.random.default_rng([seed, _check_look(look), index, 1])
    return ".png" if stream.random() < PNG_FRACTION else ".jpg"


def render_image(look: str, seed: int, index: int) -> tuple[np.ndarray, Annotation]:
    """Image ``index`` (>= 1) of look ``look`` for ``seed``: uint8 BGR [H, W, 3] and its
    annotation (boxes float32 [G, 4] (x1, y1, x2, y2), integral, inside [0, W] x [0, H])."""
    rng = np.random.default_rng([seed, _check_look(look), index])
    return _RENDERERS[look](rng, image_id(index), image_suffix(look, seed, index))


def split_ids(images: int, seed: int, with_val: bool = False) -> dict[str, list[str]]:
    """Sorted image ids per split: ``trainval`` and ``test`` (40% of the images), plus ``train``
    and ``val`` (halves of trainval) if ``with_val``. Trainval and test do not depend on ``with_val``."""
    rng = np.random.default_rng([seed, 0])  # image streams have three or four words, so this is free
    order = [image_id(i) for i in rng.permutation(images) + 1]
    n_test = min(max(1, round(TEST_FRACTION * images)), images - 1)
    splits = {"test": order[:n_test], "trainval": order[n_test:]}
    if with_val:
        n_val = max(1, len(splits["trainval"]) // 2)
        splits["val"], splits["train"] = splits["trainval"][:n_val], splits["trainval"][n_val:]
    return {name: sorted(splits[name]) for name in (VAL_SPLITS if with_val else SPLITS)}


def check_output(root: str | os.PathLike) -> Path:
    """``root`` resolved, if it may receive a scenery dataset: new, empty, or holding ``scenery.json``
    from an earlier build; otherwise ``DatasetError`` naming it. Writes nothing."""
    return claimed_output(root, MARKER, GENERATOR)


def _marker(look: str, images: int, seed: int, with_val: bool, complete: bool) -> dict:
    return {"generator": GENERATOR, "format": FORMAT, "look": look, "images": images, "seed": seed,
            "with_val": with_val, "classes": list(CLASSES[look]), "complete": complete}


def _expected_files(look: str, images: int, seed: int, with_val: bool) -> set[str]:
    names = {f"Annotations/{image_id(i)}.xml" for i in range(1, images + 1)}
    names |= {f"JPEGImages/{image_id(i)}{image_suffix(look, seed, i)}" for i in range(1, images + 1)}
    return names | {f"ImageSets/Main/{name}.txt" for name in (VAL_SPLITS if with_val else SPLITS)}


def _claim(root: Path, look: str, images: int, seed: int, with_val: bool) -> None:
    """Write the marker first (so an interrupted build can be re-run), then remove the files an
    earlier build left that this one will not write (other images, other split files)."""
    atomic_write_json(root / MARKER, _marker(look, images, seed, with_val, complete=False))
    expected = _expected_files(look, images, seed, with_val)
    for folder, pattern in (("Annotations", "*.xml"), ("JPEGImages", "*.*"), ("ImageSets/Main", "*.txt")):
        for path in (root / folder).glob(pattern):
            stale = path.stem.isdigit() or folder == "ImageSets/Main"
            if stale and path.is_file() and f"{folder}/{path.name}" not in expected:
                path.unlink()


def _is_complete(root: Path, look: str, images: int, seed: int, with_val: bool) -> bool:
    """True if ``root`` holds a finished build with these settings and all its files."""
    try:
        marker = json.loads((root / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if marker != _marker(look, images, seed, with_val, complete=True):
        return False
    return all((root / name).is_file() for name in _expected_files(look, images, seed, with_val))


def write_image(root: str | os.PathLike, look: str, seed: int, index: int) -> Annotation:
    """Render image ``index`` of ``look`` and write its image and VOC XML under ``root`` (atomically)."""
    image, annotation = render_image(look, seed, index)
    suffix = Path(annotation.filename).suffix
    params = [int(cv2.IMWRITE_JPEG_QUALITY), JPEG_QUALITY] if suffix == ".jpg" else []
    ok, data = cv2.imencode(suffix, image, params)
    if not ok:
        raise RuntimeError(f"cv2.imencode failed for image {annotation.image_id}")
    atomic_write_bytes(Path(root) / "JPEGImages" / annotation.filename, data.tobytes())
    write_annotation(Path(root) / "Annotations" / f"{annotation.image_id}.xml", annotation)
    return annotation


def write_scenery(root: str | os.PathLike, look: str, images: int = 200, seed: int = 0, workers: int = 1,
                  progress: Progress | None = no_progress, with_val: bool = False) -> ScenerySummary:
    """Write ``images`` images of ``look`` (one of :data:`LOOKS`) in VOC layout under ``root``,
    drawn in ``workers`` processes (the files do not depend on it), with split files ``trainval``
    and ``test`` (plus ``train`` and ``val`` if ``with_val``).

    Raises ``ConfigError`` for a bad look, seed, worker count or too few images (2, or 3 with
    ``with_val``) and ``DatasetError`` if ``root`` is a non-empty folder without ``scenery.json``.
    ``progress(1)`` is called after each image. A finished build with the same settings is kept
    as it is (its annotations are only read for the summary); any other is regenerated.
    """
    _check_look(look)
    least = 3 if with_val else 2
    if images < least:
        raise ConfigError(f"--images {images}: need at least {least} (one per split)")
    if seed < 0:
        raise ConfigError(f"--seed {seed}: must be 0 or more")
    if workers < 1:
        raise ConfigError(f"--workers {workers}: must be 1 or more")
    root = check_output(root)
    reuse = _is_complete(root, look, images, seed, with_val)
    if not reuse:
        _claim(root, look, images, seed, with_val)
    progress = progress or no_progress
    classes = CLASSES[look]
    objects, difficult = dict.fromkeys(classes, 0), dict.fromkeys(classes, 0)
    indices = range(1, images + 1)
    annotations = (read_annotation(root / "Annotations" / f"{image_id(index)}.xml") for index in indices
                   ) if reuse else map_unordered(partial(write_image, root, look, seed), indices, workers)
    for annotation in annotations:
        for name, hard in zip(annotation.names, annotation.difficult):
            objects[name] += 1
            difficult[name] += int(hard)
        progress(1)
    splits = split_ids(images, seed, with_val)
    if not reuse:
        for name, ids in splits.items():
            write_split(root, name, ids)
        atomic_write_json(root / MARKER, _marker(look, images, seed, with_val, complete=True))
    return ScenerySummary(root=root, look=look, seed=seed, images=images, objects=objects, difficult=difficult,
                          splits={name: len(ids) for name, ids in splits.items()})
