"""Backbones: geometry (stride, offset, receptive field), preprocessing, weights loading."""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sppdet.models.backbones import (IMAGENET_PREPROCESSING, WithinChannelLRN, build_backbone,
                                    imagenet_weights_path, load_trunk_weights, resolve_device, zf5_channels)
from sppdet.errors import ConfigError, ModelError
from sppdet.fileio import file_hash

# Receptive-field sizes of one conv5 cell, from the layer list (k, s): zf5 grows 7, +4 (norm1, a
# 3x3 within-channel LRN at jump 2), +4 (pool1), +16 (conv2), +16 (norm2), +16 (pool2), +32 x 3;
# alexnet 11, +8, +32, +16, +32 x 3; vgg16 5, +1, +8, +2, +12, +4, +24, +8, +48, +96.
# Input sizes give every backbone a few cells whose field lies wholly inside the image.
PROBES = [("zf5", 0.125, (176, 208), 159), ("alexnet", 1.0, (200, 216), 163),
          ("vgg16", 1.0, (232, 248), 196)]


def _avg_pool_probe(trunk: nn.Module) -> nn.Module:
    """A copy with max pools replaced by average pools of the same kernel, stride and padding
    (same geometry, but gradients reach every input of a window), with positive weights."""
    probe = copy.deepcopy(trunk).double()
    for name, module in list(probe.named_children()):
        if isinstance(module, nn.MaxPool2d):
            setattr(probe, name, nn.AvgPool2d(module.kernel_size, module.stride, module.padding,
                                              ceil_mode=module.ceil_mode))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in probe.modules():
            if isinstance(module, nn.Conv2d):
                weight = torch.rand(module.weight.shape, generator=generator, dtype=torch.float64)
                module.weight.copy_(weight / module.weight[0].numel())
                module.bias.zero_()
    return probe


@pytest.mark.parametrize("name,width,hw,field", PROBES)
def test_offset_is_the_receptive_field_centre(name, width, hw, field):
    """Cell j's receptive field (support of d cell / d input) is centred at offset + 16 j."""
    backbone = build_backbone(name, width)
    probe = _avg_pool_probe(backbone.trunk)
    image = torch.ones(1, 3, *hw, dtype=torch.float64, requires_grad=True)
    output = probe(image)
    centre = lambda j: backbone.offset + backbone.stride * j  # noqa: E731
    interior = [j for j in range(min(output.shape[2:]))
                if centre(j) - field / 2 >= 0 and centre(j) + field / 2 <= min(hw)]
    assert len(interior) >= 2
    for j in interior:
        (grad,) = torch.autograd.grad(output[0, :, j, j].sum(), image, retain_graph=True)
        support = grad[0].sum(0) > 0
        cols = torch.nonzero(support.any(0))[:, 0]
        rows = torch.nonzero(support.any(1))[:, 0]
        for first, last in ((cols[0], cols[-1]), (rows[0], rows[-1])):
            # pixels first..last span the continuous interval [first, last + 1)
            assert (first.item() + last.item() + 1) / 2 == centre(j)
            assert last.item() + 1 - first.item() == field


@pytest.mark.parametrize("height,width", [(64, 64), (65, 97), (100, 37), (688, 917)])
def test_zf5_stride_16_map_size(height, width):
    backbone = build_backbone("zf5", 0.125)
    with torch.inference_mode():
        out = backbone.trunk(torch.zeros(1, 3, height, width))
    assert out.shape == (1, 32, math.ceil(height / 16), math.ceil(width / 16))
    assert backbone.stride == 16 and backbone.channels == 32


def test_zf5_width_scales_every_layer():
    assert zf5_channels(1.0) == (96, 256, 384, 384, 256)
    assert zf5_channels(0.25) == (24, 64, 96, 96, 64)
    convs = [m for m in build_backbone("zf5", 0.25).trunk.modules() if isinstance(m, nn.Conv2d)]
    assert [m.out_channels for m in convs] == [24, 64, 96, 96, 64]
    assert [(m.kernel_size[0], m.stride[0], m.padding[0]) for m in convs] == [
        (7, 2, 3), (5, 2, 2), (3, 1, 1), (3, 1, 1), (3, 1, 1)]


def test_zf5_without_lrn_is_the_same_trunk_minus_its_lrn_layers():
    with_lrn, without = build_backbone("zf5", 0.25, seed=3), build_backbone("zf5", 0.25, seed=3, lrn=False)
    assert with_lrn.lrn and not without.lrn
    assert sum(isinstance(m, WithinChannelLRN) for m in with_lrn.trunk.modules()) == 2
    assert not any(isinstance(m, WithinChannelLRN) for m in without.trunk.modules())
    assert list(without.trunk.state_dict()) == list(with_lrn.trunk.state_dict())  # same weights file fits both
    reference = copy.deepcopy(with_lrn.trunk)
    for name in ("norm1", "norm2"):
        setattr(reference, name, nn.Identity())
    image = torch.randn(1, 3, 64, 80, generator=torch.Generator().manual_seed(0)) * 60
    with torch.no_grad():
        assert torch.equal(without.trunk(image), reference(image))
        assert not torch.equal(without.trunk(image), with_lrn.trunk(image))
    assert build_backbone("alexnet", lrn=False).channels == 256  # no LRN to leave out


def test_torchvision_trunks_channels():
    assert build_backbone("alexnet").channels == 256
    assert build_backbone("vgg16").channels == 512


def test_random_init_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = build_backbone("zf5", 0.125, seed=1).trunk.state_dict()
    assert torch.equal(torch.rand(1), expected_next)
    b = build_backbone("zf5", 0.125, seed=1).trunk.state_dict()
    c = build_backbone("zf5", 0.125, seed=2).trunk.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["conv1.weight"], c["conv1.weight"])


