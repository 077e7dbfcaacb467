"""Detection on new image files: a trained detector applied to images outside its dataset.

The detector comes from a work directory, or from a ``.sppdet`` file that ``sppdet export`` wrote
(``sppdet.workdir.export``): both give a ``sppdet.workdir.trained.DetectionModel``, and everything
below runs the same on either.

Shape shorthand: P proposals of one image, C conv5 channels, D = C * sum(n^2) the pooled length
(levels 1, 2, 3, 6), K classes, N detections. Boxes follow ``sppdet.structures.boxes``.

Per image (docs/algorithm.md section 10): selective search with the ``ProposeConfig`` the work directory's
``propose`` stage recorded; conv features from the trunk that computed the recorded features
folder (same backbone, width, weights, scales and seed), rebuilt once per run; SPP pooling with
that trunk's geometry; then ``sppdet.models.detector.Detector`` (fc head, SVMs, box regression,
per-class NMS, top-k). The SVMs and regressors only apply to that exact trunk, so a weights file
that no longer hashes to the folder's recorded ``weights`` id is a ``ModelError``.

``method="rcnn"`` (``sppdet.workdir.methods``): the R-CNN baseline instead of SPP: the trunk of the
recorded ``extract --method rcnn`` folder warps and runs every proposal (``sppdet.stages.extract_rcnn``
with that folder's crop size, context and levels), and the models trained with ``--method rcnn``
score them.

Inputs (:func:`expand_inputs`): files (taken whatever their suffix), directories (their image files
by ``IMAGE_SUFFIXES``, not recursive) and glob patterns (expanded here, ``**`` included, so quoted
patterns behave the same on every shell), each sorted, duplicates dropped. A directory or pattern
without image files is an error before any work; a named file that is missing or unreadable is
an error of that image only: the other images are still processed.

Cache: ``WORKDIR/detect-cache-<hash>/``, the hash covering the propose config, the features
folder's hash and the format version (``WorkDir.stage_dir``), so other proposal or trunk settings
never reuse it. Per image, keyed by the SHA-256 of the file's bytes (a renamed or copied image
hits, an edited one misses): ``<sha>.proposals.npy`` (float32 [P, 4]) and ``<sha>.npz`` (the maps
in ``sppdet.models.features``' format), or for rcnn ``<sha>.rcnn.npy`` (float16 [P, D], the proposals'
vectors), written atomically; an invalid file is recomputed. The cache is never pruned: delete
the folder to reclaim the space. A model file has no cache: proposals and features are computed on
every run, and nothing is written beside the model (it may sit on a read-only medium, and a cache
of its own would need a place, a key and pruning that a work directory already provides).

Score threshold: ``DEFAULT_SCORE_THRESHOLD = 0.0``, the SVMs' decision boundary (score >= 0: the
SVM's "object" side), for the drawn boxes and the JSON alike. (``DetectConfig`` and ``sppdet eval``
keep scores down to -1, because AP rewards the extra recall; pass ``--score-threshold -1`` for a
JSON meant for scoring.)

Outputs: an annotated copy of each image (``sppdet.vis.draw``) under its file name in the output
folder, in the same format (``sppdet.vis.draw.write_image``; a file without an image suffix gets
``.png``), in colour even for a grayscale input. One COCO-style JSON for the run
(``sppdet.evaluation.results_io.write_coco_json``) with integer image ids and, beside it,
``<name>.images.json`` (images with file name, size and sppdet id, and categories), which COCO tools
load as ground truth; image names are the file stems, so two inputs sharing a
stem are refused. Timing (``DetectRun.seconds``) covers the per-image loop: loading the models and
building the trunk happen once, before it.

Executors: ``detect_files(..., executor="ray")`` runs batches of images as Ray tasks
(``sppdet.executors``): the loaded detector is shipped once per task, each task writes its images'
cache files and per-image outputs (annotated copy, YOLO and VOC files) through the same
per-image code as the local loop, and the driver writes the JSON and CSV once every image is
done, the results in input order as locally.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from sppdet.models.backbones import resolve_device
from sppdet.config import DEFAULT_SCORE_THRESHOLD, DetectConfig
from sppdet.data.images import IMAGE_SUFFIXES, load_bgr
from sppdet.workdir.trained import DetectionModel, require_trained, workdir_model
from sppdet.vis.draw import draw_detections, write_image
from sppdet.errors import ConfigError, DatasetError, ModelError, SppdetError, WorkdirError
from sppdet.evaluation.voc_ap import Detections
from sppdet.executors import DEFAULT_EXECUTOR, check_executor, map_batches
from sppdet.workdir.export import read_model
from sppdet.models.features import compute_features, load_feature_file, save_feature_file
from sppdet.workdir.methods import DEFAULT_METHOD, check_method
from sppdet.parallel import Progress, no_progress
from sppdet.workdir.caches import read_valid
from sppdet.models.selective_search import selective_search
from sppdet.workdir.caches import cached_rcnn_features
from sppdet.models.crops import compute_rcnn_features
from sppdet.evaluation.detection_files import write_detections_csv, write_voc_xml, write_yolo_txt
from sppdet.evaluation.results_io import write_coco_json
from sppdet.ops.views import check_views, pool_view_windows, view_image
from sppdet.fileio import atomic_save_npy, file_hash
from sppdet.workdir.records import recorded_views
from sppdet.workdir.store import WorkDir

DEFAULT_CONFIG = DetectConfig(score_threshold=DEFAULT_SCORE_THRESHOLD)
CACHE_STAGE = "detect-cache"
KEY_CHARS = 32  # hex digits of the SHA-256 of an image file naming its cache files


@dataclass(frozen=True)
class ImageResult:
    """One image's detections: ``boxes`` float32 [N, 4] (x1, y1, x2, y2), ``scores`` float32 [N],
    ``labels`` int64 [N] in 1..K, by decreasing score; ``computed`` is True when its proposals or
    features were not cached yet; ``annotated`` the written copy (None when not asked for)."""

    path: Path
    image_id: str
    image_hw: tuple[int, int]
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    computed: bool
    seconds: float
    annotated: Path | None


@dataclass(frozen=True)
class ImageError:
    """An image that could not be processed; ``message`` names the file."""

    path: Path
    message: str


@dataclass
class DetectRun:
    """A run over image files: the class names (label k is ``classes[k - 1]``), the per-image
    results and errors in input order, the cache folder (None for a model file: nothing cached),
    the JSON written (or None), and the seconds of the per-image loop."""

    classes: tuple[str, ...]
    cache_folder: Path | None
    results: list[ImageResult] = field(default_factory=list)
    errors: list[ImageError] = field(default_factory=list)
    json_path: Path | None = None
    seconds: float = 0.0

    @property
    def computed(self) -> int:
        """Images whose proposals or features were computed (not found in the cache)."""
        return sum(r.computed for r in self.results)

    @property
    def seconds_per_image(self) -> float | None:
        """Loop seconds per image attempted (None if there was none)."""
        attempted = len(self.results) + len(self.errors)
        return self.seconds / attempted if attempted else None

    def detections(self) -> Detections:
        """Every result as ``Detections`` over the image ids (file stems) of ``results``."""
        return Detections.from_images({r.image_id: (r.boxes, r.scores, r.labels) for r in self.results})


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_input_list(text: str) -> list[str]:
    """The inputs listed in the file ``text`` names after its ``@`` (``@images.txt``): one per
    line, blank lines and ``#`` comments skipped, relative ones taken from the list file's folder
    (as ultralytics and detectron2's tools read such lists). ``DatasetError`` if it cannot be read."""
    listing = Path(text[1:]).expanduser()
    try:
        lines = listing.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{listing}: cannot read this list of images ({exc.__class__.__name__}); "
                           "give a UTF-8 text file with one image, folder or pattern per line") from None
    entries = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    return [entry if Path(entry).expanduser().is_absolute() else os.path.normpath(listing.parent / entry)
            for entry in entries]


