"""Temporary: the moved detectors (pretrain.detectors) score exactly as the old ones."""

from __future__ import annotations

import pytest
import torch

from evaluation import detectors as old
from pretrain import detectors as new


def _levels(n, seed=0, shapes=((8, 16, 16), (16, 8, 8), (32, 4, 4))):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, c, h, w, generator=g) for c, h, w in shapes]


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("featurenorm", {}),
        ("patchcore", {}),
        ("patchcore", {"coreset_threshold": 500, "coreset_ratio": 0.2}),
        ("patchcore", {"n_levels": 2, "target_dim": 12}),
        ("padim", {}),
        ("padim", {"n_channels": 20, "seed": 3}),
    ],
)
@pytest.mark.parametrize("k", [2, 5])
def test_old_and_new_detectors_give_identical_maps(method, options, k):
    train, test = _levels(k, seed=0), _levels(3, seed=1)
    a = old.make_detector(method, **options)
    b = new.make_detector(method, **options)
    a.fit(train)
    b.fit(train)
    for x, y in zip(a.score(test), b.score(test), strict=True):
        assert torch.equal(x, y)
    assert torch.equal(a.anomaly_maps(test, 64), b.anomaly_maps(test, 64))
    reloaded = new.load_detector(b.config, b.state_dict())
    assert torch.equal(reloaded.anomaly_maps(test, 64), a.anomaly_maps(test, 64))
    from_old_state = old.Detector.from_state(a.state())
    assert torch.equal(from_old_state.anomaly_maps(test, 64), reloaded.anomaly_maps(test, 64))
