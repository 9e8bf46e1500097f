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


def featurenorm_record(
    product: str, model_id: str, backbone: str, image_size: int, shots: int, pool: list
):
    """A published-ready FeatureNorm ProductRecord over ``pool`` (benchmarks only: its
    threshold is a placeholder)."""
    from inference.records import Calibration, ProductRecord
    from pretrain.detectors import FeatureNormConfig

    return ProductRecord(
        product=product,
        model_id=model_id,
        backbone=backbone,
        image_size=image_size,
        shots=shots,
        detector_config=FeatureNormConfig(),
        pool=pool,
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


def synthetic_record(
    model, model_id: str, shots: int = 8, seed: int = 0, product: str = BENCH_PRODUCT
):
    """A published-ready featurenorm ProductRecord whose pool comes from ``shots`` noise images."""
    import torch

    from pretrain.preprocess import to_model_input

    spec = model.backbone.spec
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (shots, spec.image_size, spec.image_size, 3), dtype=np.uint8)
    with torch.inference_mode():
        pool = model.build_pool(to_model_input(torch.from_numpy(images), spec))
    return featurenorm_record(product, model_id, spec.name, spec.image_size, shots, pool.numpy())


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
    """Time ``requests`` engine.features calls spread over ``concurrency`` threads; a failed
    call is counted in ``errors`` (first message in ``error``), not timed."""
    engines = [engine_factory() for _ in range(concurrency)]
    for _ in range(warmup):
        engines[0].features(images, record)
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    counter = iter(range(requests))

    def worker(engine) -> None:
        while True:
            with lock:
                if next(counter, None) is None:
                    return
            started = time.perf_counter()
            try:
                engine.features(images, record)
            except Exception as exc:  # noqa: BLE001 - counted and reported in the result
                with lock:
                    errors.append(str(exc))
                continue
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
    result = {
        "batch": int(len(images)),
        "requests": len(latencies),
        "concurrency": concurrency,
        "errors": len(errors),
        "wall_s": wall,
    }
    if errors:
        result["error"] = errors[0][:500]
    if not latencies:
        return result
    return result | {
        "latency_ms_mean": statistics.fmean(latencies),
        "latency_ms_p50": _percentile(latencies, 50),
        "latency_ms_p95": _percentile(latencies, 95),
        "latency_ms_p99": _percentile(latencies, 99),
        "latency_ms_min": min(latencies),
        "throughput_images_per_s": len(latencies) * len(images) / wall,
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


def _served_repository(
    tmp: Path,
    redis_url: str,
    backbone: str,
    checkpoint: Path | None,
    max_batch: int,
    torch_threads: int,
    shots: int,
):
    """The CPU model repository the Triton benches serve (under ``tmp``) and a synthetic
    record of its checkpoint, published to ``redis_url``: (repository, spec, model, record)."""
    from deploy.triton_repo import build_model_repository
    from inference.store import open_store
    from pretrain.checkpoint import load_feature_model
    from pretrain.checkpoint import model_id as checkpoint_model_id

    repo = tmp / "model_repository"
    spec = build_model_repository(
        repo,
        backbone=backbone,
        checkpoint=checkpoint,
        redis_url=redis_url,
        max_batch=max_batch,
        kind="cpu",
        torch_threads=torch_threads,
    )
    served = repo / "adqc_features" / "1" / "checkpoint.pt"
    model = load_feature_model(backbone=backbone, checkpoint=served)
    record = synthetic_record(model, checkpoint_model_id(served), shots=shots)
    version = open_store(redis_url).publish(record)
    return repo, spec, model, record.model_copy(update={"version": version})


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

    with tempfile.TemporaryDirectory(prefix="adqc-bench-triton-") as tmp, RedisServer() as redis:
        repo, spec, model, record = _served_repository(
            Path(tmp), redis.url, backbone, checkpoint, max(16, batch), torch_threads, shots
        )
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


# ---------------------------------------------------------------------------------- the matrix
#: the float32-payload twin of ``adqc_features`` written next to it by :func:`run_matrix`
FEATURES_F32 = "adqc_features_f32"
PAYLOADS = ("uint8", "float32")
TRANSPORTS = ("grpc", "shm")


class RawClient:
    """One gRPC client calling a features model directly, payload ``uint8`` (``adqc``
    ensemble, IMAGES [B,S,S,3]) or ``float32`` (:data:`FEATURES_F32`, preprocessed INPUT
    [B,3,S,S]: 4x the bytes), ``transport`` ``grpc`` (tensors in the request) or ``shm``
    (input and outputs in system shared memory regions registered with the server; same
    host only). ``features(payload, record)``: the same contract as TritonEngine.features."""

    def __init__(self, url: str, payload: str, transport: str, batch: int, image_size: int,
                 level_shapes: list[tuple[int, int, int]]) -> None:  # fmt: skip
        import tritonclient.grpc as grpcclient

        if payload not in PAYLOADS or transport not in TRANSPORTS:
            raise ValueError(f"payload {payload!r} / transport {transport!r}")
        self.g = grpcclient
        self.client = grpcclient.InferenceServerClient(url.removeprefix("grpc://"))
        self.payload, self.transport = payload, transport
        self.model = "adqc" if payload == "uint8" else FEATURES_F32
        self.input_name = "IMAGES" if payload == "uint8" else "INPUT"
        s = image_size
        self.input_shape = [batch, s, s, 3] if payload == "uint8" else [batch, 3, s, s]
        self.dtype = "UINT8" if payload == "uint8" else "FP32"
        self.input_bytes = int(np.prod(self.input_shape)) * (1 if payload == "uint8" else 4)
        self.outputs = [(f"FEATURES_{i}", [batch, *shape]) for i, shape in enumerate(level_shapes)]
        self.regions: list[tuple[str, object]] = []
        if transport == "shm":
            import tritonclient.utils.shared_memory as shm

            self.shm = shm
            tag = uuid_hex()
            sizes = [("in", self.input_bytes)] + [
                (name, int(np.prod(shape)) * 4) for name, shape in self.outputs
            ]
            for name, size in sizes:
                region = f"adqc-bench-{tag}-{name}"
                handle = shm.create_shared_memory_region(region, f"/{region}", size)
                self.client.register_system_shared_memory(region, f"/{region}", size)
                self.regions.append((region, handle))
            self.sizes = dict(sizes)

    def features(self, images: np.ndarray, record) -> list[np.ndarray]:
        g, b = self.g, len(images)
        image_input = g.InferInput(self.input_name, list(images.shape), self.dtype)
        if self.transport == "shm":
            self.shm.set_shared_memory_region(self.regions[0][1], [np.ascontiguousarray(images)])
            image_input.set_shared_memory(self.regions[0][0], images.nbytes)
        else:
            image_input.set_data_from_numpy(np.ascontiguousarray(images))
        inputs = [image_input]
        for name, dtype, value in (
            ("PRODUCT", "BYTES", np.full((b, 1), record.product.encode(), dtype=object)),
            ("REFERENCE_VERSION", "INT64", np.full((b, 1), record.version, dtype=np.int64)),
            ("REFERENCE_CREATED_AT", "BYTES",
             np.full((b, 1), record.created_at.isoformat().encode(), dtype=object)),
        ):  # fmt: skip
            tensor = g.InferInput(name, [b, 1], dtype)
            tensor.set_data_from_numpy(value)
            inputs.append(tensor)
        outputs = []
        for i, (name, _shape) in enumerate(self.outputs):
            out = g.InferRequestedOutput(name)
            if self.transport == "shm":
                out.set_shared_memory(self.regions[i + 1][0], self.sizes[name])
            outputs.append(out)
        result = self.client.infer(self.model, inputs, outputs=outputs, client_timeout=120.0)
        if self.transport == "grpc":
            return [result.as_numpy(name) for name, _ in self.outputs]
        levels = []
        for i, (name, shape) in enumerate(self.outputs):
            meta = result.get_output(name)
            dims = list(meta.shape) if meta is not None else shape
            # a copy: the region is reused by the next call and unmapped by close()
            region = self.regions[i + 1][1]
            levels.append(self.shm.get_contents_as_numpy(region, np.float32, dims).copy())
        return levels

    def close(self) -> None:
        for region, handle in self.regions:
            _unregister_when_released(self.client, region)
            self.shm.destroy_shared_memory_region(handle)
        self.regions = []
        self.client.close()


def _in_use(exc: BaseException) -> bool:
    return "currently in use" in str(exc)


def _unregister_when_released(client, region: str) -> None:
    """Unregister a system shared memory region, waiting (up to 10 s) while the server still
    holds it: Triton 2.51 releases a region shortly after the response of the request that
    used it and refuses to unregister it until then ("it is currently in use"; deferred
    unregistering came in server PR #7743, 2.52)."""
    from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_fixed

    retrying = Retrying(
        retry=retry_if_exception(_in_use),
        stop=stop_after_delay(10),
        wait=wait_fixed(0.05),
        reraise=True,
    )
    retrying(client.unregister_system_shared_memory, region)


def uuid_hex() -> str:
    import uuid

    return uuid.uuid4().hex[:10]


def add_float32_twin(repo: Path, spec) -> None:
    """Write :data:`FEATURES_F32` next to ``adqc_features``: the same checkpoint and code,
    with the split layout's preprocessed float32 INPUT instead of uint8 IMAGES."""
    import dataclasses
    import shutil

    from deploy import triton_repo

    twin = repo / FEATURES_F32
    (twin / "1").mkdir(parents=True, exist_ok=True)
    source = repo / triton_repo.FEATURES / "1"
    shutil.copyfile(source / "model.py", twin / "1" / "model.py")
    shutil.copyfile(source / triton_repo.CHECKPOINT_FILE, twin / "1" / triton_repo.CHECKPOINT_FILE)
    original = triton_repo.read_config(repo / triton_repo.FEATURES / "config.pbtxt")
    params = {k: v.string_value for k, v in original.parameters.items()}
    params.pop("input_is_preprocessed", None)
    config = triton_repo.features_config(dataclasses.replace(spec, split_preprocess=True), **params)
    config.name = FEATURES_F32
    triton_repo.write_config(config, twin)


def run_matrix(
    *,
    batch: int = 8,
    concurrency: tuple[int, ...] = (1, 2, 4, 8),
    payloads: tuple[str, ...] = PAYLOADS,
    transports: tuple[str, ...] = TRANSPORTS,
    requests: int = 16,
    warmup: int = 2,
    backbone: str = "mobilenet_v2",
    checkpoint: Path | None = None,
    shots: int = 8,
    torch_threads: int = 0,
    local_runtimes: tuple[str, ...] = ("torch", "onnxruntime"),
    log_dir: Path | None = None,
    progress=print,
) -> dict:
    """Images/s and p50/p99 per (payload, transport, concurrency) against one tritonserver,
    then the same batch in this process per runtime (after the server stopped): see
    docs/PERFORMANCE.md. ``requests`` per cell (p99 of 16 is close to the max)."""
    import os

    import torch

    from deploy.servers import RedisServer, TritonServer
    from inference.engines.local import LocalEngine
    from pretrain.preprocess import to_model_input

    load_start = os.getloadavg()
    rng = np.random.default_rng(1)
    cells = []
    with tempfile.TemporaryDirectory(prefix="adqc-bench-triton-") as tmp, RedisServer() as redis:
        repo, spec, model, record = _served_repository(
            Path(tmp), redis.url, backbone, checkpoint, max(16, batch), torch_threads, shots
        )
        if "float32" in payloads:
            add_float32_twin(repo, spec)
        u8 = rng.integers(0, 256, (batch, spec.image_size, spec.image_size, 3), dtype=np.uint8)
        f32 = to_model_input(torch.from_numpy(u8), model.spec).numpy()
        t0 = time.perf_counter()
        for _ in range(10):
            to_model_input(torch.from_numpy(u8), model.spec)
        normalise_ms = (time.perf_counter() - t0) * 100
        shapes = [tuple(int(d) for d in s) for s in spec.level_shapes]
        workdir = Path(log_dir) if log_dir is not None else Path(tmp) / "triton"
        # one model at a time: two python stubs initialising at once on a loaded 2-core machine
        # aborted tritonserver (boost::interprocess::lock_exception) in this benchmark's runs
        with TritonServer(repo, workdir=workdir, startup_timeout=600,
                          extra_args=["--model-load-thread-count=1"]) as triton:  # fmt: skip
            for payload in payloads:
                images = u8 if payload == "uint8" else f32
                for transport in transports:
                    for c in concurrency:

                        def factory(p=payload, t=transport):  # noqa: E306
                            return RawClient(triton.grpc_url, p, t, batch, spec.image_size, shapes)

                        try:
                            cell = measure(factory, record, images, requests, warmup, c)
                        except Exception as exc:  # noqa: BLE001 - the cell says why
                            cell = {"concurrency": c, "errors": requests, "error": str(exc)[:500]}
                        cell.update(payload=payload, transport=transport,
                                    payload_bytes=int(images.nbytes))  # fmt: skip
                        cells.append(cell)
                        progress(
                            f"{payload} {transport} c={c}: "
                            f"{cell.get('throughput_images_per_s', 0):.1f} images/s, "
                            f"p50 {cell.get('latency_ms_p50', 0):.0f} ms, "
                            f"errors {cell.get('errors')} {cell.get('error', '')[:200]}"
                        )
            server = {}
            for name in ("adqc_features", FEATURES_F32):
                if name == "adqc_features" or "float32" in payloads:
                    try:
                        server[name] = _server_stats(triton.grpc_url, name)
                    except Exception as exc:  # noqa: BLE001 - e.g. the server died
                        server[name] = {"error": str(exc)[:300]}
            load_during = os.getloadavg()
            log_tail = (
                triton.log_path.read_text(errors="replace").splitlines()[-80:]
                if any(cell.get("errors") for cell in cells)
                else []
            )
        # after the server stopped, so the two do not compete for the CPUs
        in_process = {}
        for runtime in local_runtimes:
            engine = LocalEngine(model=model, runtime=runtime)
            cell = measure(lambda e=engine: _Calls(e.features), record, u8, requests, warmup, 1)
            in_process[runtime] = cell
    ok = [c for c in cells if c.get("throughput_images_per_s")]
    base = min(ok, key=lambda c: (c["payload"] != "uint8", c["transport"] != "grpc",
                                  c["concurrency"]), default=None)  # fmt: skip
    overhead = {
        runtime: round(base["throughput_images_per_s"] / cell["throughput_images_per_s"], 3)
        for runtime, cell in in_process.items()
        if base is not None and cell.get("throughput_images_per_s")
    }
    return {
        "batch": batch,
        "cells": cells,
        "server": server,
        "in_process": in_process,
        "triton_over_in_process": overhead,
        "client_normalise_ms_per_batch": round(normalise_ms, 3),
        "model_id": spec.model_id,
        "pool_patches": [int(a.shape[0]) for a in record.pool],
        "shots": shots,
        "torch_threads": torch_threads or torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "loadavg_start": [round(x, 2) for x in load_start],
        "loadavg_during_triton": [round(x, 2) for x in load_during],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "server_log_tail": log_tail,
    }


class _Calls:
    """What ``measure`` times, as an engine it may close without closing anything shared:
    ``features(images, record)`` calls ``call(images, record)``."""

    def __init__(self, call) -> None:
        self.call = call

    def features(self, images, record):
        return self.call(images, record)

    def close(self) -> None:
        pass


# ------------------------------------------------------------------- the default's stride-8 path
def _measured(call, images: np.ndarray, requests: int, warmup: int) -> dict:
    """``measure`` of ``requests`` sequential ``call(images)``; a failed call stops the bench."""
    result = measure(lambda: _Calls(lambda x, _record: call(x)), None, images, requests, warmup, 1)
    if result["errors"]:
        raise RuntimeError(result["error"])
    return result


def run_stride8(*, batch: int = 8, requests: int = 16, warmup: int = 2, progress=print) -> dict:
    """The default detector's engine step, the stride-8 features, served by ``adqc_stride8``
    (``TritonEngine.stride8``, uint8 over gRPC) against the worker's in-process
    ``Stride8Features`` (ONNX Runtime, and torch) at the same batch, after the server stopped."""
    import os

    from deploy.servers import RedisServer, TritonServer
    from deploy.triton_repo import build_model_repository
    from inference.engines.triton import TritonEngine
    from inference.stride8 import Stride8Features
    from pretrain.detectors.ensemble import S8_INPUT_SIZE as SIZE  # what adqc_stride8 takes

    load_start = os.getloadavg()
    u8 = np.random.default_rng(1).integers(0, 256, (batch, SIZE, SIZE, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory(prefix="adqc-bench-s8-") as tmp, RedisServer() as redis:
        repo = Path(tmp) / "model_repository"
        build_model_repository(repo, redis_url=redis.url, max_batch=max(16, batch), kind="cpu")
        with TritonServer(repo, workdir=Path(tmp) / "triton", startup_timeout=600,
                          extra_args=["--model-load-thread-count=1"]) as triton:  # fmt: skip
            engine = TritonEngine(triton.grpc_url, timeout_s=120)
            if engine.stride8_size != SIZE:  # else the engine would run it in process
                raise RuntimeError(f"adqc_stride8 takes {engine.stride8_size} px, not {SIZE}")
            served = _measured(engine.stride8, u8, requests, warmup)
            progress(f"triton adqc_stride8: {served['throughput_images_per_s']} images/s")
            engine.close()
            load_during = os.getloadavg()
    in_process = {}
    for runtime in ("onnxruntime", "torch"):
        extractor = Stride8Features(runtime=runtime, image_size=SIZE)
        in_process[runtime] = _measured(extractor, u8, requests, warmup)
        progress(f"in-process {runtime}: {in_process[runtime]['throughput_images_per_s']} images/s")
    rate = served["throughput_images_per_s"]
    return {
        "batch": batch,
        "image_size": SIZE,
        "triton": served,
        "in_process": in_process,
        "triton_over_in_process": {
            k: round(rate / v["throughput_images_per_s"], 3) for k, v in in_process.items()
        },
        "cpus": os.cpu_count(),
        "loadavg_start": [round(x, 2) for x in load_start],
        "loadavg_during_triton": [round(x, 2) for x in load_during],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
    }
