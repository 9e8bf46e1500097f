"""The stride-8 feature source: ONNX Runtime equals torch, shapes follow the input size."""

from __future__ import annotations

import numpy as np
import pytest

from inference.stride8 import STRIDE8_TAPS, Stride8Features


def test_onnxruntime_matches_torch(tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    images = np.random.default_rng(0).integers(0, 256, (3, 224, 224, 3), dtype=np.uint8)
    fast = Stride8Features(runtime="onnxruntime", cache_dir=tmp_path)
    plain = Stride8Features(runtime="torch")
    assert fast.runtime == "onnxruntime" and plain.runtime == "torch"
    assert list(tmp_path.glob("*.onnx")), "the graph is exported into the given cache"
    a, b = fast(images), plain(images)
    assert [tuple(x.shape) for x in a] == [(3, 32, 28, 28), (3, 96, 14, 14)]
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x.numpy(), y.numpy(), atol=1e-4, rtol=1e-4)
    assert STRIDE8_TAPS == (6, 13)


def test_an_other_input_size_gets_its_own_graph_and_grid(tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    images = np.random.default_rng(1).integers(0, 256, (2, 256, 256, 3), dtype=np.uint8)
    fast = Stride8Features(runtime="onnxruntime", cache_dir=tmp_path, image_size=256)
    names = [p.name for p in tmp_path.glob("*.onnx")]
    assert len(names) == 1 and "256px" in names[0], names
    a, b = fast(images), Stride8Features(runtime="torch")(images)
    assert [tuple(x.shape) for x in a] == [(2, 32, 32, 32), (2, 96, 16, 16)]
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x.numpy(), y.numpy(), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="exported for 256 px images, got \\(224, 224\\)"):
        fast(np.zeros((1, 224, 224, 3), np.uint8))
    with pytest.raises(ValueError, match="multiple of 16"):
        Stride8Features(runtime="torch", image_size=250)


def test_unknown_runtime_is_refused() -> None:
    with pytest.raises(ValueError, match="runtime"):
        Stride8Features(runtime="tensorrt")


class _ServingEngine:
    """An engine that computes the stride-8 features itself (as TritonEngine does)."""

    def __init__(self) -> None:
        self.calls = 0

    def stride8(self, images: np.ndarray) -> list:
        self.calls += 1
        return []


def test_an_engine_that_serves_stride8_is_the_source() -> None:
    from inference.stride8 import Stride8Engine, stride8_source

    engine = _ServingEngine()
    assert isinstance(engine, Stride8Engine)
    assert not isinstance(object(), Stride8Engine)
    source = stride8_source(engine)
    source(np.zeros((1, 224, 224, 3), np.uint8))
    assert engine.calls == 1


def test_the_graph_reads_uint8_frames_and_refuses_other_input(tmp_path) -> None:
    """to_model_input runs inside the ONNX graph: it takes the frames as they are decoded."""
    pytest.importorskip("onnxruntime")
    fast = Stride8Features(runtime="onnxruntime", cache_dir=tmp_path)
    (graph_input,) = fast._session.get_inputs()
    assert (graph_input.name, graph_input.type) == ("images", "tensor(uint8)")
    with pytest.raises(ValueError, match="expected uint8"):
        fast(np.zeros((1, 224, 224, 3), np.float32))
    with pytest.raises(ValueError, match="exported for 224 px"):
        fast(np.zeros((1, 256, 256, 3), np.uint8))
