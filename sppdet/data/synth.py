"""The built-in demo dataset: filled shapes on cluttered backgrounds, written in VOC layout.

Shape shorthand: H, W image height and width; P polygon vertices; G objects in one image.

Every random choice for image ``index`` (ids ``000001``, ``000002``, ...) comes from
``numpy.random.default_rng([seed, index])``: an image depends on nothing but (seed, index), so a
build is byte-identical for the same seed and ``--images 12`` gives the first 12 images of
``--images 400``. OpenCV drawing and JPEG encoding are deterministic.

An image:
  - W and H each uniform in [300, 500] px; saved as JPEG, quality 90.
  - Background: a two-colour linear gradient plus low- and mid-frequency colour noise; then
    clutter that resembles no class: lumpy blobs (random harmonics 2-5) with blurred edges,
    1-2 px straight and wiggly lines, dots of radius <= 3 px.
  - 1-6 objects of uniformly drawn classes, drawn in order (later ones occlude earlier ones).
    Each is a unit polygon (circle = 64-gon) stretched by an aspect factor in [0.7, 1.4],
    rotated uniformly, of size log-uniform from 16 px to 45% of the shorter image side, centred
    anywhere in the image (so some are cut by the border) or, a third of the time, on an
    earlier object. Colours are independent of the class: a fill chosen to contrast with the
    local background (solid, striped or noisy) and sometimes an outline of any colour, so only
    the shape tells the class.

Ground truth (boxes in the convention of ``sppdet.structures.boxes``): the tight box of the full polygon
(widened by half the outline), clipped to the image and rounded outward to integers, so it is
exact after the VOC round trip of ``sppdet.data.voc``. Occluded objects keep their full box;
truncated ones get it cut at the border, as VOC annotates truncation. Pixel masks (alpha >= 0.5)
decide the rest: an object is ``difficult`` if its clipped box is under 12 px on a side, if
under 40% of its in-image pixels stay visible, or if under 60% of its pixels lie in the image.
An object with under 5% of its pixels visible is drawn but not annotated.

Splits: 40% of the images are ``test``; of the rest, ``VAL_FRACTION`` (20%, the share
``sppdet.training.splits`` carves where a dataset has no val.txt) are ``val`` and the others ``train``;
``trainval`` is their union. (Before 2026-12-04 val was half of trainval; the test split and the
images are unchanged.) Output folders are claimed by ``synth.json``; a non-empty folder
without it is refused, one with it is regenerated.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import cv2
import numpy as np

from sppdet.data.voc import Annotation, read_annotation, write_annotation, write_split
from sppdet.data.claim import check_output as claimed_output
from sppdet.errors import ConfigError
from sppdet.parallel import Progress, map_unordered, no_progress
from sppdet.fileio import atomic_write_bytes, atomic_write_json

CLASSES = ("circle", "cross", "square", "star", "triangle")  # sorted, as voc.discover_classes
SPLITS = ("train", "val", "trainval", "test")
MARKER = "synth.json"
GENERATOR = "sppdet synth"
FORMAT = 2  # bump when the images, annotations or splits for a given seed change (2: val 20% of trainval)

SIDE_RANGE = (300, 500)  # px, image width and height
MIN_OBJECT = 16.0  # px, smallest object diameter
MAX_OBJECT = 0.45  # largest object diameter, as a fraction of the shorter image side
ASPECT_RANGE = (0.7, 1.4)
MAX_OBJECTS = 6
OVERLAP = 1 / 3  # chance that an object is centred on an earlier one
JPEG_QUALITY = 90
TEST_FRACTION = 0.4
VAL_FRACTION = 0.2  # of trainval
DIFFICULT_SIDE = 12  # px
DIFFICULT_VISIBLE = 0.4  # of the in-image pixels
DIFFICULT_INSIDE = 0.6  # of all pixels (a square cut in half looks like a triangle)
DROP_VISIBLE = 0.05  # of all pixels
SHIFT = 4  # cv2 fixed-point bits: polygon vertices are placed to 1/16 px
SUPERSAMPLE = 4  # masks are drawn this much finer, then averaged (anti-aliasing)


def _star(points: int = 5, inner: float = 0.42) -> np.ndarray:
    angles = np.arange(2 * points) * np.pi / points - np.pi / 2
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _cross(arm: float = 0.32) -> np.ndarray:
    a = arm
    return np.array([(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a),
                     (a, 1), (-a, 1), (-a, a), (-1, a), (-1, -a), (-a, -a)], dtype=np.float64)


_CIRCLE_ANGLES = np.linspace(0, 2 * np.pi, 64, endpoint=False)
_TRIANGLE_ANGLES = np.radians([-90.0, 30.0, 150.0])
#: Unit polygons [P, 2] (x, y) centred on 0, radius <= 1.
UNIT_SHAPES = {
    "circle": np.stack([np.cos(_CIRCLE_ANGLES), np.sin(_CIRCLE_ANGLES)], axis=1),
    "cross": _cross(),
    "square": np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)], dtype=np.float64),
    "star": _star(),
    "triangle": np.stack([np.cos(_TRIANGLE_ANGLES), np.sin(_TRIANGLE_ANGLES)], axis=1),
}


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`write_dataset` wrote: per-class object counts (difficult included) and
    difficult counts, and the number of images per split."""

    root: Path
    seed: int
    images: int
    objects: dict[str, int]
    difficult: dict[str, int]
    splits: dict[str, int]


