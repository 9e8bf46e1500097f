"""The LocalEngine's onnxruntime runtime against its torch runtime (same model, same record)."""

from __future__ import annotations

import numpy as np
import pytest

from inference.engines.local import LocalEngine
from inference.onboarding import build_record
from inference.scorer import detector_for, maps_and_scores


@pytest.fixture(scope="module")
def engines(untrained_checkpoint, tmp_path_factory, monkeypatch_module):
    monkeypatch_module.setenv("ADQC_ONNX_CACHE", str(tmp_path_factory.mktemp("onnx")))
    torch_engine = LocalEngine(untrained_checkpoint, runtime="torch")
    onnx_engine = LocalEngine(model=torch_engine.model, runtime="onnxruntime")
    return torch_engine, onnx_engine


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.mark.parametrize("detector", ["featurenorm", "patchcore"])
def test_onnxruntime_matches_torch_features_and_scores(engines, detector):
    torch_engine, onnx_engine = engines
    assert (torch_engine.runtime, onnx_engine.runtime) == ("torch", "onnxruntime")
    rng = np.random.default_rng(0)
    shots = rng.integers(0, 256, (3, 224, 224, 3), dtype=np.uint8)
    frames = rng.integers(0, 256, (4, 224, 224, 3), dtype=np.uint8)
    record = build_record(torch_engine, "widget", shots, detector=detector)
    a = torch_engine.features(frames, record)
    b = onnx_engine.features(frames, record)
    for x, y in zip(a, b, strict=True):
        assert x.shape == y.shape and y.dtype == np.float32
        np.testing.assert_allclose(y, x, rtol=1e-3, atol=1e-3)
    det = detector_for(record)
    _, sa = maps_and_scores(det, a, 224)
    _, sb = maps_and_scores(det, b, 224)
    np.testing.assert_allclose(sb, sa, rtol=1e-4)


def test_runtime_choice(engines, untrained_checkpoint):
    torch_engine, onnx_engine = engines
    assert LocalEngine(model=torch_engine.model).runtime == "onnxruntime"  # CPU default
    assert all(p.is_file() for p in onnx_engine._onnx.paths)  # exported once, cached
    with pytest.raises(ValueError, match="runtime must be"):
        LocalEngine(model=torch_engine.model, runtime="tensorrt")


def test_auto_runs_torch_when_onnxruntime_is_missing(engines, monkeypatch):
    """A worker image without onnxruntime still serves: "auto" falls back, an explicit choice
    fails loudly."""
    import sys

    torch_engine, _ = engines
    monkeypatch.setitem(sys.modules, "inference.engines.onnx_runtime", None)  # ImportError
    assert LocalEngine(model=torch_engine.model, runtime="auto").runtime == "torch"
    with pytest.raises(ImportError):
        LocalEngine(model=torch_engine.model, runtime="onnxruntime")


def test_int8_projector_option_is_close_and_off_by_default(engines):
    """``projector_int8`` (measured, not the default: docs/PERFORMANCE.md) writes a quantised
    copy next to the float32 projector and stays close to it."""
    import torch

    from inference.engines.onnx_runtime import OnnxFeatureRunner

    torch_engine, onnx_engine = engines
    assert "int8" not in onnx_engine._onnx.paths[1].name
    runner = OnnxFeatureRunner(torch_engine.model, cache_dir=onnx_engine._onnx.paths[1].parent,
                               projector_int8=True)  # fmt: skip
    assert runner.paths[1].name.endswith("-projector-int8.onnx")
    assert runner.paths[1].stat().st_size < onnx_engine._onnx.paths[1].stat().st_size
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.standard_normal((2, 3, 224, 224), dtype=np.float32))
    residuals = onnx_engine._onnx.raw(x)
    for a, b in zip(onnx_engine._onnx.project(residuals), runner.project(residuals), strict=True):
        assert a.shape == b.shape
        assert float(np.abs(a - b).max()) < 0.1 * max(1.0, float(np.abs(a).max()))
