"""Leave-one-out onboarding: the one-pool masked search and the PatchCore bank reuse against the
per-shot rebuilds they replace (UNTRAINED projector: numerics only)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from inference.onboarding import _leave_one_out_features, _patchcore_loo_scores
from inference.scorer import maps_and_scores
from pretrain.evaluation.detectors import PatchCore
from pretrain.residual import ReferencePool, pool_residuals


def _raw(engine, k: int, seed: int = 0) -> list[torch.Tensor]:
    rng = np.random.default_rng(seed)
    shots = rng.integers(0, 256, (k, 224, 224, 3), dtype=np.uint8)
    with torch.inference_mode():
        return engine.model.raw(engine.model.preprocess(torch.from_numpy(shots)))


def _reference_loo(engine, raw):
    """The previous implementation: a (K-1)-shot pool rebuilt per shot, projector per shot."""
    per_shot = []
    with torch.inference_mode():
        for i in range(raw[0].shape[0]):
            others = ReferencePool.from_features([torch.cat([f[:i], f[i + 1 :]]) for f in raw])
            residual = pool_residuals([f[i : i + 1] for f in raw], others, engine.model.chunk)
            per_shot.append(engine.model.projector(residual))
    return [torch.cat(levels) for levels in zip(*per_shot, strict=True)]


def test_masked_leave_one_out_matches_per_shot_pools(local_engine):
    raw = _raw(local_engine, 5)
    new = _leave_one_out_features(local_engine, raw)
    old = _reference_loo(local_engine, raw)
    for a, b in zip(new, old, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def _loo_features(k: int, grid: int = 4, dim: int = 8, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(k, dim, grid, grid, generator=g) for _ in range(3)]


def test_patchcore_loo_is_exact_refit_below_the_coreset_threshold():
    loo = _loo_features(5)
    fitted = PatchCore()
    fitted.fit(loo)
    got = _patchcore_loo_scores(fitted, loo, 32)
    for i in range(5):
        rest = PatchCore()
        rest.fit([torch.cat([f[:i], f[i + 1 :]]) for f in loo])
        want = maps_and_scores(rest, [f[i : i + 1] for f in loo], 32)[1][0]
        assert got[i] == pytest.approx(want, rel=1e-6)


def test_patchcore_loo_above_threshold_drops_only_the_shots_coreset_rows():
    loo = _loo_features(6)  # 6 images x 16 patches = 96 > threshold 40: one coreset
    fitted = PatchCore(coreset_threshold=40, coreset_ratio=0.5)
    fitted.fit(loo)
    assert fitted.selected is not None and len(fitted.memory) == 48
    got = _patchcore_loo_scores(fitted, loo, 32)
    source = fitted.selected // 16
    for i in range(6):
        rest = PatchCore(coreset_threshold=40, coreset_ratio=0.5)
        rest.embed_dim, rest.target_dim = fitted.embed_dim, fitted.target_dim
        rest.memory = fitted.memory[source != i]
        want = maps_and_scores(rest, [f[i : i + 1] for f in loo], 32)[1][0]
        assert got[i] == pytest.approx(want, rel=1e-6)
        # leaving the shot out can only raise its score (its own rows were nearest or not)
        full = maps_and_scores(fitted, [f[i : i + 1] for f in loo], 32)[1][0]
        assert got[i] >= full - 1e-6
    assert np.all(np.isfinite(got))