# ---------------------------------------------------------------------------------------------
# drawing


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """float32 values rounded and saturated to uint8 (same shape)."""
    values += 0.5
    return np.clip(values, 0, 255, out=values).astype(np.uint8)


def _contrasting_colour(rng: np.random.Generator, local_mean: np.ndarray) -> np.ndarray:
    """A BGR colour (float [3]) far from ``local_mean``: the first of 8 tries 90 apart, else the farthest."""
    candidates = rng.uniform(0, 255, (8, 3))
    distance = np.linalg.norm(candidates - local_mean, axis=1)
    far = np.flatnonzero(distance >= 90)
    return candidates[far[0] if far.size else int(distance.argmax())]


def _fill(rng: np.random.Generator, colour: np.ndarray, height: int, width: int) -> np.ndarray:
    """A float32 [height, width, 3] fill: solid (60%), stripes (20%) or noisy (20%)."""
    kind = rng.random()
    layer = np.empty((height, width, 3), np.float32)
    layer[:] = colour
    if kind < 0.6:
        return layer
    if kind < 0.8:
        period, angle = rng.uniform(4, 12), rng.uniform(0, np.pi)
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        stripe = ((xs * np.cos(angle) + ys * np.sin(angle)) / period) % 1.0 < 0.5
        layer[stripe] *= rng.uniform(0.45, 0.75)
        return layer
    layer += rng.normal(0, rng.uniform(15, 35), (height, width, 3)).astype(np.float32)
    return layer


def _window(top_left: np.ndarray, shape: tuple[int, ...], height: int, width: int):
    """Where a patch of ``shape`` (h, w, ...) with integer ``top_left`` (x, y), possibly outside the
    image, meets the [H, W] image: (image slices, patch slices), both (rows, cols); empty if apart."""
    x0, y0 = max(int(top_left[0]), 0), max(int(top_left[1]), 0)
    x1 = max(min(int(top_left[0]) + shape[1], width), x0)
    y1 = max(min(int(top_left[1]) + shape[0], height), y0)
    image = (slice(y0, y1), slice(x0, x1))
    patch = (slice(y0 - top_left[1], y1 - top_left[1]), slice(x0 - top_left[0], x1 - top_left[0]))
    return image, patch


def _composite(canvas: np.ndarray, top_left: np.ndarray, alpha: np.ndarray, layer: np.ndarray):
    """Blend ``layer`` float32 [h, w, 3] into uint8 ``canvas`` [H, W, 3] (in place) through
    ``alpha`` uint8 [h, w] placed at ``top_left`` (x, y). Returns the image slices and the alpha
    crop that fell inside the image."""
    image, patch = _window(top_left, alpha.shape, *canvas.shape[:2])
    a = alpha[patch].astype(np.float32)[..., None] / 255.0
    canvas[image] = _to_uint8(canvas[image].astype(np.float32) * (1 - a) + layer[patch] * a)
    return image, alpha[patch]


