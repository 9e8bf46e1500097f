"""Reference pools and cosine 1-NN residuals, checked against a brute-force implementation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pretrain.residual import ReferencePool, nearest_indices, nearest_residuals, pool_residuals


def brute_force(features: torch.Tensor, pool: torch.Tensor):
    """Per query patch, a plain loop over every pool patch in float64: (index, residual)."""
    b, c, h, w = features.shape
    q = features.permute(0, 2, 3, 1).reshape(-1, c).double()
    p = pool.double()
    idx = []
    for row in q:
        cos = (p @ row) / (p.norm(dim=1) * row.norm()).clamp_min(1e-12)
        idx.append(int(torch.argmax(cos)))
    idx = torch.tensor(idx)
    res = (q - p[idx]).float().reshape(b, h, w, c).permute(0, 3, 1, 2)
    return idx, res


@pytest.mark.parametrize("chunk", [1, 7, 64, 4096])
def test_chunked_matches_brute_force(chunk):
    g = torch.Generator().manual_seed(chunk)
    features = torch.randn(2, 16, 5, 6, generator=g)
    # Un-normalised pool with very different row norms: matching is by angle, residual by value.
    pool = torch.randn(300, 16, generator=g) * torch.rand(300, 1, generator=g).mul(10).add(0.1)
    idx, expect = brute_force(features, pool)
    flat = features.permute(0, 2, 3, 1).reshape(-1, 16)
    _, got_idx = nearest_indices(flat, F.normalize(pool, dim=1), chunk=chunk)
    assert torch.equal(got_idx, idx)
    res = nearest_residuals(features, pool, chunk=chunk)
    assert res.shape == features.shape
    torch.testing.assert_close(res, expect, atol=1e-5, rtol=1e-5)


def test_query_equal_to_a_pool_patch_has_zero_residual():
    g = torch.Generator().manual_seed(1)
    refs = torch.randn(3, 8, 4, 4, generator=g)  # K=3 reference maps
    pool = ReferencePool.from_features([refs])
    assert pool.sizes == (48,) and pool.channels == (8,)
    torch.testing.assert_close(pool.normed[0].norm(dim=1), torch.ones(48))
    # A query built from patches of different reference images at other positions (global match).
    query = torch.stack([refs[2, :, 3, 1], refs[0, :, 0, 2], refs[1, :, 2, 2], refs[2, :, 0, 0]])
    query = query.T.reshape(1, 8, 2, 2)
    res = pool_residuals([query], pool)[0]
    assert res.shape == (1, 8, 2, 2)
    assert torch.count_nonzero(res) == 0
    # And the references themselves are all zero residual.
    assert torch.count_nonzero(pool_residuals([refs], pool)[0]) == 0


def test_residual_uses_unnormalised_neighbour():
    pool = torch.tensor([[10.0, 0.0], [0.0, 1.0]])
    f = torch.tensor([1.0, 0.1]).reshape(1, 2, 1, 1)  # closest in angle to [10, 0]
    res = nearest_residuals(f, pool)
    torch.testing.assert_close(res.flatten(), torch.tensor([-9.0, 0.1]))


def test_ties_go_to_the_first_pool_patch_across_chunks():
    pool = torch.tensor([[1.0, 0.0]] * 5 + [[0.0, 1.0]])
    flat = torch.tensor([[2.0, 0.0]])
    for chunk in (1, 2, 4096):
        _, idx = nearest_indices(flat, F.normalize(pool, dim=1), chunk=chunk)
        assert idx.item() == 0


def test_pool_helpers_and_errors():
    pool = ReferencePool([torch.randn(10, 4), torch.randn(5, 6)])
    assert pool.to("cpu") is pool
    assert [a.shape for a in pool.numpy()] == [(10, 4), (5, 6)]
    with pytest.raises(ValueError, match="levels"):
        pool_residuals([torch.randn(1, 4, 2, 2)], pool)
    with pytest.raises(ValueError, match="channels"):
        nearest_residuals(torch.randn(1, 5, 2, 2), pool.levels[0])
    with pytest.raises(ValueError):
        ReferencePool([torch.randn(3, 4, 5)])
    with pytest.raises(ValueError, match="empty"):
        nearest_residuals(torch.randn(1, 4, 2, 2), torch.zeros(0, 4))


def test_low_precision_search_picks_a_near_best_neighbour():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 32, 6, 6, generator=g)
    pool = torch.randn(300, 32, generator=g)
    pn = F.normalize(pool, dim=1)
    flat = feats.permute(0, 2, 3, 1).reshape(-1, 32)
    best32, idx32 = nearest_indices(flat, pn, chunk=128)
    _, idx16 = nearest_indices(flat, pn, chunk=128, search_dtype=torch.bfloat16)
    chosen = (F.normalize(flat, dim=1) * pn[idx16]).sum(dim=1)
    assert torch.all(chosen >= best32 - 2e-2)  # bf16: within its rounding of the best cosine
    assert (idx16 == idx32).float().mean() > 0.8
    res = nearest_residuals(feats, pool, chunk=128, search_dtype=torch.bfloat16)
    assert res.dtype == torch.float32
    want = (flat - pool[idx16]).reshape(2, 6, 6, 32).permute(0, 3, 1, 2)
    torch.testing.assert_close(res, want)
    # the default (no search_dtype) is unchanged
    torch.testing.assert_close(
        nearest_residuals(feats, pool, chunk=128),
        (flat - pool[idx32]).reshape(2, 6, 6, 32).permute(0, 3, 1, 2),
    )


def test_pool_caches_its_low_precision_copy():
    g = torch.Generator().manual_seed(1)
    pool = ReferencePool([torch.randn(50, 8, generator=g)])
    first = pool.normed_as(torch.bfloat16)
    assert first[0].dtype == torch.bfloat16 and pool.normed_as(torch.bfloat16) is first
    assert pool.normed_as(None) is pool.normed
    out = pool_residuals([torch.randn(1, 8, 3, 3, generator=g)], pool, search_dtype=torch.bfloat16)
    assert out[0].shape == (1, 8, 3, 3)
