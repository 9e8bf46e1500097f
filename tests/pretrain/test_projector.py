"""The per-level projector: structure, parameter counts, key/value caching, TorchScript and ONNX."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pretrain.backbones import get_spec
from pretrain.projector import FeatureProjector, LevelProjector, default_heads, level_param_count

WIDTHS = [64, 96, 320]  # mobilenet_v2's levels
GRIDS = [4, 4, 2]  # small maps keep the export tests fast


def small_projector(seed=0, num_tokens=64) -> FeatureProjector:
    torch.manual_seed(seed)
    return FeatureProjector(WIDTHS, num_tokens=num_tokens).eval()


def levels(batch, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, c, s, s, generator=g) for c, s in zip(WIDTHS, GRIDS, strict=True)]


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_head_rule():
    assert [default_heads(c) for c in (32, 64, 96, 160, 320, 768, 1024)] == [
        4,
        8,
        12,
        16,
        16,
        16,
        16,
    ]
    assert default_heads(40) == 5 and default_heads(112) == 14 and default_heads(7) == 1
    assert LevelProjector(64, num_tokens=8, num_heads=2).num_heads == 2
    with pytest.raises(ValueError, match="divide"):
        LevelProjector(96, num_tokens=8, num_heads=7)


def test_structure_follows_the_method():
    p = LevelProjector(32, num_tokens=16)
    kinds = {type(m) for m in p.modules()}
    assert not kinds & {nn.LayerNorm, nn.Dropout, nn.BatchNorm1d}
    assert p.tokens.shape == (16, 32)
    assert p.fc1.out_features == 128 and p.fc2.in_features == 128
    assert p.se.fc1.out_features == 128 // 16 and p.se.fc2.out_features == 128
    torch.manual_seed(0)
    big = LevelProjector(64, num_tokens=4096)
    assert abs(big.tokens.mean().item()) < 0.02 and abs(big.tokens.std().item() - 1) < 0.02


def test_forward_matches_a_direct_transcription():
    """Y = X1 + MLP(X1), X1 = X - MHA(X, R', R') with nn.MultiheadAttention as the oracle."""
    torch.manual_seed(3)
    p = LevelProjector(32, num_tokens=20).eval()
    mha = nn.MultiheadAttention(32, p.num_heads, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([p.q_proj.weight, p.k_proj.weight, p.v_proj.weight]))
        mha.in_proj_bias.copy_(torch.cat([p.q_proj.bias, p.k_proj.bias, p.v_proj.bias]))
        mha.out_proj.load_state_dict(p.out_proj.state_dict())
    x = torch.randn(2, 10, 32)
    with torch.no_grad():
        r = p.token_proj(p.tokens).expand(2, -1, -1)
        x1 = x - mha(x, r, r, need_weights=False)[0]
        h = p.fc1(x1)
        s = h.mean(1)
        h = h * torch.sigmoid(p.se.fc2(torch.relu(p.se.fc1(s)))).unsqueeze(1)
        expect = x1 + p.fc2(torch.nn.functional.gelu(h))
        torch.testing.assert_close(p(x), expect, atol=1e-5, rtol=1e-5)


def test_parameter_counts():
    # DINOv2-L width by construction: 17.8 M per level, 71.4 M for 4 levels
    # (docs/METHOD.md section 4).
    dinov2_l = LevelProjector(1024)
    assert n_params(dinov2_l) == level_param_count(1024) == 17_840_384
    assert round(4 * n_params(dinov2_l) / 1e6, 1) == 71.4
    spec = get_spec("mobilenet_v2")
    proj = FeatureProjector(spec.channels)
    per_level = [n_params(p) for p in proj.projectors]
    assert per_level == [level_param_count(c) for c in spec.channels]
    assert n_params(proj) == sum(per_level)
    print(f"mobilenet_v2 projector parameters per level {per_level}, total {sum(per_level)}")


def test_keys_values_cached_at_inference_and_invalidated():
    proj = small_projector()
    xs = levels(2)
    with torch.inference_mode():
        cached = proj(xs)
        lp = proj.projectors[0]
        kv = lp._kv_cache
        assert kv is not None
        proj(xs)
        assert lp._kv_cache is kv  # reused, not recomputed
    with torch.no_grad():
        uncached = [
            lp2.__class__.forward(lp2, x.flatten(2).transpose(1, 2))
            for lp2, x in zip(proj.projectors, xs, strict=True)
        ]
    uncached_eager = [y.transpose(1, 2).reshape(x.shape) for y, x in zip(uncached, xs, strict=True)]
    with torch.enable_grad():
        fresh = proj(xs)  # grad enabled: never the cache
    for a, b, c in zip(cached, fresh, uncached_eager, strict=True):
        torch.testing.assert_close(a, b.detach())
        torch.testing.assert_close(a, c)
    # An optimiser step changes the parameters: the cache must follow.
    proj.train()
    opt = torch.optim.SGD(proj.parameters(), lr=0.5)
    sum(y.square().mean() for y in proj(xs)).backward()
    opt.step()
    proj.eval()
    with torch.no_grad():
        after = proj(xs)
    with torch.enable_grad():
        reference = proj(xs)
    assert not torch.allclose(after[0], cached[0])
    for a, b in zip(after, reference, strict=True):
        torch.testing.assert_close(a, b.detach())
    # load_state_dict (in-place copy) invalidates too.
    other = small_projector(seed=5)
    proj.load_state_dict(other.state_dict())
    with torch.no_grad():
        for a, b in zip(proj(xs), other(xs), strict=True):
            torch.testing.assert_close(a, b)


def test_training_gradients_reach_tokens():
    proj = small_projector().train()
    out = proj(levels(2))
    assert [o.shape for o in out] == [x.shape for x in levels(2)]
    sum(o.sum() for o in out).backward()
    assert all(p.grad is not None for p in proj.parameters())
    assert proj.projectors[0].tokens.grad.abs().sum() > 0


def test_torchscript_script_and_trace(tmp_path):
    proj = small_projector()
    xs, xs3 = levels(2), levels(3, seed=2)
    with torch.no_grad():
        expect, expect3 = proj(xs), proj(xs3)
        scripted = torch.jit.script(proj)
        scripted.save(str(tmp_path / "p.pt"))
        loaded = torch.jit.load(str(tmp_path / "p.pt"))
        traced = torch.jit.trace(proj, (xs,), strict=False)
        for module in (scripted, loaded, traced):
            for a, b in zip(module(xs3), expect3, strict=True):
                torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
        for a, b in zip(loaded(xs), expect, strict=True):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_onnx_export_dynamic_batch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    proj = small_projector()
    names_in = [f"level{i}" for i in range(3)]
    names_out = [f"projected{i}" for i in range(3)]
    path = tmp_path / "projector.onnx"
    with torch.no_grad():
        torch.onnx.export(
            proj,
            (levels(2),),
            str(path),
            input_names=names_in,
            output_names=names_out,
            dynamic_axes={n: {0: "batch"} for n in names_in + names_out},
            opset_version=17,
        )
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 4):
        xs = levels(batch, seed=batch)
        got = sess.run(names_out, {n: x.numpy() for n, x in zip(names_in, xs, strict=True)})
        with torch.no_grad():
            expect = proj(xs)
        for g, e in zip(got, expect, strict=True):
            assert g.shape == tuple(e.shape)
            assert np.abs(g - e.numpy()).max() < 1e-4


def test_fused_attention_matches_the_explicit_form():
    """The eager path (fused kernel) and the exported path (explicit softmax) agree, with grads."""
    torch.manual_seed(5)
    p = LevelProjector(96, num_tokens=300).train()
    x = torch.randn(3, 49, 96)
    k, v = p.compute_keys_values()
    q = p.q_proj(x).reshape(3, 49, p.num_heads, p.head_dim).transpose(1, 2)
    fused, explicit = p._fused_attention(q, k, v), p._explicit_attention(q, k, v)
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-5)
    g_fused = torch.autograd.grad(fused.square().sum(), p.tokens, retain_graph=True)[0]
    g_explicit = torch.autograd.grad(explicit.square().sum(), p.tokens)[0]
    torch.testing.assert_close(g_fused, g_explicit, atol=1e-4, rtol=1e-4)