def _polygon_mask(polygon: np.ndarray, pad: float,
                  outline: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Anti-aliased uint8 masks of a polygon [P, 2] (continuous coords) and of its outline of
    ``outline`` px, on the integer grid around it padded by ``pad`` px; also that grid's
    top-left (x, y). Alpha is the covered fraction of each pixel, found by drawing 4x finer
    and averaging (cv2's own LINE_AA fill spreads ~0.7 px past the edges, and would make the
    object larger than its box)."""
    top_left = np.floor(polygon.min(axis=0) - pad).astype(np.int64)
    size = np.ceil(polygon.max(axis=0) + pad).astype(np.int64) - top_left
    # cv2 puts integer point (i, j) at the centre of pixel (i, j), i.e. continuous (i + .5, j + .5).
    points = np.round(((polygon - top_left) * SUPERSAMPLE - 0.5) * (1 << SHIFT)).astype(np.int32)[None]
    fine = np.zeros((size[1] * SUPERSAMPLE, size[0] * SUPERSAMPLE), np.uint8)
    cv2.fillPoly(fine, points, 255, cv2.LINE_8, SHIFT)
    fill = cv2.resize(fine, (int(size[0]), int(size[1])), interpolation=cv2.INTER_AREA)
    if not outline:
        return fill, np.zeros_like(fill), top_left
    fine[:] = 0
    cv2.polylines(fine, points, True, 255, outline * SUPERSAMPLE, cv2.LINE_8, SHIFT)
    line = cv2.resize(fine, (int(size[0]), int(size[1])), interpolation=cv2.INTER_AREA)
    return np.maximum(fill, line), line, top_left


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """uint8 BGR [H, W, 3]: a linear gradient between two colours plus smooth colour noise."""
    c0, c1 = rng.uniform(0, 255, (2, 3)).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    t = (np.arange(width, dtype=np.float32)[None] * np.float32(np.cos(angle))
         + np.arange(height, dtype=np.float32)[:, None] * np.float32(np.sin(angle)))
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    canvas = c0 + t[..., None] * (c1 - c0)
    for cell, amplitude in ((32, rng.uniform(10, 40)), (8, rng.uniform(0, 20))):
        coarse = rng.standard_normal((height // cell + 2, width // cell + 2, 3), dtype=np.float32)
        canvas += np.float32(amplitude) * cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    return _to_uint8(canvas)


def _clutter(rng: np.random.Generator, canvas: np.ndarray) -> None:
    """Draw distractors into ``canvas`` (uint8 BGR [H, W, 3], in place): soft lumpy blobs,
    thin straight and wiggly lines, small dots."""
    height, width = canvas.shape[:2]
    short = min(height, width)
    angles = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    harmonics = np.arange(2, 6)
    for _ in range(rng.integers(0, 5)):
        amplitude, phase = rng.uniform(0.05, 0.22, 4), rng.uniform(0, 2 * np.pi, 4)
        radius = 1 + (amplitude[:, None] * np.cos(harmonics[:, None] * angles + phase[:, None])).sum(0)
        scale = rng.uniform(8, 0.25 * short) * radius[:, None]
        blob = rng.uniform((0, 0), (width, height)) + scale * np.stack([np.cos(angles), np.sin(angles)], 1)
        sigma = rng.uniform(1.5, 5)
        alpha, _, top_left = _polygon_mask(blob, pad=3 * sigma)
        alpha = (cv2.GaussianBlur(alpha, (0, 0), sigma) * rng.uniform(0.35, 0.9)).astype(np.uint8)
        layer = np.empty((*alpha.shape, 3), np.float32)
        layer[:] = rng.uniform(0, 255, 3)
        _composite(canvas, top_left, alpha, layer)
    for _ in range(rng.integers(2, 11)):
        if rng.random() < 0.6:
            points = rng.uniform((0, 0), (width, height), (2, 2))
        else:
            steps = rng.normal(0, 1, (int(rng.integers(5, 13)), 2)) * rng.uniform(10, 40)
            points = rng.uniform((0, 0), (width, height)) + np.cumsum(steps, axis=0)
        cv2.polylines(canvas, [np.round(points).astype(np.int32)], False, rng.uniform(0, 255, 3).tolist(),
                      int(rng.integers(1, 3)), cv2.LINE_AA)
    for _ in range(rng.integers(0, 41)):
        centre = np.round(rng.uniform((0, 0), (width, height))).astype(int)
        cv2.circle(canvas, tuple(centre.tolist()), int(rng.integers(1, 4)), rng.uniform(0, 255, 3).tolist(),
                   -1, cv2.LINE_AA)


def _object_polygon(rng: np.random.Generator, name: str, height: int, width: int,
                    earlier: list[np.ndarray]) -> np.ndarray:
    """A class's unit polygon stretched, rotated, sized and placed: float64 [P, 2] continuous
    (x, y). A third of the time it is centred on an ``earlier`` polygon, to make occlusion common."""
    diameter = np.exp(rng.uniform(np.log(MIN_OBJECT), np.log(MAX_OBJECT * min(height, width))))
    stretch = np.sqrt(np.exp(rng.uniform(*np.log(ASPECT_RANGE))))
    angle = rng.uniform(0, 2 * np.pi)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    shape = UNIT_SHAPES[name] * (diameter / 2) * np.array([stretch, 1 / stretch])
    centre = rng.uniform((0, 0), (width, height))
    if earlier and rng.random() < OVERLAP:
        anchor = earlier[int(rng.integers(len(earlier)))]
        half_extent = (anchor.max(axis=0) - anchor.min(axis=0)) / 2
        centre = anchor.mean(axis=0) + rng.uniform(-1, 1, 2) * half_extent
    return shape @ rotation.T + centre


def _draw_object(rng: np.random.Generator, canvas: np.ndarray, owner: np.ndarray, label: int,
                 polygon: np.ndarray) -> tuple[tuple[float, ...], int, int]:
    """Draw one object (polygon [P, 2]) into ``canvas`` uint8 [H, W, 3] and mark its pixels
    (alpha >= 0.5) ``label`` in ``owner`` int32 [H, W], both in place. Returns its box
    (x1, y1, x2, y2), integral and clipped to the image, its pixel count if the image were
    unbounded, and its pixel count inside the image."""
    height, width = owner.shape
    outline = int(rng.integers(1, 4)) if rng.random() < 0.4 else 0
    alpha, line, top_left = _polygon_mask(polygon, pad=outline / 2 + 1, outline=outline)
    under = canvas[_window(top_left, alpha.shape, height, width)[0]].reshape(-1, 3)
    layer = _fill(rng, _contrasting_colour(rng, under.mean(axis=0) if under.size else 128.0), *alpha.shape)
    edge = line.astype(np.float32)[..., None] / 255.0
    layer = layer * (1 - edge) + rng.uniform(0, 255, 3).astype(np.float32) * edge
    image, shown = _composite(canvas, top_left, alpha, layer)
    owner[image][shown >= 128] = label
    low = np.clip(np.floor(polygon.min(axis=0) - outline / 2), 0, (width, height))
    high = np.clip(np.ceil(polygon.max(axis=0) + outline / 2), 0, (width, height))
    return (*low, *high), int((alpha >= 128).sum()), int((shown >= 128).sum())


def render_image(seed: int, index: int) -> tuple[np.ndarray, Annotation]:
    """Image ``index`` (>= 1) of the dataset for ``seed``: uint8 BGR [H, W, 3] and its
    annotation (boxes float32 [G, 4] (x1, y1, x2, y2), integral, inside [0, W] x [0, H])."""
    rng = np.random.default_rng([seed, index])
    width, height = (int(v) for v in rng.integers(SIDE_RANGE[0], SIDE_RANGE[1] + 1, 2))
    canvas = _background(rng, height, width)
    _clutter(rng, canvas)
    owner = np.zeros((height, width), np.int32)  # 0 = background, k = k-th object drawn
    names, polygons, drawn = [], [], []
    for label in range(1, int(rng.integers(1, MAX_OBJECTS + 1)) + 1):
        names.append(CLASSES[int(rng.integers(len(CLASSES)))])
        polygons.append(_object_polygon(rng, names[-1], height, width, polygons))
        drawn.append(_draw_object(rng, canvas, owner, label, polygons[-1]))
    # Uniform sensor noise of standard deviation 1-5 (uniform draws are ~5x cheaper than normal).
    noise = rng.random(canvas.shape, dtype=np.float32) - np.float32(0.5)
    image = _to_uint8(canvas + noise * np.float32(np.sqrt(12) * rng.uniform(1, 5)))

    boxes = np.array([d[0] for d in drawn], np.float32).reshape(-1, 4)
    full = np.array([max(d[1], 1) for d in drawn])
    inside = np.array([d[2] for d in drawn])
    visible = np.bincount(owner.ravel(), minlength=len(names) + 1)[1:]
    keep = visible >= DROP_VISIBLE * full
    short_side = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    difficult = ((short_side < DIFFICULT_SIDE) | (visible < DIFFICULT_VISIBLE * np.maximum(inside, 1))
                 | (inside < DIFFICULT_INSIDE * full))
    return image, Annotation(
        image_id=image_id(index), width=width, height=height, boxes=boxes[keep],
        names=tuple(n for n, k in zip(names, keep) if k), difficult=difficult[keep],
        filename=f"{image_id(index)}.jpg")


# ---------------------------------------------------------------------------------------------
# the dataset


def image_id(index: int) -> str:
    """The id of image ``index`` (1-based): ``000001``."""
    return f"{index:06d}"


def split_ids(images: int, seed: int) -> dict[str, list[str]]:
    """Sorted image ids per split (train, val, trainval, test) for ``images`` >= 3 images."""
    rng = np.random.default_rng([seed, 0])  # image streams use index >= 1, so 0 is free
    order = [image_id(i) for i in rng.permutation(images) + 1]
    n_test = max(1, round(TEST_FRACTION * images))
    n_val = max(1, round(VAL_FRACTION * (images - n_test)))
    splits = {"test": order[:n_test], "val": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}
    splits["trainval"] = splits["train"] + splits["val"]
    return {name: sorted(splits[name]) for name in SPLITS}


def check_output(root: str | os.PathLike) -> Path:
    """``root`` resolved, if it may receive a synth dataset: new, empty, or holding ``synth.json``
    from an earlier build; otherwise ``DatasetError`` naming it. Writes nothing."""
    return claimed_output(root, MARKER, GENERATOR)


def _claim(root: Path, images: int, seed: int) -> None:
    """Write the marker first (so an interrupted build can be re-run) and drop images beyond ``images``."""
    atomic_write_json(root / MARKER, _marker(images, seed, complete=False))
    for folder, suffix in (("Annotations", ".xml"), ("JPEGImages", ".jpg")):
        for path in (root / folder).glob(f"*{suffix}"):
            if path.stem.isdigit() and int(path.stem) > images:
                path.unlink()


def _marker(images: int, seed: int, complete: bool) -> dict:
    return {"generator": GENERATOR, "format": FORMAT, "images": images, "seed": seed,
            "classes": list(CLASSES), "complete": complete}


def _is_complete(root: Path, images: int, seed: int) -> bool:
    """True if ``root`` holds a finished build with these settings and all its files."""
    try:
        marker = json.loads((root / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if marker != _marker(images, seed, complete=True):
        return False
    ids = [image_id(i) for i in range(1, images + 1)]
    return (all((root / "Annotations" / f"{i}.xml").is_file() and (root / "JPEGImages" / f"{i}.jpg").is_file()
                for i in ids)
            and all((root / "ImageSets" / "Main" / f"{name}.txt").is_file() for name in SPLITS))


def write_image(root: str | os.PathLike, seed: int, index: int) -> Annotation:
    """Render image ``index`` and write its JPEG and VOC XML under ``root`` (atomically)."""
    image, annotation = render_image(seed, index)
    ok, jpeg = cv2.imencode(".jpg", image, [int(cv2.IMWRITE_JPEG_QUALITY), JPEG_QUALITY])
    if not ok:
        raise RuntimeError(f"cv2.imencode failed for image {annotation.image_id}")
    atomic_write_bytes(Path(root) / "JPEGImages" / annotation.filename, jpeg.tobytes())
    write_annotation(Path(root) / "Annotations" / f"{annotation.image_id}.xml", annotation)
    return annotation


def write_dataset(root: str | os.PathLike, images: int = 400, seed: int = 0,
                  progress: Progress | None = None, workers: int = 1) -> SynthSummary:
    """Write the demo dataset (``images`` >= 3 images) in VOC layout under ``root``, drawing
    the images in ``workers`` processes (the files are the same for any number).

    Raises ``DatasetError`` if ``root`` is a non-empty folder without ``synth.json`` (see
    :func:`check_output`); ``progress(1)`` is called after each image. Returns what was written.
    A finished build with the same ``images`` and ``seed`` is kept as it is (its annotations are
    only read for the summary), so re-running the demo costs nothing; delete the folder to rebuild.
    """
    if images < 3:
        raise ConfigError(f"--images {images}: need at least 3 (one per split)")
    root = check_output(root)
    reuse = _is_complete(root, images, seed)
    if not reuse:
        _claim(root, images, seed)
    progress = progress or no_progress
    objects, difficult = dict.fromkeys(CLASSES, 0), dict.fromkeys(CLASSES, 0)
    indices = range(1, images + 1)
    annotations = (read_annotation(root / "Annotations" / f"{image_id(index)}.xml") for index in indices
                   ) if reuse else map_unordered(partial(write_image, root, seed), indices, workers)
    for annotation in annotations:
        for name, hard in zip(annotation.names, annotation.difficult):
            objects[name] += 1
            difficult[name] += int(hard)
        progress(1)
    splits = split_ids(images, seed)
    if not reuse:
        for name, ids in splits.items():
            write_split(root, name, ids)
        atomic_write_json(root / MARKER, _marker(images, seed, complete=True))
    return SynthSummary(root=root, seed=seed, images=images, objects=objects, difficult=difficult,
                        splits={name: len(ids) for name, ids in splits.items()})