def expand_inputs(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Image files named by ``inputs`` (files, directories, glob patterns, ``@list.txt`` files of
    those: :func:`read_input_list`), in order, deduplicated.

    An existing path wins over its reading as a pattern (a file name may contain ``[``) or as a
    list (``@``). A missing plain file is kept (it fails later as that image's error); a
    directory or a pattern without image files raises ``DatasetError`` naming it.
    """
    texts: list[str] = []
    for text in map(str, inputs):
        listed = text.startswith("@") and not Path(text).exists()
        texts.extend(read_input_list(text) if listed else [text])
    found: list[Path] = []
    for text in texts:
        path = Path(text).expanduser()
        if path.is_dir():
            files = _image_files(path)
        elif path.exists() or not any(c in text for c in "*?["):
            files = [path]
        else:
            files = sorted(Path(p) for p in glob.glob(os.path.expanduser(text), recursive=True)
                           if Path(p).is_file() and Path(p).suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            kind = "directory" if path.is_dir() else "pattern"
            raise DatasetError(f"{text}: {kind} matches no image files (suffixes: "
                               f"{', '.join(IMAGE_SUFFIXES)})")
        found.extend(files)
    unique = {p.resolve(): p for p in reversed(found)}  # the first mention of a file wins
    return [p for p in found if unique.get(p.resolve()) is p]


def annotated_name(path: Path) -> str:
    """The annotated copy's file name: the input's, or ``<stem>.png`` without an image suffix."""
    return path.name if path.suffix.lower() in IMAGE_SUFFIXES else f"{path.stem}.png"


def check_names(paths: Sequence[Path], out_dir: Path | None) -> None:
    """Refuse two inputs with one image id (file stem), and an output over its own input."""
    seen: dict[str, Path] = {}
    for path in paths:
        if path.stem in seen:
            raise DatasetError(f"{seen[path.stem]} and {path} share the image id {path.stem!r} (the "
                               "file stem used in the JSON and the annotated names); detect them "
                               "in separate runs with different --out")
        seen[path.stem] = path
        if out_dir is not None and (Path(out_dir) / annotated_name(path)).resolve() == path.resolve():
            raise ConfigError(f"--out {out_dir}: the annotated copy would overwrite the input {path}; "
                              "choose another --out")


class ImageDetector:
    """A trained detector ready to run on image files (models and trunk loaded once).

    ``source``: a work directory (its detector trained with ``method``, default spp; proposals and
    features cached in it), or a :class:`DetectionModel` already loaded, such as
    :meth:`from_model_file`'s (nothing cached; ``method``, if given, must be the model's).
    ``config``: test settings (NMS, top-k, score threshold, box regression, views); ``device``:
    "auto", "cpu" or "cuda" for the trunk and the pooling.
    """

    def __init__(self, source: str | os.PathLike | WorkDir | DetectionModel | None,
                 config: DetectConfig = DEFAULT_CONFIG, device: str = "auto", method: str | None = None):
        if isinstance(source, DetectionModel):
            model, work = source, None
            if method is not None and method != model.method:
                raise ConfigError(f"--method {method}: this model file holds an {model.method} detector")
        else:
            work = source if isinstance(source, WorkDir) else WorkDir(source)
            require_trained(work, method or DEFAULT_METHOD)
            model = None
        self.method = model.method if model else check_method(method or DEFAULT_METHOD)
        self.views = check_views(config.tta)
        if self.views and self.method != DEFAULT_METHOD:
            raise ConfigError("--tta needs the SPP features of sppdet extract, not --method rcnn")
        model = model or workdir_model(work, self.method)
        self.model = model
        self.propose_config, self.info, self.levels = model.propose, model.info, model.levels
        self.backbone, self.dim = model.backbone, model.dim
        self.device = resolve_device(device)
        self.detector = model.detector_for(config)
        self.classes = self.detector.classes
        #: where proposals and features are cached (None: computed every time)
        self.cache_folder = None if work is None else work.stage_dir(
            CACHE_STAGE, {"propose": self.propose_config}, inputs={"features": model.features_hash})

    @classmethod
    def from_workdir(cls, workdir: str | os.PathLike | WorkDir | None = None, device: str = "auto",
                     score_threshold: float = DEFAULT_SCORE_THRESHOLD,
                     method: str = DEFAULT_METHOD) -> "ImageDetector":
        """The work directory's detector as ``sppdet detect`` runs it: the test-time views chosen on
        val (``sppdet train``), boxes scoring at least ``score_threshold``."""
        work = workdir if isinstance(workdir, WorkDir) else WorkDir(workdir)
        views = recorded_views(work) if method == DEFAULT_METHOD else ()
        return cls(work, DetectConfig(score_threshold=score_threshold, tta=views), device, method)

    @classmethod
    def from_model_file(cls, path: str | os.PathLike, config: DetectConfig | None = None,
                        device: str = "auto") -> "ImageDetector":
        """The detector of a ``.sppdet`` file (``sppdet export``), no work directory needed;
        ``config`` None: the test settings saved in the file (views, score threshold, NMS, top-k).
        ``ModelError`` naming the file if it is not a valid model file."""
        model = read_model(path)
        return cls(model, config or model.defaults, device)

    def _proposals(self, bgr: np.ndarray, key: str) -> tuple[np.ndarray, bool]:
        path = None if self.cache_folder is None else self.cache_folder / f"{key}.proposals.npy"
        boxes = None if path is None else read_valid(path)
        if boxes is not None:
            return boxes, False
        boxes = selective_search(bgr, self.propose_config)
        if path is not None:
            atomic_save_npy(path, boxes)
        return boxes, True

    def _features(self, bgr: np.ndarray, key: str, image: Path,
                  view: str | None = None) -> tuple[list, np.ndarray, bool]:
        """(maps, scale factors, whether they were computed) of ``bgr`` or of its ``view``."""
        path = None if self.cache_folder is None else self.cache_folder / (
            f"{key}.{view}.npz" if view else f"{key}.npz")
        scales = self.info.config.scales
        try:
            cached = load_feature_file(path) if path is not None and path.is_file() else None
        except WorkdirError:
            cached = None
        if (cached is not None and len(cached.maps) == len(scales)
                and cached.maps[0].shape[0] == self.info.channels
                and tuple(cached.image_hw) == bgr.shape[:2]):
            return cached.maps, cached.scale_factors, False
        try:
            maps, factors = compute_features(self.backbone, view_image(bgr, view) if view else bgr, scales,
                                             self.device, self.info.config.precision)
        except ModelError as exc:
            raise ModelError(f"{image}: {exc}") from None
        if path is not None:
            save_feature_file(path, maps, factors, bgr.shape[:2])
        return maps, factors, True

    def _pooled(self, bgr: np.ndarray, key: str, image: Path, proposals: np.ndarray,
                view: str | None = None):
        """(pooled float32 [P, D] of ``proposals`` [P, 4], whether anything was computed); with
        ``view``, the proposals seen in that view of the image, pooled from its features."""
        if self.method != DEFAULT_METHOD:
            try:
                if self.cache_folder is None:
                    return compute_rcnn_features(self.backbone, bgr, proposals, self.info.config,
                                                 device=self.device).astype(np.float32), True
                return cached_rcnn_features(self.cache_folder / f"{key}.rcnn.npy", self.backbone, bgr,
                                            proposals, self.info.config, self.device)
            except ModelError as exc:
                raise ModelError(f"{image}: {exc}") from None
        maps, factors, computed = self._features(bgr, key, image, view)
        if not len(proposals):
            return np.zeros((0, self.dim), np.float32), computed
        return pool_view_windows(maps, factors, bgr.shape[:2], proposals, view, self.info.stride,
                                 self.info.offset, self.levels, target=self.info.config.target,
                                 device=self.device).cpu().numpy(), computed

    def detect(self, path: str | os.PathLike) -> tuple[np.ndarray, ImageResult]:
        """Detect in one image file: (its uint8 BGR [H, W, 3], its ``ImageResult`` without an
        annotated copy). Proposals and features come from the cache when present.
        ``DatasetError`` naming the file if it cannot be read as an image."""
        start = time.perf_counter()
        path = Path(path)
        bgr = load_bgr(path)
        key = file_hash(path, chars=KEY_CHARS)
        proposals, new_proposals = self._proposals(bgr, key)
        pooled, new_features = self._pooled(bgr, key, path, proposals)
        views = []
        for view in self.views:
            seen, computed = self._pooled(bgr, key, path, proposals, view)
            views.append((view, seen))
            new_features = new_features or computed
        boxes, scores, labels = self.detector.detect(pooled, proposals, bgr.shape[:2], views)
        return bgr, ImageResult(path, path.stem, bgr.shape[:2], boxes, scores, labels,
                                new_proposals or new_features, time.perf_counter() - start, None)


def class_labels(names: Sequence[str] | None, classes: Sequence[str]) -> set[int] | None:
    """Labels (1..K) of the class ``names`` to keep (``detect --classes``); None keeps all.
    ``ConfigError`` naming unknown names and the detector's classes."""
    if not names:
        return None
    unknown = [n for n in names if n not in classes]
    if unknown:
        raise ConfigError(f"--classes {','.join(unknown)}: not classes of this detector; choose from "
                          f"{', '.join(classes)}")
    return {classes.index(n) + 1 for n in names}


def _kept(result: ImageResult, labels: set[int] | None) -> ImageResult:
    """``result`` with only the detections of ``labels`` (all when None)."""
    if labels is None:
        return result
    keep = np.isin(result.labels, sorted(labels))
    return dataclasses.replace(result, boxes=result.boxes[keep], scores=result.scores[keep],
                               labels=result.labels[keep])


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SppdetError(f"{folder}: cannot create the output folder ({exc.strerror or exc})") from None


@dataclass(frozen=True)
class _Outputs:
    """The per-image outputs of a :func:`detect_files` run: the folder (None: no annotated
    copies), the labels kept (None: all) and whether YOLO / VOC files are written."""

    out: Path | None
    labels: set[int] | None
    save_txt: bool
    save_xml: bool


def _detect_one(detector: ImageDetector, path: Path, outputs: _Outputs) -> ImageResult | ImageError:
    """Detect in one image file and write its per-image outputs; an ``ImageError`` if it fails."""
    try:
        bgr, result = detector.detect(path)
        result = _kept(result, outputs.labels)
        out = outputs.out
        if outputs.save_txt:
            write_yolo_txt(out / "labels", path.stem, result.boxes, result.scores, result.labels, result.image_hw)
        if outputs.save_xml:
            write_voc_xml(out / "xml", path.stem, path.name, result.boxes, result.labels,
                          result.image_hw, detector.classes)
        if out is not None:
            annotated = out / annotated_name(path)
            write_image(annotated, draw_detections(bgr, result.boxes, result.scores,
                                                   result.labels, detector.classes))
            result = dataclasses.replace(result, annotated=annotated)
        return result
    except SppdetError as exc:
        return ImageError(path, str(exc))


def _detect_batch(detector: ImageDetector, outputs: _Outputs,
                  items: list[tuple[int, Path]]) -> list[tuple[int, ImageResult | ImageError]]:
    """A Ray task: :func:`_detect_one` of each ``(input index, path)``, with its index."""
    return [(index, _detect_one(detector, path, outputs)) for index, path in items]


def _item_path(item: tuple[int, Path]) -> str:
    """The file of a ``_detect_batch`` item (what a dead task's error names)."""
    return str(item[1])


def detect_files(detector: ImageDetector, paths: Sequence[str | os.PathLike],
                 out_dir: str | os.PathLike | None = None, json_path: str | os.PathLike | None = None,
                 progress: Progress | None = None, *, keep_classes: Sequence[str] | None = None,
                 save_txt: bool = False, save_xml: bool = False,
                 csv_path: str | os.PathLike | None = None, executor: str = DEFAULT_EXECUTOR,
                 ray_address: str | None = None) -> DetectRun:
    """Run ``detector`` on image files (``expand_inputs`` resolves folders and patterns), here or,
    with ``executor="ray"``, in batches as Ray tasks on the cluster at ``ray_address`` (module
    docstring, "Executors").

    Writes an annotated copy of each image into ``out_dir`` and one COCO-style JSON of every
    detection to ``json_path`` (each skipped when None); with ``save_txt`` / ``save_xml`` also
    ``out_dir/labels/<stem>.txt`` (YOLO) / ``out_dir/xml/<stem>.xml`` (VOC), and with
    ``csv_path`` one CSV (``sppdet.evaluation.detection_files``). ``keep_classes``: only these
    classes' detections are kept (all when None). An image that fails becomes an ``ImageError``
    and the others go on; clashing names (:func:`check_names`), unknown classes or an output
    folder that cannot be created raise before any image is processed. ``progress(n)`` is called
    as images are done (on Ray a batch at a time).
    """
    progress = progress or no_progress
    check_executor(executor)
    paths = [Path(p) for p in paths]
    out = None if out_dir is None else Path(out_dir)
    check_names(paths, out)
    outputs = _Outputs(out, class_labels(keep_classes, detector.classes), save_txt, save_xml)
    if (save_txt or save_xml) and out is None:
        raise ConfigError("--save-txt and --save-xml write into the output folder; give --out")
    for folder in ([out] if out is not None else []) + ([out / "labels"] if save_txt else []) + (
            [out / "xml"] if save_xml else []):
        _make_folder(folder)
    run = DetectRun(detector.classes, detector.cache_folder)
    start = time.perf_counter()
    if executor == "ray":
        done: dict[int, ImageResult | ImageError] = {}
        for finished in map_batches(functools.partial(_detect_batch, detector, outputs), list(enumerate(paths)),
                                    address=ray_address, num_gpus=int(detector.device.type == "cuda"),
                                    describe=_item_path):
            done.update(finished)
            progress(len(finished))
        outcomes = [done[index] for index in range(len(paths))]
    else:
        outcomes = []
        for path in paths:
            outcomes.append(_detect_one(detector, path, outputs))
            progress(1)
    for outcome in outcomes:
        (run.errors if isinstance(outcome, ImageError) else run.results).append(outcome)
    run.seconds = time.perf_counter() - start
    if json_path is not None:
        write_coco_json(json_path, run.detections(), detector.classes,
                        images=[(r.image_id, r.path.name, r.image_hw[1], r.image_hw[0]) for r in run.results])
        run.json_path = Path(json_path)
    if csv_path is not None:
        write_detections_csv(csv_path, ((r.image_id, r.boxes, r.scores, r.labels) for r in run.results),
                             detector.classes)
    return run
