"""Conv trunks (conv1 .. conv5, total stride 16): geometry, preprocessing and weights loading.

Backbones (docs/algorithm.md section 2):
    ``zf5``      the paper's ZF-5 with every layer padded floor(k/2) as the paper's appendix
                 assumes (the release pads conv1 by 1 and conv2 by 0 and measures its offsets
                 instead); LRN as the release (within-channel, 3x3, alpha 5e-5, beta 0.75);
                 a ``width`` multiplier scales every layer's channels (0.25 -> 24-64-96-96-64)
                 so a small trunk trains and runs on a CPU. Input: BGR minus 128, as the release.
    ``alexnet``  torchvision ``alexnet().features[:-1]`` (conv5 + ReLU; 256 channels).
    ``vgg16``    torchvision ``vgg16().features[:-1]`` (conv5_3 + ReLU; 512 channels).
                 Both torchvision trunks take RGB scaled to [0, 1] and ImageNet mean/std.

Geometry: conv5 cell ``j`` (0-based) has its receptive-field centre at continuous pixel
``offset + stride * j`` of the image the map was computed from (pixel ``i`` spans [i, i+1), centre
i + 0.5: the ``sppdet.structures.boxes`` convention), so a box edge at ``x`` falls at cell coordinate
``(x - offset) / stride``. Derivation: if the cells entering a layer (kernel k, stride s,
padding p) are centred at ``a + b * i``, output cell ``j`` reads inputs ``j*s - p .. j*s - p + k - 1``
whose middle is input ``j*s - p + (k - 1)/2``, centred at ``a + b*((k - 1)/2 - p) + (b*s) * j``:
    offset += stride_so_far * ((k - 1)/2 - p);  stride_so_far *= s;  starting from (0.5, 1).
Each trunk's ``OFFSET`` below is this sum; tests/test_backbones.py checks it against the actual
receptive field of the built modules (gradient support of single conv5 cells).

Weights: ``"none"`` (seeded random init), ``"imagenet"`` (torchvision's file in
``$TORCH_HOME/hub/checkpoints``, downloaded there on first use as torchvision does; offline
without it, one error line says where to put it) or a path to a state dict (the trunk's own
keys, or a full torchvision-style model with ``features.N...`` keys).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from sppdet.config import BACKBONES
from sppdet.errors import ConfigError, ModelError
from sppdet.fileio import file_hash

STRIDE = 16
ZF5_CHANNELS = (96, 256, 384, 384, 256)

# zf5, padding floor(k/2) everywhere: (k - 1)/2 - p = 0 for every odd k, so the offset stays 0.5:
# cell j is centred on pixel 16j (centre 16j + 0.5). The paper's appendix "x = S x'" is the same
# statement with pixel centres at integers (x = continuous - 0.5), hence its edge rules
# floor(x/S) + 1 and ceil(x/S) - 1 become floor((X - 0.5)/16) + 1 and ceil((X - 0.5)/16) - 1 in
# our continuous X.
ZF5_OFFSET = 0.5
# alexnet: conv1 k11 s4 p2 adds 1 * (5 - 2) = 3; pool1 k3 s2 p0 adds 4 * 1 = 4; conv2 k5 p2 adds 0;
# pool2 k3 s2 p0 adds 8 * 1 = 8; conv3-5 k3 p1 add 0: 0.5 + 3 + 4 + 8 = 15.5 (pixel 15 + 16j).
ALEXNET_OFFSET = 15.5
# vgg16: every conv k3 p1 adds 0; pools 1-4 (k2 s2 p0) add 0.5 * 1, 0.5 * 2, 0.5 * 4, 0.5 * 8:
# 0.5 + 0.5 + 1 + 2 + 4 = 8.0 (cell j covers the 16 x 16 block [16j, 16j + 16), centre 16j + 8).
VGG16_OFFSET = 8.0


@dataclass(frozen=True)
class Preprocessing:
    """How a trunk wants its input: ``(pixel[channel_order] - mean) / std`` on a 0-255 scale."""

    channel_order: str  # "BGR" or "RGB"
    mean: tuple[float, float, float]  # per channel, in channel_order
    std: tuple[float, float, float]


ZF5_PREPROCESSING = Preprocessing("BGR", (128.0, 128.0, 128.0), (1.0, 1.0, 1.0))
#: Raw-pixel trunks (zf5: BGR - 128, no std) train on inputs divided by this, about unit variance,
#: what Kaiming initialisation assumes; the factor is folded into the first conv when saved.
PIXEL_STD = 64.0

IMAGENET_PREPROCESSING = Preprocessing(
    "RGB", (0.485 * 255, 0.456 * 255, 0.406 * 255), (0.229 * 255, 0.224 * 255, 0.225 * 255))


@dataclass
class Backbone:
    """A conv trunk with its geometry. ``trunk`` maps float32 ``[N, 3, H, W]`` to
    ``[N, channels, ceil-ish(H / 16), ceil-ish(W / 16)]``; see the module docstring for ``offset``."""

    name: str
    trunk: nn.Module
    stride: int
    channels: int
    offset: float
    preprocessing: Preprocessing
    weights_id: str  # "none" (random, seeded) or the short hash of the weights file
    weights_source: str  # for people: "random (seed 0)", or the weights file's path
    lrn: bool = True  # zf5's LRN layers are in ``trunk`` (False: replaced by identities, see build_backbone)

    def preprocess(self, bgr: np.ndarray, device: torch.device | str | None = None) -> torch.Tensor:
        """uint8 BGR ``[H, W, 3]`` -> float32 ``[3, H, W]`` on ``device``.

        The result is a channels-last view (strides of ``[H, W, 3]`` memory): with ``[None]`` it is
        the ``torch.channels_last`` layout the trunk runs fastest in. Computed in numpy, one pass:
        a few elementwise torch ops on the CPU cost more when other processes load the cores.
        """
        pixels = bgr[..., ::-1] if self.preprocessing.channel_order == "RGB" else bgr
        mean = np.asarray(self.preprocessing.mean, dtype=np.float32)
        scale = 1.0 / np.asarray(self.preprocessing.std, dtype=np.float32)
        hwc = np.subtract(pixels, mean, dtype=np.float32)
        if (scale != 1).any():
            hwc *= scale
        return torch.from_numpy(hwc).permute(2, 0, 1).to(device)

    @property
    def training_input_scale(self) -> float:
        """What training multiplies the preprocessed input by: ``1 / PIXEL_STD`` for raw-pixel
        trunks (std 1, such as zf5), else 1. ``sppdet.training.pretrain`` and
        ``sppdet.training.finetune_conv`` both train in this parametrisation and fold the factor
        into the first conv (:func:`first_conv_name`) when they save the plain trunk."""
        raw_pixels = self.preprocessing.std == (1.0, 1.0, 1.0)
        return 1.0 / PIXEL_STD if raw_pixels else 1.0


def first_conv_name(trunk: nn.Module) -> str:
    """The name of ``trunk``'s first ``nn.Conv2d`` (where an input scale folds in)."""
    return next(name for name, module in trunk.named_modules() if isinstance(module, nn.Conv2d))


