"""How window features are computed (``--method``), and where each method's stages are recorded.

    ``spp``   SPP-net (the default): conv5 once per image and scale (``sppdet extract``), each
              window pyramid-pooled on it (``sppdet.ops.spp``).
    ``rcnn``  the R-CNN baseline: each window warped to a crop and run through the same trunk,
              each crop's conv5 pyramid-pooled with the same levels (``sppdet.models.crops``), cached by
              ``sppdet extract --method rcnn`` (``sppdet.stages.extract_rcnn``).

Both give pooled vectors of the same length, so the same fc head, SVMs and box regressors train
on either. Both can live in one work directory: ``config.json["stages"]`` keeps the plain stage
names (``extract``, ``finetune``, ``train-svm``, ``train-bbox``) for ``spp``, so existing work
directories keep working, and ``<stage>:rcnn`` (e.g. ``train-svm:rcnn``) for ``rcnn``. Stages that
do not depend on the method (``propose``, ``pretrain``) have one record. Stage folders need no
such rule: their hashes cover the feature identity, which differs between methods.
"""

from __future__ import annotations

from sppdet.errors import ConfigError

METHODS = ("spp", "rcnn")
DEFAULT_METHOD = "spp"


def check_method(method: str) -> str:
    """``method`` if it is one of :data:`METHODS`, else ``ConfigError``."""
    if method not in METHODS:
        raise ConfigError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    return method


def stage_key(stage: str, method: str = DEFAULT_METHOD) -> str:
    """The ``config.json["stages"]`` key of ``stage`` run with ``method``: ``stage`` for spp,
    ``stage:rcnn`` for rcnn."""
    return stage if check_method(method) == DEFAULT_METHOD else f"{stage}:{method}"
