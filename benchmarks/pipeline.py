"""The pipeline benchmark: sustained frames/s and end-to-end latency through Kafka.

Given a running Kafka broker and Redis (:func:`run_with_servers` starts its own, with
``deploy.servers``, for the ``adqc bench pipeline`` command in :mod:`benchmarks.cli`), this
module

1. onboards a product (K good shots) into Redis with the local engine;
2. measures the **engine-only** rate in this process, on the same decoded frames and batch
   size, on a worker thread as in the serve loop: ``Scorer.score`` (resize + engine features
   + anomaly maps + regions), and the engine's ``features`` call alone;
3. **throughput**: publishes N frames as a backlog, starts ``adqc serve`` as a separate
   process and measures the sustained rate from the timestamps of the result records
   (after a warm-up of two batches);
4. **latency**: with the same worker, publishes frames at a fixed fraction of that rate
   (an open-loop camera) and measures capture time -> result received, p50 / p99;
5. stops the worker with SIGTERM (it must drain and exit 0);
6. measures the engine-only rate again: the reported rate is the mean of the two runs that
   bracket the pipeline, and both are kept, so load changes during the run are visible.

The frame mix is one defective frame in ``defect_every`` (alarms carry an inline heatmap).
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.structs import TopicPartition
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ingest.camera import CameraSimulator, list_images
from ingest.schemas import ResultMessage
from ingest.settings import KafkaSettings

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mvtec_ad" / "bottle"


class BenchError(RuntimeError):
    """The benchmark could not run (missing data, worker crashed, timeout); says why."""


@dataclass
class BenchConfig:
    """What to measure and how."""

    frames: int = 400
    batch_size: int = 8
    max_wait_ms: int = 20
    decode_workers: int = 1
    shots: int = 8
    defect_every: int = 5
    latency_frames: int = 200
    latency_load: float = 0.7
    partitions: int = 2
    checkpoint: Path | None = None
    data: Path = DEFAULT_DATA
    engine_frames: int | None = None  # default: as many as the throughput phase
    timeout_s: float = 600.0


@dataclass
class FrameSource:
    shots: list[Path]
    good: list[Path]
    defect: list[Path]

    @classmethod
    def from_mvtec(cls, root: Path, shots: int) -> FrameSource:
        """``train/good`` shots; ``test/good`` and ``test/<defect>`` frames (MVTec layout)."""
        if not (root / "train" / "good").is_dir() or not (root / "test" / "good").is_dir():
            raise BenchError(
                f"{root}: expected an MVTec-layout folder (train/good, test/good, test/<defect>)"
            )
        train = list_images(root / "train" / "good")
        if len(train) < shots:
            raise BenchError(f"{root}/train/good has {len(train)} images, fewer than {shots}")
        defect = [
            p
            for d in sorted((root / "test").iterdir())
            if d.is_dir() and d.name != "good"
            for p in list_images(d)
        ]
        return cls(train[:shots], list_images(root / "test" / "good"), defect)

    def sequence(self, n: int, defect_every: int) -> list[Path]:
        """n frames: ``defect_every - 1`` good frames, then one defective, repeated."""
        good = itertools.cycle(self.good)
        bad = itertools.cycle(self.defect or self.good)
        return [next(bad) if (i + 1) % defect_every == 0 else next(good) for i in range(n)]


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def engine_only(
    engine: Any, scorer: Any, product: str, images: list[np.ndarray], batch: int
) -> dict[str, float]:
    """Frames/s of ``Scorer.score`` and of ``engine.features`` alone, in this process."""
    from pretrain.preprocess import resize_uint8

    record = scorer.record(product)
    scorer.score(images[:batch], product)  # warm-up (allocations, caches)
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(0, len(images), batch):
        scorer.score(images[i : i + batch], product)
    scorer_s, scorer_cpu = time.perf_counter() - t0, time.process_time() - c0
    resized = [resize_uint8(im, engine.image_size) for im in images]
    t0 = time.perf_counter()
    for i in range(0, len(resized), batch):
        engine.features(np.stack(resized[i : i + batch]), record)
    features_s = time.perf_counter() - t0
    return {
        "engine_frames_per_s": len(images) / scorer_s,
        "engine_features_frames_per_s": len(images) / features_s,
        "engine_cpu_ms_per_frame": 1000.0 * scorer_cpu / len(images),
    }


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc), its threads included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _ResultReader:
    """Reads the results topic from the beginning; remembers receive times."""

    def __init__(self, client: dict[str, Any], topic: str, partitions: int) -> None:
        self.consumer = KafkaConsumer(
            **client,
            group_id=None,
            enable_auto_commit=False,
            fetch_max_wait_ms=100,
            client_id="adqc-bench-results",
        )
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        self.consumer.assign(tps)
        self.consumer.seek_to_beginning(*tps)
        self.records: list[tuple[float, int, ResultMessage]] = []  # (received, kafka ts ms, msg)

    def pump(self, timeout_ms: int) -> None:
        """Poll once and record what arrived."""
        for records in self.consumer.poll(timeout_ms=timeout_ms).values():
            now = time.time()
            for r in records:
                self.records.append((now, r.timestamp, ResultMessage.from_bytes(r.value)))

    def until(self, n: int, deadline: float, check: Callable[[], None]) -> None:
        """Pump until ``n`` results are in; ``check`` raises if the worker died."""
        while len(self.records) < n:
            if time.monotonic() > deadline:
                raise BenchError(f"timed out with {len(self.records)} of {n} results")
            check()
            self.pump(50)

    def close(self) -> None:
        self.consumer.close()


def _create_topics(client: dict[str, Any], names: list[str], partitions: int) -> None:
    admin = KafkaAdminClient(**client | {"client_id": "adqc-bench"})
    try:
        admin.create_topics([NewTopic(n, partitions, 1) for n in names])
    finally:
        admin.close()


def _end_offsets(client: dict[str, Any], topic: str, partitions: int) -> int:
    consumer = KafkaConsumer(**client, group_id=None)
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        return int(sum(consumer.end_offsets(tps).values()))
    finally:
        consumer.close()


def run_pipeline_bench(
    bootstrap: str | KafkaSettings,
    redis_url: str,
    serve_argv: Callable[[Path], list[str]],
    workdir: Path,
    config: BenchConfig,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run the benchmark against a broker and Redis; returns the result dictionary.

    ``bootstrap`` is a ``host:port`` or full :class:`KafkaSettings` (TLS, SASL): every client
    here and the serve worker use them; a SASL password reaches the worker through its
    environment, never through the config file written to ``workdir``.
    """
    import torch

    from inference.engines.local import LocalEngine
    from inference.onboarding import onboard
    from inference.scorer import Scorer
    from inference.store import open_store
    from pretrain.preprocess import load_image

    console = console or Console(stderr=True)
    if isinstance(bootstrap, KafkaSettings):
        kafka = bootstrap
    else:
        kafka = KafkaSettings(bootstrap=[bootstrap])
    client = {k: v for k, v in kafka.client_config().items() if k != "client_id"}
    worker_env = dict(os.environ)
    if kafka.sasl_password is not None:
        worker_env["ADQC_KAFKA__SASL_PASSWORD"] = kafka.sasl_password.get_secret_value()
    source = FrameSource.from_mvtec(config.data, config.shots)
    load_before = os.getloadavg()
    run = uuid.uuid4().hex[:6]
    product = f"bench-{run}"
    topics = {k: f"bench-{run}-{k}" for k in ("frames", "results", "alarms", "dlq")}

    console.print(f"onboarding {product} from {len(source.shots)} shots of {config.data}")
    engine = LocalEngine(checkpoint=config.checkpoint)
    store = open_store(redis_url)
    onboard(engine, store, product, source.shots, shots=config.shots)
    scorer = Scorer(engine, store, batch_size=config.batch_size)

    frames = source.sequence(config.frames, config.defect_every)
    decoded = {p: load_image(p) for p in set(frames)}
    sample = [decoded[p] for p in frames[: config.engine_frames or len(frames)]]
    console.print(f"engine-only: {len(sample)} frames, batch {config.batch_size}")

    # On a worker thread, as in the serve loop (its inference thread), so that the two
    # differ only by what the pipeline adds: Kafka, decoding, publishing, committing.
    def measure_engine() -> dict[str, float]:
        with ThreadPoolExecutor(1, "bench-engine") as pool:
            rates = pool.submit(
                engine_only, engine, scorer, product, sample, config.batch_size
            ).result()
        console.print(
            f"  scorer {rates['engine_frames_per_s']:.1f} frames/s, "
            f"features {rates['engine_features_frames_per_s']:.1f} frames/s"
        )
        return rates

    engine_before = measure_engine()

    _create_topics(client, list(topics.values()), config.partitions)
    serve_config = {
        "kafka": kafka.model_dump(mode="json", exclude={"sasl_password"}),
        "topics": topics,
        "group": f"bench-{run}",
        "batch": {
            "size": config.batch_size,
            "max_wait_ms": config.max_wait_ms,
            "max_in_flight": 8 * config.batch_size,
            "decode_workers": config.decode_workers,
        },
        "engine": {"kind": "local"}
        | ({"checkpoint": str(config.checkpoint)} if config.checkpoint else {}),
        "store": {"url": redis_url},
        "telemetry": {"prometheus_port": None},
        "log_level": "WARNING",
    }
    config_path = workdir / "serve.yaml"
    config_path.write_text(yaml.safe_dump(serve_config))

    producer = KafkaProducer(**client, acks="all", linger_ms=5)
    cams = [
        CameraSimulator(producer, topics["frames"], product, camera=f"cam-{i}")
        for i in range(config.partitions)
    ]
    console.print(f"publishing a backlog of {len(frames)} frames")
    for i, path in enumerate(frames):
        cams[i % len(cams)].publish(path, i)
    producer.flush()

    log_path = workdir / "serve.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed below
    worker = subprocess.Popen(
        serve_argv(config_path), stdout=log, stderr=subprocess.STDOUT, env=worker_env
    )
    reader = _ResultReader(client, topics["results"], config.partitions)

    def alive() -> None:
        if worker.poll() is not None:
            raise BenchError(
                f"serve exited with {worker.returncode}: "
                f"{log_path.read_text(errors='replace')[-3000:]}"
            )

    try:
        deadline = time.monotonic() + config.timeout_s
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        warm = min(2 * config.batch_size, len(frames) - 2)
        cpu_marks: dict[str, float] = {}
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("throughput (backlog)", total=len(frames))
            while len(reader.records) < len(frames):
                reader.until(len(reader.records) + 1, deadline, alive)
                if len(reader.records) > warm and "start" not in cpu_marks:
                    cpu_marks.update(start=process_cpu_s(worker.pid), n0=len(reader.records))
                progress.update(task, completed=len(reader.records))
            cpu_marks.update(end=process_cpu_s(worker.pid), n1=len(reader.records))
        serve_cpu_ms = (
            1000.0 * (cpu_marks["end"] - cpu_marks["start"]) / (cpu_marks["n1"] - cpu_marks["n0"])
            if cpu_marks["n1"] > cpu_marks["n0"]
            else float("nan")
        )
        stamps = sorted(ts for _, ts, _ in reader.records)
        span_s = (stamps[-1] - stamps[warm]) / 1000.0
        frames_per_s = (len(stamps) - 1 - warm) / span_s if span_s > 0 else float("nan")
        batch_sizes = [m.timings.batch_size for _, _, m in reader.records]

        rate = max(1.0, config.latency_load * frames_per_s)
        lat_frames = source.sequence(config.latency_frames, config.defect_every)
        console.print(f"latency: {len(lat_frames)} frames at {rate:.1f} frames/s")
        sent_ids: set[str] = set()
        start = time.monotonic()
        n0 = len(reader.records)
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("latency (open loop)", total=len(lat_frames))
            for i, path in enumerate(lat_frames):
                while (delay := start + i / rate - time.monotonic()) > 0:
                    alive()
                    reader.pump(max(1, min(20, int(delay * 1000))))
                _f, headers = cams[i % len(cams)].publish(path, len(frames) + i)
                producer.flush()
                sent_ids.add(headers.frame_id)
                progress.update(task, completed=i + 1)
            reader.until(n0 + len(lat_frames), deadline, alive)
        latencies = [
            (received - m.capture_time.timestamp()) * 1000.0
            for received, _, m in reader.records
            if m.frame_id in sent_ids
        ]
        worker.send_signal(signal.SIGTERM)
        rc = worker.wait(120)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(30)
        log.close()
        reader.close()
        producer.close()

    # Engine-only again after the pipeline: the two runs bracket it, so a change of machine
    # load during the benchmark shows up as a difference between them.
    console.print("engine-only again (after the pipeline)")
    engine_after = measure_engine()
    engine_rates = {k: (engine_before[k] + engine_after[k]) / 2 for k in engine_before}
    results = reader.records
    alarms = _end_offsets(client, topics["alarms"], config.partitions)
    dlq = _end_offsets(client, topics["dlq"], config.partitions)
    engine_fps = engine_rates["engine_frames_per_s"]
    out: dict[str, Any] = {
        "frames_per_s": round(frames_per_s, 2),
        "engine_frames_per_s": round(engine_fps, 2),
        "engine_features_frames_per_s": round(engine_rates["engine_features_frames_per_s"], 2),
        "engine_frames_per_s_before_after": [
            round(engine_before["engine_frames_per_s"], 2),
            round(engine_after["engine_frames_per_s"], 2),
        ],
        "ratio": round(frames_per_s / engine_fps, 3),
        "serve_cpu_ms_per_frame": round(serve_cpu_ms, 2),
        "engine_cpu_ms_per_frame": round(engine_rates["engine_cpu_ms_per_frame"], 2),
        "cpu_ratio": round(engine_rates["engine_cpu_ms_per_frame"] / serve_cpu_ms, 3),
        "p50_ms": round(_percentile(latencies, 50), 1),
        "p99_ms": round(_percentile(latencies, 99), 1),
        "max_ms": round(max(latencies), 1) if latencies else None,
        "latency_rate_fps": round(rate, 2),
        "latency_frames": len(latencies),
        "frames": len(frames),
        "results": len(results),
        "alarms": alarms,
        "dlq": dlq,
        "mean_batch_size": round(float(np.mean(batch_sizes)), 2),
        "serve_exit_code": rc,
        "kafka_security_protocol": kafka.security_protocol,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        "model_id": results[0][2].model_id if results else None,
    }
    (workdir / "result.json").write_text(json.dumps(out, indent=2))
    return out