class WithinChannelLRN(nn.Module):
    """Caffe's LRN with ``norm_region: WITHIN_CHANNEL`` (as the ZF-5 release):
    ``x / (1 + alpha * mean_{size x size}(x^2)) ** beta``, zero padding counted in the mean."""

    def __init__(self, size: int = 3, alpha: float = 5e-5, beta: float = 0.75):
        super().__init__()
        self.size, self.alpha, self.beta = size, alpha, beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        energy = F.avg_pool2d(x * x, self.size, stride=1, padding=self.size // 2,
                              count_include_pad=True)
        # in place where autograd allows it (avg_pool2d's backward does not need its output)
        return x * energy.mul_(self.alpha).add_(1.0).pow(-self.beta)


def without_lrn(trunk: nn.Module) -> nn.Module:
    """``trunk`` with every ``WithinChannelLRN`` child replaced by ``Identity`` (in place; the
    LRN has no parameters, so the state dict keys stay the same)."""
    for name, module in list(trunk.named_children()):
        if isinstance(module, WithinChannelLRN):
            setattr(trunk, name, nn.Identity())
    return trunk


def zf5_channels(width: float) -> tuple[int, ...]:
    """conv1..conv5 channel counts of ZF-5 scaled by ``width`` (rounded, at least 1)."""
    return tuple(max(1, int(round(c * width))) for c in ZF5_CHANNELS)


