"""FeatureModel: raw / pool / residual / projected features, inference mode, training mode."""

from __future__ import annotations

import pytest
import torch

from pretrain.backbones import load_backbone
from pretrain.model import FeatureModel
from pretrain.projector import FeatureProjector


@pytest.fixture(scope="module")
def backbone():
    return load_backbone("mobilenet_v2")


def make_model(backbone, num_tokens=32, **kw) -> FeatureModel:
    torch.manual_seed(0)
    return FeatureModel(backbone, FeatureProjector(backbone.spec.channels, num_tokens), **kw)


SIZE = 96  # smaller than the spec's 224 to keep the tests fast; the maps scale with it


def images(n, seed=0, size=SIZE):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=g)


def test_raw_pool_residual_projected(backbone):
    model = make_model(backbone, batch_size=2)
    refs, query = model.preprocess(images(3)), model.preprocess(images(3, seed=1))
    spec = model.spec
    raw = model.raw(query)
    grids = [-(-SIZE // s) for s in spec.strides]
    assert [tuple(r.shape) for r in raw] == [
        (3, c, g, g) for c, g in zip(spec.channels, grids, strict=True)
    ]
    assert all(r.is_inference() for r in raw)  # eval: everything under inference_mode
    pool = model.build_pool(refs)
    assert pool.sizes == tuple(3 * g * g for g in grids)
    assert pool.channels == spec.channels
    # The references' own residuals are zero (same batching, so bit-identical features);
    # a query's are not.
    assert all(torch.count_nonzero(r) == 0 for r in model.residual(refs, pool))
    res = model.residual(query, pool)
    assert all(torch.count_nonzero(r) > 0 for r in res)
    proj = model.projected(query, pool)
    assert [p.shape for p in proj] == [r.shape for r in res]
    # batch_size only changes how the backbone is batched, not the result.
    big = make_model(backbone, batch_size=32)
    for a, b in zip(big.raw(query), raw, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert model.model_id is None and model.checkpoint is None


def test_training_mode_only_the_projector_learns(backbone):
    model = make_model(backbone).train()
    assert model.training and model.projector.training
    assert not model.backbone.training
    x = model.preprocess(images(2))
    pool = model.build_pool(x[:1])
    out = model.projected(x, pool)
    assert out[0].requires_grad
    sum(o.square().mean() for o in out).backward()
    assert all(p.grad is not None for p in model.projector.parameters())
    assert all(p.grad is None for p in model.backbone.parameters())
    model.eval()
    assert not model.projected(x, pool)[0].requires_grad


def test_raw_model_and_errors(backbone):
    raw = FeatureModel(backbone)
    assert raw.model_id == "mobilenet_v2:raw"
    assert raw.device == torch.device("cpu")
    x = raw.preprocess(images(1))
    assert x.dtype == torch.float32 and x.shape == (1, 3, SIZE, SIZE)
    with pytest.raises(RuntimeError, match="no projector"):
        raw.projected(x, raw.build_pool(x))
    with pytest.raises(ValueError, match="widths"):
        FeatureModel(backbone, FeatureProjector([8, 8, 8], num_tokens=4))
