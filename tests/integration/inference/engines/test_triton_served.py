"""TritonEngine against a real tritonserver + Redis: parity with LocalEngine and per-request errors.

One model repository and one server for the module (the python-backend stub imports torch:
start-up dominates the time). A product is onboarded with the LocalEngine into Redis (the default
detector, s8-patchcore: it reads the stride-8 features only), then the same images are scored by
the Scorer over LocalEngine (stride-8 features in process) and over TritonEngine (stride-8
features from the server's adqc_stride8).
"""

from __future__ import annotations

import concurrent.futures as cf
import uuid
import warnings
from pathlib import Path

import numpy as np
import pytest

from deploy.triton_repo import build_model_repository
from inference.engines.base import InvalidImageError
from inference.engines.local import LocalEngine
from inference.engines.triton import (
    ReferenceMismatchError,
    TritonEngine,
    TritonEngineError,
)
from inference.onboarding import DEFAULT_DETECTOR, build_record
from inference.records import ModelMismatchError
from inference.scorer import Scorer
from inference.store import ProductNotFoundError, open_store
from inference.stride8 import Stride8Features
from pretrain.checkpoint import CHECKPOINT_DIR, CheckpointError, load_checkpoint, save_untrained

BACKBONE = "mobilenet_v2"
MAP_TOL = 1e-4


def _checkpoint(tmp: Path) -> Path:
    """The shipped checkpoint when it exists and loads, else an explicitly untrained one."""
    shipped = CHECKPOINT_DIR / f"{BACKBONE}.pt"
    if shipped.is_file():
        try:
            load_checkpoint(shipped, expect_backbone=BACKBONE)
            return shipped
        except CheckpointError as exc:  # e.g. mid-retraining: say so, test parity anyway
            warnings.warn(
                f"shipped checkpoint unusable, using an untrained one: {exc}", stacklevel=2
            )
    return save_untrained(tmp / "untrained.pt", BACKBONE)