def _serve_argv(config: Path) -> list[str]:
    return [
        sys.executable,
        "-c",
        "from adqc.cli import main; main()",
        "serve",
        "--config",
        str(config),
    ]


def _security(protocol: str, directory: Path) -> tuple[dict, dict]:
    """(client KafkaSettings fields, KafkaBroker arguments) for ``protocol``, with throw-away
    certificates in ``directory`` and a random SASL password."""
    import secrets

    from deploy.tls import make_ca

    if protocol == "PLAINTEXT":
        return {}, {}
    ca = make_ca(directory)
    password = secrets.token_urlsafe(16)
    broker = {"tls": ca.issue("broker"), "tls_ca": ca.cert, "sasl_users": {"bench": password}}
    client: dict = {}
    if protocol.endswith("SSL"):
        client["ssl_cafile"] = ca.cert
    if protocol == "SSL":
        pair = ca.issue("bench-client")
        client |= {"ssl_certfile": pair.cert, "ssl_keyfile": pair.key}
    if protocol.startswith("SASL"):
        client |= {
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_username": "bench",
            "sasl_password": password,
        }
    return client, broker


def run_with_servers(
    config: BenchConfig, security_protocol: str, workdir: Path, console: Console
) -> dict[str, Any]:
    """Start a Kafka broker (serving ``security_protocol`` with certificates made for the run
    under ``workdir``) and Redis with ``deploy.servers``, run the benchmark against them with
    ``adqc serve`` as the worker, and stop both; returns the result dictionary."""
    from deploy.servers import KafkaBroker, RedisServer

    console.print(f"starting Kafka ({security_protocol}) and Redis (deploy.servers)")
    security, broker_options = _security(security_protocol, workdir / "tls")
    with (
        KafkaBroker(partitions=config.partitions, **broker_options) as broker,
        RedisServer() as redis,
    ):
        kafka = KafkaSettings(
            bootstrap=[broker.bootstrap_for(security_protocol)],
            security_protocol=security_protocol,
            **security,
        )
        return run_pipeline_bench(kafka, redis.url, _serve_argv, workdir, config, console)
