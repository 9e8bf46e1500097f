"""Paired bootstrap of metric differences on constructed maps."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation.significance import paired_bootstrap


def _case(seed=0, n=30, size=16):
    rng = np.random.default_rng(seed)
    labels = np.array([0] * (n // 2) + [1] * (n - n // 2))
    masks = np.zeros((n, size, size), bool)
    masks[labels == 1, 4:10, 4:10] = True
    noise = rng.normal(size=(n, size, size)).astype(np.float32)
    return labels, masks, noise


def _scored(maps):
    return {"maps": maps, "scores": maps.reshape(len(maps), -1).max(1)}


def test_identical_feature_sets_differ_by_exactly_zero():
    labels, masks, noise = _case()
    a = _scored(noise + masks * 0.5)
    out = paired_bootstrap(a, a, labels, masks, n_boot=50)
    for row in out.values():
        assert row == {"diff": 0.0, "low": 0.0, "high": 0.0, "p_below_zero": 0.0}


def test_a_clearly_better_map_gets_an_interval_above_zero():
    labels, masks, noise = _case()
    weak, strong = _scored(noise + masks * 0.3), _scored(noise + masks * 3.0)
    out = paired_bootstrap(weak, strong, labels, masks, n_boot=100)
    assert out["pixel_auroc"]["low"] > 0 and out["pixel_auroc"]["diff"] > 0.1
    assert out["pixel_auroc"]["p_below_zero"] == 0.0
    reverse = paired_bootstrap(strong, weak, labels, masks, n_boot=100)
    assert reverse["pixel_auroc"]["high"] < 0


def test_without_masks_only_image_metrics_and_both_classes_required():
    labels, masks, noise = _case()
    a = _scored(noise + masks)
    assert set(paired_bootstrap(a, a, labels, None, n_boot=10)) == {"image_auroc"}
    with pytest.raises(ValueError, match="normal and defective"):
        paired_bootstrap(a, a, np.ones_like(labels), masks, n_boot=10)


def test_aupro_on_request_and_unknown_metrics_refused():
    labels, masks, noise = _case()
    weak, strong = _scored(noise + masks * 0.3), _scored(noise + masks * 3.0)
    out = paired_bootstrap(weak, strong, labels, masks, n_boot=50, metrics=("image_auroc", "aupro"))
    assert set(out) == {"image_auroc", "aupro"}
    assert out["aupro"]["low"] > 0 and out["aupro"]["diff"] > 0.1
    with pytest.raises(ValueError, match="unknown bootstrap metrics"):
        paired_bootstrap(weak, strong, labels, masks, n_boot=5, metrics=("f1",))
