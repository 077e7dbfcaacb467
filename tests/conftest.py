"""Shared test fixtures: tiny two-class shape scenes (``shape_scene``, ``write_scene_dataset``)
for the tests that train a detector end to end, and ``cli_runner`` for the tests that drive the
``sppdet`` command in-process. Each fixture hands out a function, so module-scoped fixtures can
build their work directories with it."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

import pytest
from click.testing import CliRunner

from cli.main import cli
from sppdet.data.voc import Annotation, write_annotation


def _shape_scene(rng: np.random.Generator, classes: tuple[str, str], height: int, width: int,
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


def _write_scene_dataset(root: Path, classes: tuple[str, str], count: int, rng: np.random.Generator,
                        height: int, width: int, sizes: tuple[int, int]) -> list[str]:
    """Write ``count`` :func:`_shape_scene` images (PNG) and their VOC annotations under ``root``
    (no split files); returns their ids "000", "001", ..."""
    ids = [f"{i:03d}" for i in range(count)]
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    for image_id in ids:
        image, boxes, names = _shape_scene(rng, classes, height, width, sizes)
        cv2.imwrite(str(root / "JPEGImages" / f"{image_id}.png"), image)
        write_annotation(root / "Annotations" / f"{image_id}.xml", Annotation(
            image_id=image_id, width=width, height=height, boxes=boxes, names=names,
            difficult=np.zeros(len(names), bool), filename=f"{image_id}.png"))
    return ids


def _cli_runner(work: Path):
    """``sppdet(*args, code=0)``: run ``sppdet ARGS --quiet`` in-process on work directory ``work``,
    assert its exit code is ``code`` (showing the output otherwise) and return the click result."""
    runner = CliRunner(env={"SPPDET_WORKDIR": str(work)})

    def sppdet(*args, code=0):
        result = runner.invoke(cli, [*args, "--quiet"], catch_exceptions=False)
        assert result.exit_code == code, f"sppdet {' '.join(args)}:\n{result.output}"
        return result

    return sppdet


@pytest.fixture(scope="session")
def shape_scene():
    """``shape_scene(rng, classes, height, width, sizes)`` -> (image, boxes, names)."""
    return _shape_scene


@pytest.fixture(scope="session")
def write_scene_dataset():
    """``write_scene_dataset(root, classes, count, rng, height, width, sizes)`` -> ids."""
    return _write_scene_dataset


@pytest.fixture(scope="session")
def cli_runner():
    """``cli_runner(work)`` -> ``sppdet(*args, code=0)`` running the CLI on work directory ``work``."""
    return _cli_runner


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on one thread for a module (``pytestmark = pytest.mark.usefixtures(...)``), restored after."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