def test_preprocessing():
    bgr = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    zf5 = build_backbone("zf5", 0.125).preprocess(bgr)
    np.testing.assert_allclose(zf5.numpy(), bgr.transpose(2, 0, 1).astype(np.float32) - 128)
    alex = build_backbone("alexnet").preprocess(bgr)
    rgb = bgr[..., ::-1].transpose(2, 0, 1).astype(np.float32) / 255
    mean = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
    std = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]
    np.testing.assert_allclose(alex.numpy(), (rgb - mean) / std, rtol=1e-5, atol=1e-5)
    assert IMAGENET_PREPROCESSING.channel_order == "RGB"
    assert alex.dtype == torch.float32 and alex.shape == (3, 5, 7)


def test_weights_path_round_trip(tmp_path):
    source = build_backbone("zf5", 0.125, seed=5)
    path = tmp_path / "trunk.pt"
    torch.save(source.trunk.state_dict(), path)
    loaded = build_backbone("zf5", 0.125, weights=str(path), seed=0)
    assert loaded.weights_id == file_hash(path)
    assert build_backbone("zf5", 0.125).weights_id == "none"
    x = torch.randn(1, 3, 40, 40)
    with torch.inference_mode():
        assert torch.equal(loaded.trunk(x), source.trunk(x))


def test_weights_full_torchvision_model_dict(tmp_path):
    source = build_backbone("alexnet", seed=3)
    state = {f"features.{k}": v for k, v in source.trunk.state_dict().items()}
    state["classifier.1.weight"] = torch.zeros(4, 9216)
    state["features.12.unused"] = torch.zeros(1)  # the dropped last pool has no params: unexpected
    path = tmp_path / "full.pt"
    torch.save(state, path)
    with pytest.raises(ModelError, match=r"unexpected keys: 12\.unused"):
        build_backbone("alexnet", weights=str(path))
    del state["features.12.unused"]
    torch.save(state, path)
    loaded = build_backbone("alexnet", weights=str(path))
    assert torch.equal(loaded.trunk.state_dict()["0.weight"], source.trunk.state_dict()["0.weight"])


def test_weights_errors_name_the_file(tmp_path):
    path = tmp_path / "w.pt"
    state = build_backbone("zf5", 0.125).trunk.state_dict()
    del state["conv3.bias"]
    torch.save(state, path)
    with pytest.raises(ModelError, match=rf"{re.escape(str(path))}.*missing keys: conv3\.bias"):
        build_backbone("zf5", 0.125, weights=str(path))
    torch.save(build_backbone("zf5", 0.25).trunk.state_dict(), path)
    mismatch = r"shape mismatch.*conv1\.weight \(24, 3, 7, 7\) vs \(12, 3, 7, 7\)"
    with pytest.raises(ModelError, match=rf"{re.escape(str(path))}.*{mismatch}"):
        build_backbone("zf5", 0.125, weights=str(path))
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match=rf"{re.escape(str(path))}: not a loadable state dict"):
        build_backbone("zf5", 0.125, weights=str(path))
    with pytest.raises(ModelError, match="not found"):
        load_trunk_weights(nn.Conv2d(1, 1, 1), tmp_path / "absent.pt")


def test_imagenet_offline_is_one_line(tmp_path, monkeypatch):
    import urllib.error

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    expected = tmp_path / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    assert imagenet_weights_path("alexnet") == expected

    def offline(url, dst, hash_prefix=None, progress=True):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(ModelError) as info:
        build_backbone("alexnet", weights="imagenet")
    message = str(info.value)
    assert "\n" not in message and str(expected) in message and "--weights PATH" in message
    assert "download failed (" in message and "Temporary failure" in message and "https://" in message
    with pytest.raises(ModelError, match="no public ImageNet weights"):
        build_backbone("zf5", weights="imagenet")
    # a file in the cache is used, without any download
    expected.parent.mkdir(parents=True, exist_ok=True)  # made by the failed download
    torch.save(build_backbone("alexnet", seed=9).trunk.state_dict(), expected)
    assert build_backbone("alexnet", weights="imagenet").weights_id == file_hash(expected)


def test_bad_names_and_devices():
    with pytest.raises(ConfigError, match="resnet"):
        build_backbone("resnet")
    with pytest.raises(ConfigError, match="only zf5"):
        build_backbone("vgg16", width=0.5)
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")


def test_imagenet_weights_download_once_into_the_torch_cache(tmp_path, monkeypatch):
    """--weights imagenet fetches torchvision's file on first use (download faked: a tiny local
    state dict stands for it), checks the hash prefix of its name, then reads the cached file."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    source = tmp_path / "served.pth"
    torch.save({f"features.{k}": v for k, v in build_backbone("alexnet", seed=5).trunk.state_dict().items()},
               source)
    calls = []

    def fake_download(url, dst, hash_prefix=None, progress=True):
        calls.append((url, dst, hash_prefix))
        Path(dst).write_bytes(source.read_bytes())

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    first = build_backbone("alexnet", weights="imagenet")
    target = imagenet_weights_path("alexnet")
    assert calls == [("https://download.pytorch.org/models/alexnet-owt-7be5be79.pth", str(target), "7be5be79")]
    assert first.weights_id == file_hash(target)
    again = build_backbone("alexnet", weights="imagenet")
    assert len(calls) == 1 and again.weights_id == first.weights_id
    reference = build_backbone("alexnet", seed=5).trunk.state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in again.trunk.state_dict().items())
