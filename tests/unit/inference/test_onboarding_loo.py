"""Leave-one-out onboarding: the one-pool masked search and the PatchCore shared-bank
calibration against the per-image rebuilds they replace (UNTRAINED projector: numerics only)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pretrain.detectors import PatchCore, image_scores, leave_one_out_scores
from pretrain.residual import ReferencePool, leave_one_out_residuals, pool_residuals


def _raw(engine, k: int, seed: int = 0) -> list[torch.Tensor]:
    rng = np.random.default_rng(seed)
    shots = rng.integers(0, 256, (k, 224, 224, 3), dtype=np.uint8)
    with torch.inference_mode():
        return engine.model.raw(engine.model.preprocess(torch.from_numpy(shots)))


def _reference_loo(projector, raw):
    """The previous implementation: a (K-1)-image pool rebuilt per image, projector per image."""
    per_image = []
    with torch.inference_mode():
        for i in range(raw[0].shape[0]):
            others = ReferencePool.from_features([torch.cat([f[:i], f[i + 1 :]]) for f in raw])
            residual = pool_residuals([f[i : i + 1] for f in raw], others)
            per_image.append(projector(residual) if projector else residual)
    return [torch.cat(levels) for levels in zip(*per_image, strict=True)]


@pytest.mark.parametrize("batch", [2, 32])
def test_masked_leave_one_out_matches_per_image_pools(local_engine, batch):
    raw = _raw(local_engine, 5)
    residual = leave_one_out_residuals(raw, batch=batch)
    for a, b in zip(residual, _reference_loo(None, raw), strict=True):
        torch.testing.assert_close(a, b)  # same neighbours, same subtraction
    projector = local_engine.model.projector
    new = leave_one_out_residuals(raw, projector, batch=batch)
    for a, b in zip(new, _reference_loo(projector, raw), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def _features(k: int, grid: int = 4, dim: int = 8, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(k, dim, grid, grid, generator=g) for _ in range(3)]


def _refit_scores(config, features, size=32):
    scores = []
    for i in range(features[0].shape[0]):
        det = PatchCore(config)
        det.fit([torch.cat([f[:i], f[i + 1 :]]) for f in features])
        scores.append(float(image_scores(det.anomaly_maps([f[i : i + 1] for f in features], size))))
    return np.array(scores)


def test_patchcore_loo_below_the_coreset_threshold_is_the_exact_refit():
    feats = _features(5)
    config = PatchCore().config
    got = leave_one_out_scores(config, feats, 32).numpy()
    np.testing.assert_allclose(got, _refit_scores(config, feats), rtol=1e-6)


def test_patchcore_loo_above_the_threshold_drops_only_the_images_bank_rows():
    feats = _features(6)  # 6 images x 16 patches = 96 > threshold 40: one coreset
    fitted = PatchCore(coreset_threshold=40, coreset_ratio=0.5)
    fitted.fit(feats)
    assert fitted.selected is not None and len(fitted.memory) == 48
    got = leave_one_out_scores(fitted.config, feats, 32, fitted=fitted).numpy()
    again = leave_one_out_scores(fitted.config, feats, 32).numpy()  # fits its own bank
    np.testing.assert_allclose(again, got, rtol=1e-6)
    source = fitted.selected // 16
    for i in range(6):
        rest = PatchCore(fitted.config)
        rest.memory = fitted.memory[source != i]
        want = image_scores(rest.anomaly_maps([f[i : i + 1] for f in feats], 32))
        assert got[i] == pytest.approx(float(want), rel=1e-6)
        full = image_scores(fitted.anomaly_maps([f[i : i + 1] for f in feats], 32))
        assert got[i] >= float(full) - 1e-6  # removing rows never brings a neighbour closer
    # the approximation vs the exact (K coresets) refit: same order of magnitude here
    exact = _refit_scores(fitted.config, feats)
    assert np.all(np.isfinite(got)) and np.all(got > 0.5 * exact)
