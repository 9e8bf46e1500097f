"""Triton model repository builder and the python-backend model code, without a server.

The served path is checked end to end against a real tritonserver in
tests/integration/inference/engines/test_triton_served.py;
here: the files written, the configs (parsed
back with Triton's own protobuf schema), and FeaturesService (the code behind adqc_features)
in process against an in-memory store.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tritonclient.grpc import model_config_pb2 as mc
from typer.testing import CliRunner

from benchmarks.triton import synthetic_record
from deploy import triton_repo as tr
from inference.records import ModelMismatchError, ProductRecord
from inference.store import ProductNotFoundError, open_store
from inference.triton.features import (
    FeaturesService,
    InvalidRequestError,
    PoolCache,
    ReferenceMismatchError,
    decode_keys,
    error_message,
)
from pretrain.checkpoint import load_feature_model, model_id, save_untrained
from pretrain.preprocess import to_model_input

BACKBONE = "mobilenet_v2"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "untrained.pt"
    save_untrained(path, BACKBONE, num_tokens=64)  # a small projector: fast tests
    return path


@pytest.fixture(scope="module")
def repo(tmp_path_factory, checkpoint) -> tuple[Path, tr.RepoSpec]:
    out = tmp_path_factory.mktemp("repo") / "model_repository"
    spec = tr.build_model_repository(
        out, checkpoint=checkpoint, redis_url="redis://example:6379/2", max_batch=8, kind="cpu"
    )
    return out, spec


@pytest.fixture(scope="module")
def model(checkpoint):
    return load_feature_model(backbone=BACKBONE, checkpoint=checkpoint)


def _record(model, mid: str, product: str, seed: int, shots: int = 2) -> ProductRecord:
    return synthetic_record(model, mid, shots=shots, seed=seed, product=product)


# ------------------------------------------------------------------------ repository layout


def test_layout_and_self_contained_checkpoint(repo, checkpoint):
    out, spec = repo
    assert (out / "adqc" / "config.pbtxt").is_file()
    assert (out / "adqc" / "1").is_dir()
    assert (out / "adqc_features" / "1" / "model.py").is_file()
    copied = out / "adqc_features" / "1" / "checkpoint.pt"
    assert copied.read_bytes() == checkpoint.read_bytes()
    assert not (out / "adqc_preprocess").exists()  # folded into adqc_features by default
    assert spec.model_id == model_id(checkpoint) == model_id(copied)
    manifest = json.loads((out / "adqc_repo.json").read_text())
    assert manifest["model_id"] == spec.model_id
    assert manifest["models"] == ["adqc", "adqc_features", "adqc_stride8"]
    # served at the default preset's 256 px (docs/BACKBONES.md, "The default's input size")
    assert manifest["stride8_shapes"] == [[32, 32, 32], [96, 16, 16]]


def _shim(path: Path):
    shim = importlib.util.spec_from_file_location("shim", path)
    module = importlib.util.module_from_spec(shim)
    shim.loader.exec_module(module)
    return module


def test_model_py_shim_exposes_the_python_model(repo):
    out, _ = repo
    from inference.triton import features, stride8

    assert _shim(out / "adqc_features/1/model.py").TritonPythonModel is features.TritonPythonModel
    assert _shim(out / "adqc_stride8/1/model.py").TritonPythonModel is stride8.TritonPythonModel
    assert sorted(p.name for p in (out / "adqc_stride8" / "1").iterdir()) == ["model.py"]


def test_stride8_config(repo):
    """adqc_stride8: stateless, uint8 images in, the raw stride-8 maps out, batched like
    adqc_features; at the default preset's input size (256 px), not the projector's 224."""
    out, spec = repo
    config = tr.read_config(out / "adqc_stride8" / "config.pbtxt")
    assert config.name == "adqc_stride8" and config.backend == "python"
    assert config.max_batch_size == 8
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [
        ("IMAGES", mc.TYPE_UINT8, [256, 256, 3])
    ]
    assert [(t.name, t.data_type, list(t.dims)) for t in config.output] == [
        ("STRIDE8_0", mc.TYPE_FP32, [32, 32, 32]),
        ("STRIDE8_1", mc.TYPE_FP32, [96, 16, 16]),
    ]
    assert spec.stride8_shapes == ((32, 32, 32), (96, 16, 16)) and spec.stride8_size == 256
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000
    assert [(g.kind, g.count) for g in config.instance_group] == [
        (mc.ModelInstanceGroup.KIND_CPU, 1)
    ]
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params == {"taps": "6,13", "image_size": "256", "torch_threads": "0"}
    # the ensemble does not route through it (it needs no product)
    ensemble = tr.read_config(out / "adqc" / "config.pbtxt")
    assert [s.model_name for s in ensemble.ensemble_scheduling.step] == ["adqc_features"]


def test_without_stride8(tmp_path, checkpoint):
    tr.build_model_repository(tmp_path, checkpoint=checkpoint, kind="cpu")
    assert (tmp_path / "adqc_stride8" / "config.pbtxt").is_file()
    spec = tr.build_model_repository(tmp_path, checkpoint=checkpoint, kind="cpu", stride8=False)
    assert spec.stride8_shapes is None
    assert not (tmp_path / "adqc_stride8").exists()  # a re-export drops it
    assert json.loads((tmp_path / "adqc_repo.json").read_text())["models"] == [
        "adqc",
        "adqc_features",
    ]
    with pytest.raises(ValueError, match="stride8_shapes"):
        tr.stride8_config(spec)


def test_features_config(repo):
    out, spec = repo
    config = tr.read_config(out / "adqc_features" / "config.pbtxt")
    assert config.name == "adqc_features" and config.backend == "python"
    assert config.max_batch_size == 8
    inputs = {t.name: t for t in config.input}
    assert list(inputs["IMAGES"].dims) == [spec.image_size, spec.image_size, 3]
    assert inputs["IMAGES"].data_type == mc.TYPE_UINT8
    assert inputs["PRODUCT"].data_type == mc.TYPE_STRING and list(inputs["PRODUCT"].dims) == [1]
    assert inputs["REFERENCE_VERSION"].data_type == mc.TYPE_INT64
    outputs = [(t.name, list(t.dims)) for t in config.output]
    assert outputs == [(f"FEATURES_{i}", list(shape)) for i, shape in enumerate(spec.level_shapes)]
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000
    assert [(g.kind, g.count) for g in config.instance_group] == [
        (mc.ModelInstanceGroup.KIND_CPU, 1)
    ]
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params["model_id"] == spec.model_id
    assert params["redis_url"] == "redis://example:6379/2"
    assert params["checkpoint"] == "checkpoint.pt"
    assert params["runtime"] == "auto"


def test_ensemble_config(repo):
    out, spec = repo
    config = tr.read_config(out / "adqc" / "config.pbtxt")
    assert config.platform == "ensemble" and config.max_batch_size == 8
    assert config.parameters["model_id"].string_value == spec.model_id
    names = ["IMAGES", "PRODUCT", "REFERENCE_VERSION", "REFERENCE_CREATED_AT"]
    assert [t.name for t in config.input] == names
    assert [t.optional for t in config.input] == [False, False, False, True]
    (step,) = config.ensemble_scheduling.step
    assert step.model_name == "adqc_features"
    assert dict(step.input_map) == {n: n for n in names}
    names = [f"FEATURES_{i}" for i in range(len(spec.level_shapes))]
    assert dict(step.output_map) == {n: n for n in names}
    assert [t.name for t in config.output] == names


def test_level_shapes_match_the_model(repo, model):
    _, spec = repo
    size = model.backbone.spec.image_size
    with torch.inference_mode():
        levels = model.raw(torch.zeros(1, 3, size, size))
    assert spec.level_shapes == tuple(tuple(t.shape[1:]) for t in levels)


def test_split_preprocess_gpu_layout(tmp_path, checkpoint):
    spec = tr.build_model_repository(
        tmp_path, checkpoint=checkpoint, kind="gpu", instances=2, max_batch=16,
        split_preprocess=True,
    )  # fmt: skip
    pre = tr.read_config(tmp_path / "adqc_preprocess" / "config.pbtxt")
    feats = tr.read_config(tmp_path / "adqc_features" / "config.pbtxt")
    ens = tr.read_config(tmp_path / "adqc" / "config.pbtxt")
    assert [t.name for t in pre.output] == ["INPUT"]
    assert list(pre.output[0].dims) == [3, spec.image_size, spec.image_size]
    assert [t.name for t in feats.input][0] == "INPUT"
    assert feats.parameters["input_is_preprocessed"].string_value == "true"
    assert [(g.kind, g.count) for g in feats.instance_group] == [
        (mc.ModelInstanceGroup.KIND_GPU, 2)
    ]
    assert list(feats.dynamic_batching.preferred_batch_size) == [4, 8, 16]
    s8 = tr.read_config(tmp_path / "adqc_stride8" / "config.pbtxt")
    assert [(g.kind, g.count) for g in s8.instance_group] == [(mc.ModelInstanceGroup.KIND_GPU, 2)]
    assert list(s8.dynamic_batching.preferred_batch_size) == [4, 8, 16]
    assert [s.model_name for s in ens.ensemble_scheduling.step] == [
        "adqc_preprocess",
        "adqc_features",
    ]
    first, second = ens.ensemble_scheduling.step
    assert first.output_map["INPUT"] == second.input_map["INPUT"]
    # re-exporting the default layout into the same directory drops adqc_preprocess
    tr.build_model_repository(tmp_path, checkpoint=checkpoint, kind="cpu")
    assert not (tmp_path / "adqc_preprocess").exists()
    assert (
        tr.read_config(tmp_path / "adqc" / "config.pbtxt").ensemble_scheduling.step[0].model_name
        == "adqc_features"
    )


def test_gpu_fp16_rendered_config(tmp_path, checkpoint):
    tr.build_model_repository(tmp_path, checkpoint=checkpoint, kind="gpu", precision="fp16")
    text = (tmp_path / "adqc_features" / "config.pbtxt").read_text()
    assert "KIND_GPU" in text
    feats = tr.read_config(tmp_path / "adqc_features" / "config.pbtxt")
    assert feats.parameters["precision"].string_value == "fp16"
    assert [g.kind for g in feats.instance_group] == [mc.ModelInstanceGroup.KIND_GPU]
    assert all(o.data_type == mc.TYPE_FP32 for o in feats.output)  # outputs stay FP32
    tr.build_model_repository(tmp_path, checkpoint=checkpoint, kind="cpu")
    feats = tr.read_config(tmp_path / "adqc_features" / "config.pbtxt")
    assert feats.parameters["precision"].string_value == "fp32"
    with pytest.raises(ValueError, match="fp16 needs GPU"):
        tr.build_model_repository(tmp_path, checkpoint=checkpoint, kind="cpu", precision="fp16")
    with pytest.raises(ValueError, match="precision must be"):
        tr.build_model_repository(tmp_path, checkpoint=checkpoint, kind="gpu", precision="int4")


def test_service_refuses_fp16_on_cpu(checkpoint):
    from inference.triton.features import FeaturesService

    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        FeaturesService(
            backbone="mobilenet_v2", checkpoint=checkpoint, model_id="x", store_url="memory://",
            precision="fp16",
        )  # fmt: skip


def test_bad_arguments(tmp_path, checkpoint):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        tr.build_model_repository(tmp_path, checkpoint=tmp_path / "nope.pt")
    with pytest.raises(ValueError, match="kind"):
        tr.build_model_repository(tmp_path, checkpoint=checkpoint, kind="tpu")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_batch"):
        tr.build_model_repository(tmp_path, checkpoint=checkpoint, max_batch=0)


def test_cli_export_triton(tmp_path, checkpoint):
    from adqc.cli import build_app

    out = tmp_path / "repo"
    result = CliRunner().invoke(
        build_app(),
        ["export", "triton", "--out", str(out), "--checkpoint", str(checkpoint),
         "--max-batch", "4", "--instances", "2", "--kind", "cpu",
         "--redis-url", "redis://h:1/0", "--torch-threads", "1"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "ensemble 'adqc'" in result.output
    config = tr.read_config(out / "adqc_features" / "config.pbtxt")
    assert config.max_batch_size == 4 and config.instance_group[0].count == 2
    assert config.parameters["redis_url"].string_value == "redis://h:1/0"
    assert config.parameters["torch_threads"].string_value == "1"
    s8 = tr.read_config(out / "adqc_stride8" / "config.pbtxt")
    assert s8.max_batch_size == 4 and s8.instance_group[0].count == 2
    assert s8.parameters["torch_threads"].string_value == "1"
    assert "adqc_stride8" in result.output

    bad = CliRunner().invoke(
        build_app(), ["export", "triton", "--out", str(out), "--checkpoint", str(tmp_path / "x")]
    )
    assert bad.exit_code == 1
    assert "checkpoint not found" in bad.output


# ------------------------------------------------------------------------ FeaturesService


@pytest.fixture(scope="module")
def service(checkpoint, model):
    store = open_store("memory://", cache_size=0)
    svc = FeaturesService(
        backbone=BACKBONE,
        checkpoint=checkpoint,
        model_id=model_id(checkpoint),
        store_url="memory://",
        store=store,
        pool_cache_entries=2,
    )
    return svc


def _images(n: int, size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_service_matches_feature_model(service, model):
    record = _record(model, service.model_id, "alpha", seed=1)
    version = service.store.publish(record)
    images = _images(3, service.image_size, seed=2)
    out = service.features(images, [("alpha", version)] * 3)
    pool = service.reference("alpha", version).pool
    with torch.inference_mode():
        want = model.projected(to_model_input(torch.from_numpy(images), model.backbone.spec), pool)
    assert len(out) == len(want)
    for got, ref in zip(out, want, strict=True):
        assert got.dtype == np.float32 and got.shape == tuple(ref.shape)
        np.testing.assert_allclose(got, ref.numpy(), atol=1e-5, rtol=0)


def test_service_runs_what_the_local_engine_runs(service, model, checkpoint):
    """On CPU the service's backbone and projector run ONNX Runtime, as the worker's in-process
    engine does: the same features to float rounding; ``runtime="torch"`` stays available and
    an unknown runtime is refused."""
    from inference.engines.local import LocalEngine

    assert service.runtime == "onnxruntime"
    record = _record(model, service.model_id, "engine-parity", seed=14)
    version = service.store.publish(record)
    images = _images(3, service.image_size, seed=15)
    served = service.features(images, [("engine-parity", version)] * 3)
    local = LocalEngine(model=model, runtime="onnxruntime")
    in_process = local.features(images, service.store.get("engine-parity", version))
    for got, want in zip(served, in_process, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    torch_service = FeaturesService(
        backbone=BACKBONE, checkpoint=checkpoint, model_id=service.model_id,
        store_url="memory://", store=service.store, runtime="torch",
    )  # fmt: skip
    assert torch_service.runtime == "torch"
    for got, want in zip(
        torch_service.features(images, [("engine-parity", version)] * 3), served, strict=True
    ):
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="runtime must be auto, torch or onnxruntime"):
        FeaturesService(
            backbone=BACKBONE, checkpoint=checkpoint, model_id=service.model_id,
            store_url="memory://", runtime="tensorrt",
        )  # fmt: skip


def test_service_mixed_products_in_one_batch(service, model):
    a = service.store.publish(_record(model, service.model_id, "mix-a", seed=3))
    b = service.store.publish(_record(model, service.model_id, "mix-b", seed=4))
    images = _images(4, service.image_size, seed=5)
    keys = [("mix-a", a), ("mix-b", b), ("mix-a", a), ("mix-b", b)]
    mixed = service.features(images, keys)
    only_a = service.features(images[[0, 2]], [("mix-a", a)] * 2)
    only_b = service.features(images[[1, 3]], [("mix-b", b)] * 2)
    for level, la, lb in zip(mixed, only_a, only_b, strict=True):
        np.testing.assert_allclose(level[[0, 2]], la, atol=1e-5, rtol=0)
        np.testing.assert_allclose(level[[1, 3]], lb, atol=1e-5, rtol=0)


def test_service_per_request_errors(service, model):
    good = service.store.publish(_record(model, service.model_id, "good", seed=6))
    other = _record(model, "mobilenet_v2:000000000000", "other-model", seed=7)
    other_version = service.store.publish(other)
    size = service.image_size
    created = service.store.get("good", good).created_at.isoformat()
    requests = [
        (_images(2, size, 8), [("good", good)] * 2, [created, ""]),
        (_images(1, size, 9), [("missing", 1)], [""]),
        (_images(1, size, 10), [("other-model", other_version)], [""]),
        (_images(1, size, 11), [("good", 0)], [""]),
        (np.zeros((1, 8, 8, 3), np.uint8), [("good", good)], [""]),
        (_images(1, size, 12), [("good", good)], [created]),
        (_images(1, size, 13), [("good", good)], ["2001-01-01T00:00:00+00:00"]),
    ]
    results = service.serve(requests)
    assert len(results) == len(requests)
    assert [r.shape[0] for r in results[0]] == [2] * len(results[0])
    assert isinstance(results[1], ProductNotFoundError)
    assert error_message(results[1]).startswith("ProductNotFoundError: ")
    assert isinstance(results[2], ModelMismatchError)
    assert "mobilenet_v2:000000000000" in str(results[2])
    assert isinstance(results[3], InvalidRequestError) and ">= 1" in str(results[3])
    assert isinstance(results[4], InvalidRequestError) and "uint8" in str(results[4])
    assert isinstance(results[5], list)
    assert isinstance(results[6], ReferenceMismatchError)
    assert "different stores" in str(results[6])
    # the batched result equals serving the request alone
    alone = service.features(requests[5][0], requests[5][1])
    for got, ref in zip(results[5], alone, strict=True):
        np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)


def test_service_caches_pools_by_version(service, model):
    store = service.store
    v1 = store.publish(_record(model, service.model_id, "cached", seed=13))
    fetches = store.fetches
    images = _images(1, service.image_size, 14)
    service.features(images, [("cached", v1)])
    service.features(images, [("cached", v1)])
    assert store.fetches == fetches + 1
    v2 = store.publish(_record(model, service.model_id, "cached", seed=15))
    service.features(images, [("cached", v2)])
    assert store.fetches == fetches + 2
    assert len(service.pools) <= 2  # pool_cache_entries=2


def test_pool_cache_bounds():
    cache = PoolCache(max_entries=3, max_bytes=100)
    for i in range(4):
        cache.put(("p", i), f"pool{i}", 10)
    assert cache.keys() == [("p", 1), ("p", 2), ("p", 3)]
    assert cache.get(("p", 1)) == "pool1"  # now most recent
    cache.put(("q", 1), "big", 85)
    assert cache.keys() == [("p", 1), ("q", 1)] and cache.nbytes == 95
    cache.put(("huge", 1), "huge", 500)  # alone above the bound: kept, the rest dropped
    assert cache.keys() == [("huge", 1)]
    assert cache.get(("p", 0)) is None and cache.misses == 1


def test_decode_keys():
    products = np.array([[b"a"], [b"b"]], dtype=object)
    keys, dates = decode_keys(products, np.array([[1], [2]]), None, 2)
    assert keys == [("a", 1), ("b", 2)] and dates == ["", ""]
    dated = np.array([[b"2020-01-01T00:00:00+00:00"], [b""]], dtype=object)
    _, dates = decode_keys(products, np.array([[1], [2]]), dated, 2)
    assert dates == ["2020-01-01T00:00:00+00:00", ""]
    with pytest.raises(InvalidRequestError, match="one entry per image"):
        decode_keys(np.array([[b"a"]], dtype=object), np.array([[1]]), None, 2)
    with pytest.raises(InvalidRequestError, match="UTF-8"):
        decode_keys(np.array([[b"\xff"]], dtype=object), np.array([[1]]), None, 1)


def test_service_store_outage_fails_the_requests_that_need_it(checkpoint, model):
    from inference.store import StoreUnavailableError

    class DownStore:
        def get(self, product, version=None, *, model_id=None):
            raise StoreUnavailableError("redis://down:6379/0 unreachable after 4 attempts")

    svc = FeaturesService(
        backbone=BACKBONE,
        checkpoint=checkpoint,
        model_id=model_id(checkpoint),
        store_url="redis://down:6379/0",
        store=DownStore(),
    )
    (result,) = svc.serve([(_images(1, svc.image_size, 1), [("p", 1)], [""])])
    assert isinstance(result, StoreUnavailableError)
    assert error_message(result).startswith("StoreUnavailableError: redis://down")


def test_service_refuses_a_hand_edited_model_id(checkpoint):
    with pytest.raises(ValueError, match="re-run `adqc export triton`"):
        FeaturesService(
            backbone=BACKBONE,
            checkpoint=checkpoint,
            model_id="mobilenet_v2:ffffffffffff",
            store_url="memory://",
        )


# ------------------------------------------------------------------------ Stride8Service


@pytest.fixture(scope="module")
def stride8_service():
    from inference.triton.stride8 import Stride8Service

    return Stride8Service(image_size=256)  # the size the repository exports


def test_stride8_service_matches_the_in_process_source(stride8_service):
    """On CPU the service runs what the worker runs in process (Stride8Features: ONNX Runtime),
    with the same model, preprocessing and weights as the torch path."""
    from inference.stride8 import Stride8Features

    pytest.importorskip("onnxruntime")
    assert stride8_service.runtime == "onnxruntime"
    images = np.random.default_rng(0).integers(0, 256, (3, 256, 256, 3), dtype=np.uint8)
    got = stride8_service.features(images)
    assert [g.shape for g in got] == [(3, 32, 32, 32), (3, 96, 16, 16)]
    assert all(g.dtype == np.float32 for g in got)
    for g, w in zip(got, Stride8Features(image_size=256)(images), strict=True):
        np.testing.assert_allclose(g, w.numpy(), atol=1e-6, rtol=1e-6)
    for g, w in zip(got, Stride8Features(runtime="torch")(images), strict=True):
        np.testing.assert_allclose(g, w.numpy(), atol=1e-4, rtol=1e-4)


def test_stride8_service_per_request_errors(stride8_service):
    """A bad request fails alone; the valid ones of the batch are computed in one pass."""
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (2, 256, 256, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (1, 256, 256, 3), dtype=np.uint8)
    bad = np.zeros((1, 64, 64, 3), np.uint8)
    first, wrong, second = stride8_service.serve([a, bad, b])
    assert isinstance(wrong, InvalidRequestError) and "uint8 [B,256,256,3]" in str(wrong)
    assert error_message(wrong).startswith("InvalidRequestError: ")
    alone = stride8_service.features(np.concatenate([a, b]))
    for level, (x, y) in enumerate(zip(first, second, strict=True)):
        assert x.shape[0] == 2 and y.shape[0] == 1
        np.testing.assert_allclose(np.concatenate([x, y]), alone[level], atol=1e-6)
    (floats,) = stride8_service.serve([a.astype(np.float32)])
    assert isinstance(floats, InvalidRequestError)