def _zf5(width: float) -> nn.Sequential:
    c1, c2, c3, c4, c5 = zf5_channels(width)
    layers = OrderedDict([
        ("conv1", nn.Conv2d(3, c1, 7, stride=2, padding=3)), ("relu1", nn.ReLU(inplace=True)),
        ("norm1", WithinChannelLRN()), ("pool1", nn.MaxPool2d(3, stride=2, padding=1)),
        ("conv2", nn.Conv2d(c1, c2, 5, stride=2, padding=2)), ("relu2", nn.ReLU(inplace=True)),
        ("norm2", WithinChannelLRN()), ("pool2", nn.MaxPool2d(3, stride=2, padding=1)),
        ("conv3", nn.Conv2d(c2, c3, 3, padding=1)), ("relu3", nn.ReLU(inplace=True)),
        ("conv4", nn.Conv2d(c3, c4, 3, padding=1)), ("relu4", nn.ReLU(inplace=True)),
        ("conv5", nn.Conv2d(c4, c5, 3, padding=1)), ("relu5", nn.ReLU(inplace=True)),
    ])
    trunk = nn.Sequential(layers)
    for module in trunk.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(module.bias)
    return trunk


def _alexnet(width: float) -> nn.Sequential:
    return torchvision.models.alexnet(weights=None).features[:-1]


def _vgg16(width: float) -> nn.Sequential:
    return torchvision.models.vgg16(weights=None).features[:-1]


@dataclass(frozen=True)
class _Spec:
    build: Callable[[float], nn.Sequential]
    offset: float
    preprocessing: Preprocessing
    imagenet: torchvision.models.WeightsEnum | None


_SPECS = {
    "zf5": _Spec(_zf5, ZF5_OFFSET, ZF5_PREPROCESSING, None),
    "alexnet": _Spec(_alexnet, ALEXNET_OFFSET, IMAGENET_PREPROCESSING,
                     torchvision.models.AlexNet_Weights.IMAGENET1K_V1),
    "vgg16": _Spec(_vgg16, VGG16_OFFSET, IMAGENET_PREPROCESSING,
                   torchvision.models.VGG16_Weights.IMAGENET1K_V1),
}
assert tuple(_SPECS) == BACKBONES, "sppdet.config.BACKBONES lists the trunks built here"


