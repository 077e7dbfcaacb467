"""Pooled SPP windows of a split's images, read from the work directory's caches.

Shape shorthand: P proposals, G ground-truth boxes, R windows, K classes, D = C * sum(n^2).
Boxes follow ``sppdet.structures.boxes``. Every training stage (finetune, train-svm, train-bbox) and the
split evaluation read windows through :class:`WindowSource`, so they all see the same proposals
(``sppdet propose``), the same feature maps (``sppdet extract``) and the same pooling
(``sppdet.ops.spp.pool_windows`` with the trunk's stride and offset). One image at a time: memory
never grows with the dataset.

``method="rcnn"`` (``sppdet.workdir.methods``) reads the R-CNN baseline's cached vectors instead
(``sppdet extract --method rcnn``, ``sppdet.stages.extract_rcnn``): ``pool`` then looks up the rows of the
requested boxes, which must be ground-truth boxes or cached proposals (every caller asks only for
those), and the pyramid levels are the ones the cache was computed with.
"""

from __future__ import annotations

import hashlib
import os
from functools import partial
from typing import Callable

import numpy as np

from sppdet.data.voc import VocDataset
from sppdet.errors import ConfigError
from sppdet.workdir.caches import features_dir, features_info, load_features
from sppdet.workdir.methods import DEFAULT_METHOD, check_method
from sppdet.workdir.caches import load_proposals, proposals_dir
from sppdet.workdir.caches import lookup_pooled, rcnn_features_dir, rcnn_info
from sppdet.ops.spp import LEVELS, pooled_dim
from sppdet.models.head import fc7_features
from sppdet.workdir.store import WorkDir
from sppdet.ops.views import pool_view_windows
from sppdet.structures.image_windows import ImageWindows, estimate_feature_scale, make_image_windows


def pooled_feature_hash(features_hash: str, levels=LEVELS, method: str = DEFAULT_METHOD) -> str:
    """Identity of pooled features: a features folder's hash plus the pyramid levels, prefixed
    ``rcnn:`` for the R-CNN method. Models record it and refuse other features
    (``sppdet.models.model_file``)."""
    prefix = "" if check_method(method) == DEFAULT_METHOD else f"{method}:"
    return f"{prefix}{features_hash}:L{'-'.join(map(str, levels))}"


def method_features(workdir: WorkDir, method: str = DEFAULT_METHOD):
    """(folder, info) of the work directory's window features for ``method``: the conv maps of
    ``sppdet extract`` (``features_info``) or the R-CNN vectors of ``--method rcnn`` (``rcnn_info``)."""
    if check_method(method) == DEFAULT_METHOD:
        folder = features_dir(workdir)
        return folder, features_info(folder)
    folder = rcnn_features_dir(workdir)
    return folder, rcnn_info(folder)


def memory_budget(wanted: float, share: float = 0.25) -> float:
    """``wanted`` bytes, or less: at most ``share`` of the machine's physical memory."""
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not POSIX: trust the wanted size
        return wanted
    return min(wanted, share * physical)


