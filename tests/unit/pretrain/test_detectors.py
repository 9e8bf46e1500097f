"""Detectors and post-processing on plain tensors (no model, no data)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.covariance import ledoit_wolf as sk_ledoit_wolf

import pretrain.detectors as D
from pretrain.detectors import components as P


def _levels(n, seed=0, shapes=((8, 16, 16), (16, 8, 8), (32, 4, 4))):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, c, h, w, generator=g) for c, h, w in shapes]


def _with_defect(levels, value=6.0):
    """Copy of the levels with a bright square in the top-left quarter of image 0."""
    out = [f.clone() for f in levels]
    for f in out:
        h, w = f.shape[-2:]
        f[0, :, : max(1, h // 4), : max(1, w // 4)] += value
    return out


# ------------------------------------------------------------------------- post-processing


def test_gaussian_blur_matches_scipy_and_keeps_constants():
    x = torch.rand(2, 40, 48, dtype=torch.float64)
    ours = P.gaussian_blur(x, 4.0).numpy()
    ref = np.stack([ndimage.gaussian_filter(a, 4.0, mode="mirror", truncate=4.0) for a in x])
    assert np.allclose(ours, ref, atol=1e-10)
    c = torch.full((1, 20, 20), 3.0)
    assert torch.allclose(P.gaussian_blur(c, 4.0), c)  # tiny map: replicate padding path
    assert torch.equal(P.gaussian_blur(x, 0.0), x)
    with pytest.raises(ValueError):
        P.gaussian_blur(torch.zeros(4, 4))


def test_anomaly_map_upsamples_means_levels_and_scores_max():
    a = torch.zeros(2, 4, 4)
    b = torch.ones(2, 8, 8)
    m = P.anomaly_map([a, b], 32, sigma=0.0)
    assert m.shape == (2, 32, 32)
    assert torch.allclose(m, torch.full_like(m, 0.5))
    spike = torch.zeros(1, 32, 32)
    spike[0, 10, 20] = 1.0
    sm = P.anomaly_map([spike], (32, 32))
    assert sm.shape == (1, 32, 32)
    assert sm[0].argmax().item() == 10 * 32 + 20  # smoothing keeps the peak in place
    assert P.image_scores(sm).item() == pytest.approx(sm.max().item())
    assert torch.equal(P.anomaly_map([spike], 32), P.anomaly_map([spike], 32))  # deterministic
    with pytest.raises(ValueError):
        P.anomaly_map([], 32)


@pytest.mark.parametrize(
    ("grids", "size"),
    [([(28, 28), (14, 14)], 224), ([(32, 32)], 224), ([(7, 5)], (224, 160)), ([(4, 4)], 12)],
)
def test_anomaly_map_is_upsampling_then_blur_as_matrix_products(grids, size):
    """The operator form equals the plain pipeline (bilinear upsampling of every level, mean,
    Gaussian with reflect padding, or replicate for maps smaller than its radius)."""
    g = torch.Generator().manual_seed(5)
    levels = [torch.rand(3, h, w, generator=g) * 4 for h, w in grids]
    plain = P.gaussian_blur(sum(P.upsample(s, size) for s in levels) / len(levels), 4.0)
    torch.testing.assert_close(P.anomaly_map(levels, size), plain, rtol=0, atol=2e-5)


# ------------------------------------------------------------------------------ FeatureNorm


def test_featurenorm_formula_and_refusal_on_raw():
    f = _levels(2)
    det = D.FeatureNorm()
    det.fit(f)
    maps = det.score(f)
    expected = torch.sqrt(f[1].norm(dim=1) + 1) - 1
    assert torch.allclose(maps[1], expected)
    assert det.anomaly_maps(f, 64).shape == (2, 64, 64)
    with pytest.raises(D.UnsupportedCombinationError, match="raw"):
        D.check_supported("featurenorm", "raw")
    D.check_supported("featurenorm", "adpretrain")
    D.check_supported("patchcore", "raw")
    with pytest.raises(ValueError):
        D.check_supported("knn", "raw")
    assert isinstance(D.load_detector(det.config, det.state_dict()), D.FeatureNorm)
    assert det.state_dict() == {} and det.fitted


# -------------------------------------------------------------------------------- PatchCore


def test_nearest_distances_matches_cdist_in_chunks():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(333, 24, generator=g)
    b = torch.randn(97, 24, generator=g)
    ref = torch.cdist(q.double(), b.double()).min(dim=1).values.float()
    out = P.nearest_distances(q, b, max_chunk_elems=97 * 10)  # 34 chunks, last one partial
    assert torch.allclose(out, ref, atol=1e-4)
    assert P.nearest_distances(b[:5], b).abs().max() < 1e-2  # a bank row is its own neighbour


def test_nearest_distances_runtimes_agree():
    """ONNX Runtime's product (the CPU default where installed) and torch's give the same
    distances; a runtime that cannot run says so."""
    pytest.importorskip("onnxruntime")
    g = torch.Generator().manual_seed(4)
    q, b = torch.randn(700, 128, generator=g).abs(), torch.randn(900, 128, generator=g).abs()
    ref = torch.cdist(q.double(), b.double()).min(dim=1).values.float()
    on_ort = P.nearest_distances(q, b, max_chunk_elems=900 * 64, runtime="onnxruntime")
    on_torch = P.nearest_distances(q, b, max_chunk_elems=900 * 64, runtime="torch")
    torch.testing.assert_close(on_ort, ref, rtol=0, atol=1e-4)
    torch.testing.assert_close(on_torch, ref, rtol=0, atol=1e-4)
    torch.testing.assert_close(P.nearest_distances(q, b), on_ort)  # auto picks onnxruntime
    with pytest.raises(RuntimeError, match="float32"):
        P.nearest_distances(q, b, search_dtype=torch.bfloat16, runtime="onnxruntime")
    with pytest.raises(ValueError, match="runtime"):
        P.nearest_distances(q, b, runtime="numpy")


def test_greedy_coreset_matches_naive_k_center():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(400, 16, generator=g)
    sel = P.greedy_coreset(x, 25, project_dim=0, seed=3)
    # naive reference: same start, recompute all distances each step
    start = int(torch.randint(400, (1,), generator=torch.Generator().manual_seed(3)).item())
    chosen = [start]
    for _ in range(24):
        d = torch.cdist(x.double(), x[chosen].double()).min(dim=1).values
        chosen.append(int(d.argmax()))
    assert sel.tolist() == chosen
    assert len(set(sel.tolist())) == 25
    assert P.greedy_coreset(x, 1000).tolist() == list(range(400))


def test_blocked_coreset_keeps_the_ratio_of_each_block_and_equals_greedy_on_one_block():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(1000, 32, generator=g)
    one = P.blocked_coreset(x, 0.1, 1000, project_dim=0, seed=3)
    assert one.tolist() == P.greedy_coreset(x, 100, project_dim=0, seed=3).tolist()
    idx = P.blocked_coreset(x, 0.1, 300, project_dim=16, seed=3)
    counts = torch.bincount(idx // 300, minlength=4).tolist()
    assert counts == [30, 30, 30, 10]  # ceil(0.1 x rows) of each block, the last one partial
    assert len(set(idx.tolist())) == len(idx) and int(idx.max()) < 1000
    # within a block the picks are that block's greedy k-center (same projection, same seed)
    blocked = P.blocked_coreset(x, 0.1, 300, project_dim=0, seed=3)[:30]
    assert blocked.tolist() == P.greedy_coreset(x[:300], 30, project_dim=0, seed=3).tolist()


def test_patchcore_coreset_block_rounds_to_whole_images():
    feats = [torch.randn(30, 8, 4, 4)]  # 30 images x 16 patches = 480 > threshold
    det = D.make_detector("patchcore", n_levels=1, coreset_threshold=100, coreset_block=40)
    det.fit(feats)
    # blocks of 48 rows (3 images): 10 blocks, ceil(0.1 x 48) = 5 picks each
    assert det.memory.shape[0] == 50
    assert torch.bincount(det.selected // 48).tolist() == [5] * 10


def test_patchcore_finds_defect_and_round_trips_state():
    train = _levels(4, seed=0)
    test = _with_defect(_levels(2, seed=1))
    det = D.PatchCore()
    det.fit(train)
    assert det.memory.shape == (4 * 16 * 16, 32)  # few-shot: every patch, no coreset
    (m,) = det.score(test)
    assert m.shape == (2, 16, 16)
    assert m[0, :3, :3].mean() > 2 * m[1].mean()
    maps = det.anomaly_maps(test, 64)
    assert torch.equal(D.load_detector(det.config, det.state_dict()).anomaly_maps(test, 64), maps)
    assert int(maps[0].flatten().argmax()) // 64 < 20  # peak in the defective top rows


def test_patchcore_coreset_when_bank_is_large():
    train = _levels(6, seed=0)
    det = D.PatchCore(coreset_threshold=1000, coreset_ratio=0.1)
    det.fit(train)
    assert int(det.n_patches_seen) == 6 * 256
    assert det.memory.shape[0] == int(np.ceil(0.1 * 6 * 256))
    # Every fitted patch is close to the coreset: its distance is bounded by the coverage
    # radius, far below the distance of an injected defect.
    (m_train,) = det.score(train)
    (m_def,) = det.score(_with_defect(train, 20.0))
    assert m_def[0, :3, :3].min() > m_train.max()


# ------------------------------------------------------------------------------------ PaDiM


@pytest.mark.parametrize("n", [2, 12])
def test_ledoit_wolf_matches_sklearn(n):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3, n, 7)) @ rng.normal(size=(7, 7))
    mean, cov, shrink = P.ledoit_wolf(torch.from_numpy(x))
    for p in range(3):
        sk_cov, sk_shrink = sk_ledoit_wolf(x[p])
        assert np.allclose(cov[p].numpy(), sk_cov, atol=1e-10)
        assert shrink[p].item() == pytest.approx(sk_shrink, abs=1e-10)
        assert np.allclose(mean[p].numpy(), x[p].mean(axis=0))


@pytest.mark.parametrize("k", [2, 8])
def test_padim_few_shot_finds_defect_and_round_trips_state(k):
    train = _levels(k, seed=0)
    test = _with_defect(_levels(2, seed=1))
    det = D.PaDiM(n_channels=20)
    det.fit(train)
    assert det.channel_idx.numel() == 20
    (m,) = det.score(test)
    assert m.shape == (2, 16, 16)
    assert torch.isfinite(m).all()
    assert m[0, :3, :3].mean() > 1.5 * m[1].mean()
    state = det.state_dict()
    assert state["precision"].shape == (256, 20, 20)
    again = D.load_detector(det.config, {k: v.numpy() for k, v in state.items()})
    assert torch.equal(again.anomaly_maps(test, 32), det.anomaly_maps(test, 32))


def test_unfitted_detectors_raise():
    with pytest.raises(D.NotFittedError, match="before fit"):
        D.PatchCore().score(_levels(1))
    with pytest.raises(D.NotFittedError):
        D.PaDiM().score(_levels(1))
    with pytest.raises(ValueError, match="unknown method"):
        D.make_detector("nope")


# --------------------------------------------------------------- modules, configs, state dicts


@pytest.mark.parametrize("method", ["featurenorm", "patchcore", "padim"])
def test_state_dict_round_trip_through_npy_bytes_scores_identically(method):
    import io

    train, test = _levels(3, seed=0), _with_defect(_levels(2, seed=1))
    det = D.make_detector(method)
    det.fit(train)
    assert isinstance(det, torch.nn.Module)
    assert list(det.state_dict()) == [name for name, _ in det.named_buffers()]  # all in buffers
    assert not list(det.parameters())
    stored = {}
    for key, value in det.state_dict().items():  # what a product record does with the state
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(value.numpy()), allow_pickle=False)
        stored[key] = np.load(io.BytesIO(buffer.getvalue()), allow_pickle=False)
        stored[key].flags.writeable = False
    config = D.parse_config(det.config.model_dump(mode="json"))
    assert config == det.config
    again = D.load_detector(config, stored)
    assert torch.equal(again.anomaly_maps(test, 48), det.anomaly_maps(test, 48))
    assert torch.equal(again(test)[0], det.score(test)[0])


def test_configs_are_typed_validated_and_resolved_by_fit():
    det = D.make_detector("patchcore", n_levels=2)
    assert det.config == D.PatchCoreConfig(n_levels=2) and det.config.embed_dim is None
    det.fit(_levels(2))
    assert det.config.embed_dim == 32 and det.config.target_dim == 32  # the widest level
    assert D.detector_config("padim", n_channels=7) == D.PaDiMConfig(n_channels=7)
    with pytest.raises(ValueError, match="n_channels"):
        D.detector_config("padim", n_channels=0)
    with pytest.raises(ValueError, match="extra|not permitted"):
        D.detector_config("featurenorm", k=3)
    with pytest.raises(TypeError, match="PaDiMConfig"):
        D.PaDiM(D.PatchCoreConfig())


def test_load_detector_refuses_wrong_state():
    det = D.make_detector("patchcore")
    det.fit(_levels(2))
    state = dict(det.state_dict())
    with pytest.raises(RuntimeError, match="memory"):
        D.load_detector(det.config, {"n_patches_seen": state["n_patches_seen"]})
    with pytest.raises(RuntimeError, match="bogus"):
        D.load_detector(det.config, {**state, "bogus": torch.zeros(1)})
    narrow = D.load_detector(det.config.model_copy(update={"target_dim": 8}), state)
    with pytest.raises(ValueError, match="memory width"):
        narrow.score(_levels(1))


@pytest.mark.parametrize("method", ["featurenorm", "patchcore", "padim"])
def test_leave_one_out_scores_fit_on_the_others(method):
    features = _with_defect(_levels(4, seed=2), value=8.0)
    config = D.detector_config(method)
    scores = D.leave_one_out_scores(config, features, 32)
    assert scores.shape == (4,)
    for i in range(4):
        det = D.make_detector(config)
        others = [torch.cat([f[:i], f[i + 1 :]]) for f in features]
        det.fit(others)
        expect = P.image_scores(det.anomaly_maps([f[i : i + 1] for f in features], 32))[0]
        assert scores[i].item() == pytest.approx(expect.item(), rel=1e-6)
    assert int(scores.argmax()) == 0  # the image with the defect stands out
    with pytest.raises(ValueError, match="at least 2"):
        D.leave_one_out_scores(config, [f[:1] for f in features], 32)


def test_leave_one_out_residuals_match_the_pool_of_the_others():
    from pretrain.residual import ReferencePool, leave_one_out_residuals, pool_residuals

    levels = _levels(3, seed=4, shapes=((8, 6, 6), (16, 3, 3)))
    loo = leave_one_out_residuals(levels)
    assert [f.shape for f in loo] == [f.shape for f in levels]
    others = ReferencePool.from_features([f[[0, 2]] for f in levels])
    expect = pool_residuals([f[1:2] for f in levels], others)
    for got, want in zip(loo, expect, strict=True):
        assert torch.equal(got[1:2], want)
    assert all(f.abs().sum() > 0 for f in loo)  # nobody matched itself
    doubled = leave_one_out_residuals(levels, projector=lambda r: [2 * f for f in r])
    assert all(torch.equal(d, 2 * f) for d, f in zip(doubled, loo, strict=True))
    with pytest.raises(ValueError, match="at least 2"):
        leave_one_out_residuals([f[:1] for f in levels])


def test_nearest_distances_low_precision_products_stay_close():
    from pretrain.detectors.components import nearest_distances

    g = torch.Generator().manual_seed(0)
    q, bank = torch.randn(200, 64, generator=g), torch.randn(500, 64, generator=g)
    exact = nearest_distances(q, bank)
    low = nearest_distances(q, bank, search_dtype=torch.bfloat16)
    assert low.dtype == torch.float32 and low.shape == exact.shape
    assert float(((low - exact).abs() / exact).max()) < 0.05
    torch.testing.assert_close(nearest_distances(q, bank, search_dtype=torch.float32), exact)