def imagenet_weights_path(name: str) -> Path:
    """Where torchvision keeps the ImageNet file of backbone ``name``:
    ``torch.hub.get_dir()/checkpoints/<file>`` (``$TORCH_HOME/hub/checkpoints`` when set)."""
    spec = _SPECS[name]
    if spec.imagenet is None:
        raise ModelError(f"--weights imagenet: {name} has no public ImageNet weights; train them "
                         "with `sppdet pretrain` or pass --weights PATH (or none)")
    filename = os.path.basename(urlparse(spec.imagenet.url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def download_imagenet_weights(name: str, path: Path, progress: bool = True) -> None:
    """Download backbone ``name``'s ImageNet file from torchvision's URL to ``path`` (torch.hub:
    a temporary file renamed when complete, checked against the SHA-256 prefix in the file's
    name, a progress bar on stderr), as torchvision does on first use. Offline, or when the
    download fails: ``ModelError`` naming the file, the URL and where to put it."""
    url = _SPECS[name].imagenet.url
    match = torch.hub.HASH_REGEX.search(path.name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(path), hash_prefix=match.group(1) if match else None,
                                       progress=progress)
    except (OSError, RuntimeError, ValueError) as exc:  # URLError is an OSError; a bad hash a RuntimeError
        reason = (str(getattr(exc, "reason", "")) or str(exc) or type(exc).__name__).splitlines()[0]
        raise ModelError(f"{path}: ImageNet weights for {name} are not here and the download failed "
                         f"({reason}); fetch {url} to that path (its folder follows $TORCH_HOME) "
                         "or pass --weights PATH") from None


def _offending(keys: list[str], limit: int = 3) -> str:
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_trunk_weights(trunk: nn.Module, path: str | os.PathLike) -> None:
    """Load a state dict file into ``trunk`` (``torch.load(weights_only=True)``, on the CPU).

    Accepts the trunk's own keys, or a full model whose ``features.`` keys are the trunk (other
    keys, e.g. ``classifier.*``, are ignored). Missing or unexpected keys and shape mismatches
    raise ``ModelError`` naming the file and the first offending keys.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: weights file not found; pass none, imagenet or an existing state dict")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file; all mean "not loadable"
        first_line = (str(exc).splitlines() or [""])[0]
        raise ModelError(f"{path}: not a loadable state dict ({type(exc).__name__}: {first_line}); if sppdet "
                         "wrote it, delete it and re-run the stage that did (sppdet pretrain re-trains "
                         "an unreadable trunk.pt)") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path}: expected a state dict (name -> tensor), got {type(state).__name__}")
    if any(key.startswith("features.") for key in state):
        state = {key[len("features."):]: value for key, value in state.items()
                 if key.startswith("features.")}
    expected = trunk.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    mismatched = [f"{key} {tuple(state[key].shape)} vs {tuple(value.shape)}"
                  for key, value in expected.items()
                  if key in state and state[key].shape != value.shape]
    problems = [f"{label}: {_offending(keys)}" for label, keys in (
        ("missing keys", missing), ("unexpected keys", unexpected),
        ("shape mismatch (file vs model)", mismatched)) if keys]
    if problems:
        raise ModelError(f"{path}: weights do not fit this trunk ({'; '.join(problems)}); "
                         "check --backbone/--width")
    trunk.load_state_dict(state)


def build_backbone(name: str, width: float = 1.0, weights: str | os.PathLike = "none",
                   seed: int = 0, lrn: bool = True) -> Backbone:
    """Build trunk ``name`` (one of ``BACKBONES``) in eval mode on the CPU.

    ``width`` scales zf5's channels (torchvision trunks need 1.0). ``weights``: ``"none"`` (random
    init from ``seed``, deterministic, global RNG untouched), ``"imagenet"`` or a state dict path.
    ``lrn=False`` leaves out zf5's LRN layers (:func:`without_lrn`; the other trunks have none):
    the function of a trunk that ``sppdet pretrain`` trained with batch norm, which trains without
    them (``sppdet.training.pretrain.CropClassifier``), so features are computed by the network
    that was trained, at about half the CPU time of one with LRN.
    """
    if name not in _SPECS:
        raise ConfigError(f"--backbone {name!r}: choose one of {', '.join(BACKBONES)}")
    if not width > 0 or (name != "zf5" and width != 1.0):
        raise ConfigError(f"--width {width}: must be > 0, and 1.0 for {name} (only zf5 scales)")
    spec = _SPECS[name]
    path = None if str(weights) == "none" else (
        imagenet_weights_path(name) if str(weights) == "imagenet" else Path(weights))
    if str(weights) == "imagenet" and not path.is_file():
        download_imagenet_weights(name, path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        trunk = spec.build(width)
    if not lrn:
        without_lrn(trunk)
    if path is None:
        weights_id, source = "none", f"random (seed {seed})"
    else:
        load_trunk_weights(trunk, path)
        weights_id, source = file_hash(path), str(path.resolve())
    channels = next(m.out_channels for m in reversed(list(trunk.modules())) if isinstance(m, nn.Conv2d))
    return Backbone(name=name, trunk=trunk.eval(), stride=STRIDE, channels=channels,
                    offset=spec.offset, preprocessing=spec.preprocessing,
                    weights_id=weights_id, weights_source=source, lrn=bool(lrn))


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cuda"`` without CUDA -> ``ConfigError``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: CUDA is not available here; use --device cpu or auto")
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"--device {device!r}: choose auto, cpu or cuda")
    return torch.device(device)