class PooledMemo:
    """Pooled windows, and the fc7 vectors of the fine-tuned head for them, kept in memory
    across passes, up to ``budget`` bytes (then it stops keeping).

    Training several SVMs on one split (``sppdet train``'s candidates, then the final refit on a
    split that contains it) pools the same boxes of the same images again and again, and the
    SVMs that read fc7 run the same head over them again and again. The key of pooled windows is
    the features folder, the pyramid levels, the image, the view and the exact bytes of the
    boxes, so a hit returns what pooling would have returned; the key of fc7 vectors is the
    pooled array they came from and the head's weights (:func:`head_key`). Kept arrays are
    read-only and returned as they are (no copy), so a caller cannot change what the next one
    reads. Shared by every :class:`WindowSource` given it (any split of the same work directory)."""

    def __init__(self, budget: float):
        self.budget, self.held = budget, 0
        self.kept: dict[tuple, np.ndarray] = {}
        self.fc7s: dict[tuple[int, str], np.ndarray] = {}
        self.owned: dict[int, np.ndarray] = {}  # id -> pooled array kept here (ids are unique while kept)

    @staticmethod
    def key(source: "WindowSource", image_id: str, boxes: np.ndarray, view: str | None) -> tuple:
        boxes = np.ascontiguousarray(boxes)
        digest = hashlib.blake2b(boxes.tobytes(), digest_size=16).hexdigest()
        return (str(source.features_folder), source.levels, image_id, view, boxes.dtype.str, boxes.shape, digest)

    def get(self, key: tuple) -> np.ndarray | None:
        """The kept pooled windows float32 [R, D] (read-only) of ``key``, or None."""
        return self.kept.get(key)

    def put(self, key: tuple, pooled: np.ndarray) -> np.ndarray:
        """Keep ``pooled`` [R, D] under ``key`` if it fits; returns it (read-only when kept)."""
        pooled = np.ascontiguousarray(pooled, np.float32)
        if self.held + pooled.nbytes <= self.budget:
            pooled.flags.writeable = False
            self.kept[key] = self.owned[id(pooled)] = pooled
            self.held += pooled.nbytes
        return pooled

    def fc7(self, pooled: np.ndarray, key_of_head: str, compute: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """``compute(pooled)`` (fc7 float32 [R, H7] of the head whose :func:`head_key` is
        ``key_of_head``), computed once for each pooled array kept here."""
        if self.owned.get(id(pooled)) is not pooled:
            return compute(pooled)
        key = (id(pooled), key_of_head)
        if (kept := self.fc7s.get(key)) is not None:
            return kept
        fc7 = np.ascontiguousarray(compute(pooled), np.float32)
        if self.held + fc7.nbytes <= self.budget:
            fc7.flags.writeable = False
            self.fc7s[key] = fc7
            self.held += fc7.nbytes
        return fc7


def head_key(head) -> str:
    """The identity of a head's weights (a digest of its state), for :meth:`PooledMemo.fc7`."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(head.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class WindowSource:
    """Ground truth, proposals and pooled windows of one split, from the caches of ``workdir``.

    ``levels``: the pyramid (default ``sppdet.ops.spp.LEVELS``; for rcnn, the cache's levels);
    ``method``: "spp" or "rcnn" (module docstring); ``memo``: a :class:`PooledMemo` that keeps
    pooled SPP windows for later passes (None: pool every time)."""

    def __init__(self, workdir: WorkDir, split: str, data_root=None, levels=None,
                 method: str = DEFAULT_METHOD, memo: PooledMemo | None = None):
        self.workdir = workdir
        self.memo = memo
        self.method = check_method(method)
        root = workdir.data_root(data_root)
        self.dataset = VocDataset(root, split, check_images=False, split_dir=workdir.split_dir(root))
        self.classes = self.dataset.classes
        self.features_folder, self.info = method_features(workdir, self.method)
        if self.method == DEFAULT_METHOD:
            self.levels = tuple(levels or LEVELS)
        else:
            self.levels = self.info.config.levels
            if levels is not None and tuple(levels) != self.levels:
                raise ConfigError(f"levels {tuple(levels)}: the R-CNN features in {self.features_folder} "
                                  f"were pooled with levels {self.levels}; re-run sppdet extract "
                                  "--method rcnn with these levels")
        self.proposals_folder = proposals_dir(workdir)
        self.dim = pooled_dim(self.info.channels, self.levels)

    @property
    def image_ids(self) -> list[str]:
        return self.dataset.image_ids

    @property
    def feature_hash(self) -> str:
        """Identity of the pooled features (:func:`pooled_feature_hash`)."""
        return pooled_feature_hash(self.workdir.stage_hash(self.features_folder), self.levels,
                                   self.method)

    @property
    def inputs(self) -> dict[str, str]:
        """Input hashes of a stage trained on these windows (for ``WorkDir.stage_dir``): the
        features and proposals folders, the split, the dataset root and ``content``, the split's
        content digest (``VocDataset.content_digest``: ids, classes, annotation bytes, image
        contents), so a changed annotation or image trains again in a new folder. The cache
        folders' hashes cover only settings: their files follow each image's content
        (``sppdet.workdir.caches``, "Sources"), which the content digest covers here."""
        return {"features": self.feature_hash,
                "proposals": self.workdir.stage_hash(self.proposals_folder),
                "split": self.dataset.split, "data": str(self.dataset.root),
                "content": self.dataset.content_digest()}

    def ground_truth(self, image_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(boxes float32 [G, 4], labels int64 [G] in 1..K (-1: class outside the list),
        difficult bool [G]) of one image."""
        annotation = self.dataset.annotation(image_id)
        return annotation.boxes, annotation.labels(self.classes), annotation.difficult

    def proposals(self, image_id: str) -> np.ndarray:
        """The cached proposals float32 [P, 4] of one image."""
        return load_proposals(self.proposals_folder, image_id)

    def pool(self, image_id: str, boxes: np.ndarray, view: str | None = None) -> np.ndarray:
        """Pooled conv5 vectors float32 [R, D] of ``boxes`` [R, 4] (original image pixels); for
        rcnn, boxes must be ground-truth boxes or cached proposals (else ``WorkdirError``).
        ``view``: the same boxes seen in that view of the image (``sppdet.ops.views``), pooled from
        its features (``sppdet extract --tta``; SPP only)."""
        if view and self.method != DEFAULT_METHOD:
            raise ConfigError("--tta needs the SPP features of sppdet extract, not --method rcnn")
        if len(boxes) == 0:
            return np.zeros((0, self.dim), np.float32)
        if self.method != DEFAULT_METHOD:
            return lookup_pooled(self.features_folder, image_id, boxes, self.dim)
        key = PooledMemo.key(self, image_id, boxes, view) if self.memo is not None else None
        if key is not None and (kept := self.memo.get(key)) is not None:
            return kept
        cached = load_features(self.features_folder, image_id, view)
        pooled = pool_view_windows(cached.maps, cached.scale_factors, tuple(cached.image_hw), boxes, view,
                                   self.info.stride, self.info.offset, self.levels,
                                   target=self.info.config.target).numpy()
        if key is not None:
            pooled = self.memo.put(key, pooled)
        return pooled

    def fc7_function(self, head) -> Callable[[np.ndarray], np.ndarray] | None:
        """A function pooled [R, D] -> fc7 of ``head`` float32 [R, H7] that computes each kept
        pooled array's fc7 once (:meth:`PooledMemo.fc7`); None without a memo or a head."""
        if self.memo is None or head is None:
            return None
        memo, key = self.memo, head_key(head)
        return lambda pooled: memo.fc7(pooled, key, partial(fc7_features, head))


def image_windows(source: WindowSource, image_id: str, transform=None, proposals: np.ndarray | None = None,
                  use_difficult: bool = True) -> ImageWindows:
    """One image's :class:`ImageWindows`: ground-truth rows, then ``proposals`` [P, 4] (default:
    all cached proposals; pass an empty array for ground truth only). ``transform`` maps pooled
    [R, D] to the features the model reads (e.g. fc7); default: pool5 itself."""
    gt_boxes, gt_labels, difficult = source.ground_truth(image_id)
    proposals = source.proposals(image_id) if proposals is None else proposals
    pooled = source.pool(image_id, np.concatenate([gt_boxes, proposals]))
    features = transform(pooled) if transform is not None else pooled
    return make_image_windows(features, gt_boxes, gt_labels, proposals, len(source.classes),
                              difficult, use_difficult)


def sample_feature_scale(source: WindowSource, target_norm: float, transform=None, images: int = 200,
                         windows: int = 200, seed: int = 0) -> float:
    """R-CNN's feature scale: ``target_norm`` / mean L2 norm of ``windows`` random proposals from
    each of ``images`` random images (seeded), after ``transform``."""
    rng = np.random.default_rng(seed)
    ids = rng.permutation(source.image_ids)[:images]

    def samples():
        for image_id in ids:
            proposals = source.proposals(image_id)
            chosen = proposals[rng.permutation(len(proposals))[:windows]]
            pooled = source.pool(image_id, chosen)
            yield transform(pooled) if transform is not None else pooled

    return estimate_feature_scale(samples(), target_norm)
