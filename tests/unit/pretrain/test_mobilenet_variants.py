"""MobileNetV2 tapped at other stage ends (issue 11 level candidates)."""

from __future__ import annotations

import pytest
import torch

from pretrain.backbones.mobilenet_variants import mobilenet_v2_spec, tapped_mobilenet_v2


def test_spec_widths_and_strides() -> None:
    spec = mobilenet_v2_spec("x", (6, 13))
    assert spec.levels == ("features.6", "features.13")
    assert spec.channels == (32, 96) and spec.strides == (8, 16)
    with pytest.raises(ValueError, match="increasing"):
        mobilenet_v2_spec("x", (13, 6))
    with pytest.raises(ValueError, match="stage ends"):
        mobilenet_v2_spec("x", (5,))


def test_tapped_backbone_shapes_match_the_default_levels() -> None:
    """Taps 10/13/17 give exactly the default backbone's features (same weights, same cut)."""
    from pretrain.backbones import load_backbone

    try:
        ref = load_backbone("mobilenet_v2")
    except FileNotFoundError:
        pytest.skip("MobileNetV2 weights not installed (make setup)")
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = tapped_mobilenet_v2((10, 13, 17))(x)
        b = ref(x)
        s8 = tapped_mobilenet_v2((6, 13))(x)
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert [tuple(f.shape[1:]) for f in s8] == [(32, 8, 8), (96, 4, 4)]
    assert torch.equal(s8[1], b[1])  # features.13 is the same tensor whatever else is tapped
