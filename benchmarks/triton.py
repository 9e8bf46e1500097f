"""Model-only latency/throughput of the Triton `adqc` ensemble over gRPC (`adqc bench triton`).

"Model-only": TritonEngine.features calls (uint8 images in, projected features out), without the
scorer's post-processing. For reference, the same calls through LocalEngine in this process
(``in_process``, measured after the server stopped): the Triton/gRPC overhead is the difference,
whatever else the CPUs run.

Without ``url`` the benchmark is self-contained: it starts Redis and tritonserver
(deploy.servers), writes a model repository for the checkpoint, publishes a synthetic product
(pool from ``shots`` seeded noise images: the 1-NN cost depends on the pool's size, not its
content) and measures. Server-side time per request comes from Triton's statistics extension
(queue, compute input/infer/output of ``adqc_features``).
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

BENCH_PRODUCT = "bench-product"


def synthetic_record(
    model, model_id: str, shots: int = 8, seed: int = 0, product: str = BENCH_PRODUCT
):
    """A published-ready featurenorm ProductRecord whose pool comes from ``shots`` noise images."""
    import torch

    from inference.records import Calibration, ProductRecord
    from pretrain.detectors import FeatureNormConfig
    from pretrain.preprocess import to_model_input

    spec = model.backbone.spec
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (shots, spec.image_size, spec.image_size, 3), dtype=np.uint8)
    with torch.inference_mode():
        pool = model.build_pool(to_model_input(torch.from_numpy(images), spec))
    return ProductRecord(
        product=product,
        model_id=model_id,
        backbone=spec.name,
        image_size=spec.image_size,
        shots=shots,
        detector_config=FeatureNormConfig(),
        pool=pool.numpy(),
        calibration=Calibration(
            threshold=1.0,
            target_far=0.01,
            method="leave-one-out",
            n_normals=1,
            normal_scores=[0.5],
            score_mean=0.5,
            score_std=0.0,
        ),
    )


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def _server_stats(url: str, model: str) -> dict[str, float]:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    finally:
        client.close()
    inference = stats["inference_stats"]
    count = max(1, int(inference["success"]["count"]))
    executions = int(stats.get("execution_count", 0))

    def per_request(name: str) -> float:
        return int(inference[name]["ns"]) / count / 1e6

    return {
        "requests": int(inference["success"]["count"]),
        "executions": executions,
        "queue_ms_per_request": per_request("queue"),
        "compute_input_ms_per_request": per_request("compute_input"),
        "compute_infer_ms_per_request": per_request("compute_infer"),
        "compute_output_ms_per_request": per_request("compute_output"),
    }


def measure(
    engine_factory, record, images: np.ndarray, requests: int, warmup: int, concurrency: int
) -> dict:
    """Time ``requests`` engine.features calls spread over ``concurrency`` threads."""
    engines = [engine_factory() for _ in range(concurrency)]
    for _ in range(warmup):
        engines[0].features(images, record)
    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(requests))

    def worker(engine) -> None:
        while True:
            with lock:
                if next(counter, None) is None:
                    return
            started = time.perf_counter()
            engine.features(images, record)
            elapsed = (time.perf_counter() - started) * 1000
            with lock:
                latencies.append(elapsed)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(e,)) for e in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    for engine in engines:
        engine.close()
    return {
        "batch": int(len(images)),
        "requests": len(latencies),
        "concurrency": concurrency,
        "latency_ms_mean": statistics.fmean(latencies),
        "latency_ms_p50": _percentile(latencies, 50),
        "latency_ms_p95": _percentile(latencies, 95),
        "latency_ms_min": min(latencies),
        "throughput_images_per_s": len(latencies) * len(images) / wall,
        "wall_s": wall,
    }


def measure_round_trip(engine, record, images: np.ndarray, requests: int) -> dict:
    """Round trips of the same request for a product the server does not know: the full image
    payload through gRPC, the ensemble and the python stub, answered after one Redis lookup and
    before any compute (the response carries no features)."""
    from inference.store import ProductNotFoundError

    ghost = record.model_copy(update={"product": f"{record.product}-absent"})
    latencies = []
    for _ in range(requests + 1):
        started = time.perf_counter()
        with contextlib.suppress(ProductNotFoundError):
            engine.features(images, ghost)
        latencies.append((time.perf_counter() - started) * 1000)
    latencies = latencies[1:]  # the first one warms the connection
    return {
        "requests": requests,
        "latency_ms_mean": statistics.fmean(latencies),
        "latency_ms_p50": _percentile(latencies, 50),
    }


def measure_local(model, record, images: np.ndarray, requests: int) -> dict:
    """The same features computed in this process (LocalEngine): the reference for overhead."""
    from inference.engines.local import LocalEngine

    engine = LocalEngine(model=model)
    engine.features(images, record)  # warm-up (and pool cache)
    latencies = []
    for _ in range(requests):
        started = time.perf_counter()
        engine.features(images, record)
        latencies.append((time.perf_counter() - started) * 1000)
    return {
        "requests": requests,
        "latency_ms_mean": statistics.fmean(latencies),
        "latency_ms_p50": _percentile(latencies, 50),
    }


def run_bench(
    *,
    batch: int = 8,
    requests: int = 50,
    warmup: int = 5,
    concurrency: int = 1,
    backbone: str = "mobilenet_v2",
    checkpoint: Path | None = None,
    shots: int = 8,
    url: str | None = None,
    product: str | None = None,
    store_url: str | None = None,
    torch_threads: int = 0,
) -> dict:
    """Run the benchmark; see the module docstring. Returns a JSON-friendly dict."""
    import os

    import torch

    from inference.engines.triton import TritonEngine

    rng = np.random.default_rng(1)
    if url is not None:
        if not product or not store_url:
            raise ValueError("with --url, give --product and --store (where it was onboarded)")
        from inference.store import open_store

        engine = TritonEngine(url)
        record = open_store(store_url).get(product, model_id=engine.model_id)
        size = engine.image_size
        engine.close()
        images = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
        result = measure(lambda: TritonEngine(url), record, images, requests, warmup, concurrency)
        result["server"] = _server_stats(url.removeprefix("grpc://"), "adqc_features")
        return result

    from deploy.servers import RedisServer, TritonServer
    from deploy.triton_repo import build_model_repository
    from inference.store import open_store
    from pretrain.checkpoint import load_feature_model
    from pretrain.checkpoint import model_id as checkpoint_model_id

    with tempfile.TemporaryDirectory(prefix="adqc-bench-triton-") as tmp, RedisServer() as redis:
        repo = Path(tmp) / "model_repository"
        spec = build_model_repository(
            repo,
            backbone=backbone,
            checkpoint=checkpoint,
            redis_url=redis.url,
            max_batch=max(16, batch),
            kind="cpu",
            torch_threads=torch_threads,
        )
        served = repo / "adqc_features" / "1" / "checkpoint.pt"
        model = load_feature_model(backbone=backbone, checkpoint=served)
        record = synthetic_record(model, checkpoint_model_id(served), shots=shots)
        version = open_store(redis.url).publish(record)
        record = record.model_copy(update={"version": version})
        images = rng.integers(0, 256, (batch, spec.image_size, spec.image_size, 3), dtype=np.uint8)
        with TritonServer(repo) as triton:
            result = measure(
                lambda: TritonEngine(triton.grpc_url),
                record,
                images,
                requests,
                warmup,
                concurrency,
            )
            result["server"] = _server_stats(triton.grpc_url, "adqc_features")
            with TritonEngine(triton.grpc_url) as engine:
                result["round_trip_without_compute"] = measure_round_trip(
                    engine, record, images, max(3, min(requests, 20))
                )
        load_during_triton = os.getloadavg()[0]
        # measured after the server stopped, so the two do not compete for the CPUs
        result["in_process"] = measure_local(model, record, images, max(3, min(requests, 10)))
    result.update(
        {
            "model_id": spec.model_id,
            "pool_patches": [int(a.shape[0]) for a in record.pool],
            "shots": shots,
            "torch_threads": torch_threads or torch.get_num_threads(),
            "cpus": os.cpu_count(),
            "load_average_1min": round(load_during_triton, 2),
        }
    )
    return result
