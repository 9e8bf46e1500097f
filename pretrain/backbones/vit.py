"""ViT backbones of the paper (DINOv2 ViT-B/14 and ViT-L/14, OpenAI CLIP ViT-L/14) through timm.

Taps follow the method: 4 evenly spaced blocks (ViT-L: 6/12/18/24, ViT-B: 3/6/9/12, 1-based),
raw block outputs (no final norm), CLS/register tokens dropped, patch tokens reshaped to C x h x w.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from .base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Backbone,
    BackboneSpec,
    host_reachable,
    resolve_source,
)

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# name -> (timm model name with pretrained tag, depth, width)
VIT_MODELS = {
    "dinov2_vitb14": ("vit_base_patch14_dinov2.lvd142m", 12, 768),
    "dinov2_vitl14": ("vit_large_patch14_dinov2.lvd142m", 24, 1024),
    "clip_vitl14": ("vit_large_patch14_clip_224.openai", 24, 1024),
}


def _taps(depth: int) -> tuple[int, ...]:
    """0-based indices of 4 evenly spaced blocks ending at the last one."""
    return tuple(depth * k // 4 - 1 for k in (1, 2, 3, 4))


def _spec(name: str) -> BackboneSpec:
    timm_name, depth, width = VIT_MODELS[name]
    clip = name.startswith("clip")
    taps = _taps(depth)
    return BackboneSpec(
        name=name,
        levels=tuple(f"blocks.{i}" for i in taps),
        channels=(width,) * 4,
        strides=(14,) * 4,
        image_size=224,
        mean=OPENAI_CLIP_MEAN if clip else IMAGENET_MEAN,
        std=OPENAI_CLIP_STD if clip else IMAGENET_STD,
        weights=f"timm {timm_name} (weights=PATH: timm or original checkpoint; or the HF hub)",
    )


VIT_SPECS = {name: _spec(name) for name in VIT_MODELS}


class ViTBackbone(Backbone):
    """Patch tokens of the tapped blocks of a timm VisionTransformer, as [B, C, h, w] maps."""

    def __init__(self, spec: BackboneSpec, vit: nn.Module, weights_loaded: bool):
        super().__init__(spec, weights_loaded)
        self.indices = [int(level.split(".")[1]) for level in spec.levels]
        vit.prune_intermediate_layers(self.indices, prune_norm=True, prune_head=True)
        self.vit = vit
        self.freeze()

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.vit.forward_intermediates(
            x, indices=self.indices, norm=False, output_fmt="NCHW", intermediates_only=True
        )


def _hub_cached(timm_name: str) -> Path | None:
    """A copy of the timm weights in the local HF cache, or None (never touches the network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover
        return None
    for filename in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
        found = try_to_load_from_cache(f"timm/{timm_name}", filename)
        if isinstance(found, str):
            return Path(found)
    return None


def _random_vit(timm_name: str, kwargs: dict, seed: int = 0) -> nn.Module:
    """Random weights, cheaply: built on the meta device, then N(0, 0.02) / ones / zeros
    (timm's truncated-normal init of ViT-L costs seconds; these weights only serve shape tests)."""
    import timm

    with torch.device("meta"):
        vit = timm.create_model(timm_name, pretrained=False, **kwargs)
    if any(True for _ in vit.buffers()):  # pragma: no cover - timm ViTs have none
        return timm.create_model(timm_name, pretrained=False, **kwargs)
    vit = vit.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in vit.named_parameters():
            if p.ndim >= 2 or name.endswith(("pos_embed", "cls_token", "reg_token")):
                p.normal_(0.0, 0.02, generator=gen)
            elif name.endswith(("weight", "gamma")):
                p.fill_(1.0)
            else:
                p.zero_()
    return vit


def build_vit(name: str, weights: Path | None, allow_random: bool) -> Backbone:
    import timm

    spec = VIT_SPECS[name]
    timm_name = VIT_MODELS[name][0]
    kwargs = {"num_classes": 0, "img_size": spec.image_size}
    if weights is None and _hub_cached(timm_name) is None and host_reachable("huggingface.co"):
        vit = timm.create_model(timm_name, pretrained=True, **kwargs)
        return ViTBackbone(spec, vit, True)
    path = resolve_source(
        name,
        weights,
        lambda: _hub_cached(timm_name),
        how_to=(
            f"pass weights=PATH to a checkpoint of {timm_name} (timm/HF .safetensors or the "
            "original release .pth), or run where huggingface.co is reachable"
        ),
        allow_random=allow_random,
    )
    if path is None:
        vit = _random_vit(timm_name, kwargs)
    else:
        # timm's checkpoint filter converts original DINOv2/OpenAI-CLIP layouts and resamples the
        # position embedding to the 16x16 grid of a 224 input; loading is strict.
        vit = timm.create_model(
            timm_name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs
        )
    return ViTBackbone(spec, vit, path is not None)


def vit_builder(name: str):
    def build(weights: Path | None, allow_random: bool) -> Backbone:
        return build_vit(name, weights, allow_random)

    return build


__all__ = ["VIT_SPECS", "ViTBackbone", "build_vit", "vit_builder"]