def _images(n: int, seed: int, size: int = 224) -> np.ndarray:
    """Smooth random images (a blurred noise field plus a gradient), uint8."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (n, size // 16, size // 16, 3)).astype(np.float32)
    big = np.repeat(np.repeat(small, 16, axis=1), 16, axis=2)
    ramp = np.linspace(0, 60, size, dtype=np.float32)[None, :, None, None]
    return np.clip(big * 0.7 + ramp, 0, 255).astype(np.uint8)


def _parity_images() -> list[np.ndarray]:
    """Six frames, two with a bright square "defect" (not 224 px: the Scorer resizes)."""
    images = list(_images(6, seed=2, size=256))
    for i in (1, 4):
        images[i] = images[i].copy()
        images[i][60:110, 80:130] = 255
    return images


@pytest.fixture(scope="module")
def served(tmp_path_factory, redis_server, triton_server_factory):
    tmp = tmp_path_factory.mktemp("triton")
    checkpoint = _checkpoint(tmp)
    store_url = f"{redis_server.url}?prefix=triton{uuid.uuid4().hex[:8]}"
    repo = tmp / "model_repository"
    build_model_repository(
        repo, checkpoint=checkpoint, redis_url=store_url, max_batch=4, kind="cpu"
    )
    # two python-backend stubs (adqc_features, adqc_stride8) each import torch: on a busy
    # two-core machine loading them takes minutes, more than the default 180 s
    server = triton_server_factory(repo, startup_timeout=600)
    # the repository's copy: the same bytes the server loads, even if the source file changes
    local = LocalEngine(checkpoint=repo / "adqc_features/1/checkpoint.pt", backbone=BACKBONE)
    store = open_store(store_url)
    shots = _images(4, seed=1)
    record = build_record(local, "pcb-7", shots)
    # Put the threshold in the widest gap between the local scores of the parity images (with at
    # least two images on each side), so both decisions are compared whatever the checkpoint's
    # quality, and no score sits within the tolerance of the threshold.
    probe = sorted(r.score for r in Scorer(local, store).score_with(_parity_images(), record))
    gap, i = max((probe[i + 1] - probe[i], i) for i in (1, 2, 3))
    assert gap > 100 * MAP_TOL, f"parity images score too close together: {probe}"
    threshold = (probe[i] + probe[i + 1]) / 2
    calibration = record.calibration.model_copy(update={"threshold": threshold})
    record = record.model_copy(update={"calibration": calibration})
    version = store.publish(record)
    record = record.model_copy(update={"version": version})
    # the default reads raw stride-8 features at 256 px; the projected path (the ensemble
    # 'adqc') is exercised with a projector detector's record at the engine's 224 px
    projected = build_record(local, "pcb-7p", shots, detector="featurenorm")
    projected = projected.model_copy(update={"version": store.publish(projected)})
    engine = TritonEngine(server.grpc_url, timeout_s=60)
    yield {
        "server": server,
        "local": local,
        "engine": engine,
        "store": store,
        "store_url": store_url,
        "record": record,
        "projected": projected,
        "checkpoint": checkpoint,
    }
    engine.close()


@pytest.mark.integration
def test_engine_reads_model_from_the_server(served):
    engine, local = served["engine"], served["local"]
    assert engine.model_id == local.model_id
    assert engine.image_size == local.image_size == 224
    assert engine.max_batch == 4
    assert (
        engine.output_names
        == ["FEATURES_0", "FEATURES_1", "FEATURES_2"][: len(served["projected"].pool)]
    )
    assert engine.is_ready()
    assert engine.stride8_model == "adqc_stride8"
    assert engine.stride8_size == 256 and engine.stride8_max_batch == 4  # the default's size
    assert engine.stride8_outputs == ["STRIDE8_0", "STRIDE8_1"]


@pytest.mark.integration
def test_scorer_parity_local_vs_triton(served):
    """Same images, same store: maps within 1e-4, identical decisions (6 images: 2 requests)."""
    images = _parity_images()
    store = served["store"]
    local = Scorer(served["local"], store).score(images, "pcb-7")
    remote = Scorer(served["engine"], store).score(images, "pcb-7")
    assert len(local) == len(remote) == 6
    worst = max(
        float(np.abs(a.anomaly_map - b.anomaly_map).max())
        for a, b in zip(local, remote, strict=True)
    )
    assert worst < MAP_TOL, f"max abs map difference {worst:.2e}"
    assert [r.is_defective for r in local] == [r.is_defective for r in remote]
    assert 2 <= sum(r.is_defective for r in remote) <= 4  # both outcomes are compared
    assert [r.reference_version for r in remote] == [served["record"].version] * 6
    assert max(abs(a.score - b.score) for a, b in zip(local, remote, strict=True)) < MAP_TOL


@pytest.mark.integration
def test_features_parity_and_batch_split(served):
    """More images than max_batch (4) are split into requests; raw features match too: the
    CPU instance runs ONNX Runtime as the LocalEngine does: equal to 1e-6 (torch differs from
    ONNX Runtime by ~4e-6 here, so this tells the runtimes apart)."""
    images = _images(5, seed=3)
    record = served["projected"]
    assert served["local"].runtime == "onnxruntime"
    want = served["local"].features(images, record)
    got = served["engine"].features(images, record)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and g.dtype == np.float32
        assert float(np.abs(g - w).max()) < 1e-6


@pytest.mark.integration
def test_unknown_product_fails_alone(served):
    """Concurrent requests (batched together by the server): the unknown product gets its error,
    the valid requests their features."""
    engine, record = served["engine"], served["projected"]
    ghost = record.model_copy(update={"product": "ghost-product"})
    images = _images(1, seed=4)
    want = served["local"].features(images, record)

    def call(rec):
        return engine.features(images, rec)

    with cf.ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(call, rec) for rec in [record, ghost] * 3]
        outcomes = []
        for future in futures:
            try:
                outcomes.append(future.result())
            except Exception as exc:  # noqa: BLE001 - collected and checked below
                outcomes.append(exc)
    for i, outcome in enumerate(outcomes):
        if i % 2:
            assert isinstance(outcome, ProductNotFoundError), outcome
            assert "ghost-product" in str(outcome)
        else:
            assert isinstance(outcome, list), outcome
            for g, w in zip(outcome, want, strict=True):
                assert float(np.abs(g - w).max()) < MAP_TOL


@pytest.mark.integration
def test_record_errors(served):
    engine, record = served["engine"], served["projected"]
    images = _images(1, seed=5)
    with pytest.raises(ModelMismatchError, match="mobilenet_v2:0123456789ab"):
        engine.features(images, record.model_copy(update={"model_id": "mobilenet_v2:0123456789ab"}))
    with pytest.raises(ValueError, match="not published"):
        engine.features(images, record.model_copy(update={"version": 0}))
    with pytest.raises(InvalidImageError):
        engine.features(np.zeros((1, 32, 32, 3), np.uint8), record)
    # a record the server's store does not hold under this (product, version)
    other = record.model_copy(update={"created_at": record.created_at.replace(year=2001)})
    with pytest.raises(ReferenceMismatchError, match="different stores"):
        engine.features(images, other)
    with pytest.raises(ProductNotFoundError):
        engine.features(images, record.model_copy(update={"version": record.version + 50}))


@pytest.mark.integration
def test_deadline(served):
    slow = TritonEngine(served["server"].grpc_url, timeout_s=30)
    slow.timeout_s = 0.001  # after reading the config: an impossible deadline for inference
    with pytest.raises(TritonEngineError, match="deadline"):
        slow.features(_images(4, seed=6), served["projected"])
    slow.close()


def _stride8_requests(engine: TritonEngine) -> int:
    """Successful requests adqc_stride8 has served so far (the server's own statistics)."""
    stats = engine._client.get_inference_statistics("adqc_stride8", as_json=True)
    return int(stats["model_stats"][0]["inference_stats"]["success"].get("count", 0))


@pytest.mark.integration
def test_stride8_served_equals_torch(served):
    """adqc_stride8 computes what the worker's in-process Stride8Features does (ONNX Runtime on
    CPU) and, within float tolerance, the torch path; 5 images > max_batch 4 are split into two
    requests."""
    engine = served["engine"]
    assert engine.stride8_size == 256  # the default preset's input size
    images = _images(5, seed=7, size=256)
    before = _stride8_requests(engine)
    got = engine.stride8(images)
    assert _stride8_requests(engine) - before == 2
    want = Stride8Features(image_size=256)(images)
    assert [tuple(g.shape) for g in got] == [(5, 32, 32, 32), (5, 96, 16, 16)]
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype and g.is_contiguous()
        assert float((g - w).abs().max()) < 1e-5
    for g, w in zip(got, Stride8Features(runtime="torch")(images), strict=True):
        assert float((g - w).abs().max()) < MAP_TOL
    # another size (the `ensemble` preset's 224 px) runs in the client's process
    small = _images(2, seed=8)
    got = engine.stride8(small)
    assert _stride8_requests(engine) - before == 2
    assert [tuple(g.shape) for g in got] == [(2, 32, 28, 28), (2, 96, 14, 14)]
    with pytest.raises(InvalidImageError):
        engine.stride8(np.zeros((1, 32, 32, 3), np.float32))


@pytest.mark.integration
def test_default_detector_scores_through_triton_stride8(served):
    """A product onboarded with the default detector, scored through a Scorer over the Triton
    engine: its stride-8 features come from the server (its request count grows), the scores
    and decisions equal the LocalEngine's (in-process stride-8 features)."""
    record, store, engine = served["record"], served["store"], served["engine"]
    assert record.detector == DEFAULT_DETECTOR == "s8-patchcore"
    images = _parity_images()
    before = _stride8_requests(engine)
    scorer = Scorer(engine, store)
    remote = scorer.score(images, "pcb-7")
    assert _stride8_requests(engine) - before == 2  # 6 frames, max batch 4
    assert scorer._stride8 == engine.stride8
    local = Scorer(served["local"], store).score(images, "pcb-7")
    np.testing.assert_allclose(
        [r.score for r in remote], [r.score for r in local], rtol=1e-3, atol=1e-6
    )
    assert [r.is_defective for r in local] == [r.is_defective for r in remote]
    assert 2 <= sum(r.is_defective for r in remote) <= 4


@pytest.mark.integration
def test_a_product_with_its_own_input_size_scores_through_triton(served):
    """`adqc product add --image-size 192`: the server's adqc_stride8 takes 256 px, so the
    Triton engine computes that product's features in the worker's process (the server's
    request count stays), and its scores equal the LocalEngine's."""
    store, engine, local = served["store"], served["engine"], served["local"]
    record = build_record(local, "pcb-192", _images(4, seed=1), image_size=192)
    assert record.image_size == 192
    store.publish(record)
    images = _parity_images()
    before = _stride8_requests(engine)
    remote = Scorer(engine, store).score(images, "pcb-192")
    assert _stride8_requests(engine) == before
    assert {r.anomaly_map.shape for r in remote} == {(192, 192)}
    local_scores = [r.score for r in Scorer(local, store).score(images, "pcb-192")]
    np.testing.assert_allclose([r.score for r in remote], local_scores, rtol=1e-5)
    assert min(remote[1].score, remote[4].score) > max(remote[i].score for i in (0, 2, 3, 5))


@pytest.mark.integration
def test_a_server_without_the_stride8_model_falls_back_in_process(served, caplog):
    """A repository exported before adqc_stride8 (here: a model name the server lacks): the
    engine says so once and the stride-8 features run in the client's process."""
    with caplog.at_level("WARNING", logger="inference.engines.triton"):
        engine = TritonEngine(served["server"].grpc_url, timeout_s=60, stride8_model="adqc_nope")
    try:
        assert engine.stride8_model is None and engine.is_ready()
        assert "serves no 'adqc_nope' model" in caplog.text
        images = _images(2, seed=8)
        got = engine.stride8(images)
        want = Stride8Features(runtime="torch")(images)
        for g, w in zip(got, want, strict=True):
            assert float((g - w).abs().max()) < MAP_TOL
    finally:
        engine.close()


@pytest.mark.integration
def test_serve_with_the_triton_engine_uses_the_served_stride8(served):
    """What `adqc serve` builds for engine.kind triton (ingest.runtime.build_scorer) takes the
    default detector's stride-8 features from the server."""
    from ingest.runtime import build_scorer
    from ingest.settings import load_settings

    settings = load_settings(
        None,
        engine={"kind": "triton", "url": served["server"].grpc_url, "timeout_s": 60},
        store={"url": served["store_url"]},
    )
    scorer = build_scorer(settings)
    try:
        assert isinstance(scorer.engine, TritonEngine)
        assert scorer.engine.stride8_model == "adqc_stride8"
        before = _stride8_requests(served["engine"])
        (result,) = scorer.score(_parity_images()[:1], "pcb-7")
        assert _stride8_requests(served["engine"]) - before == 1
        assert scorer._stride8 == scorer.engine.stride8
        assert result.reference_version == served["record"].version
    finally:
        scorer.engine.close()


@pytest.mark.integration
def test_bench_raw_client_over_system_shared_memory(served):
    """`adqc bench triton --matrix`'s client: uint8 images and the outputs through system
    shared memory give the TritonEngine's features; its regions are unregistered on close."""
    from benchmarks.triton import RawClient

    engine, record = served["engine"], served["projected"]
    images = _images(3, seed=4)
    shapes = [tuple(level.shape[1:]) for level in engine.features(images[:1], record)]
    want = engine.features(images, record)
    client = RawClient(served["server"].grpc_url, "uint8", "shm", 3, 224, shapes)
    try:
        got = client.features(images, record)
    finally:
        client.close()
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        assert float(np.abs(g - w).max()) < MAP_TOL
