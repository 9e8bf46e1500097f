"""Horizontal scaling: the pipeline with 1, 2, 4 ``adqc serve`` workers in one consumer group.

``adqc bench scaling --workers 1,2,4`` (command in :mod:`benchmarks.cli`) starts one Kafka
broker and Redis (``deploy.servers``), onboards one product with the local engine, then for
each worker count N, on fresh topics with ``partitions`` (>= max N) partitions and a fresh
consumer group:

1. starts N ``adqc serve`` processes (local engine, ``threads`` torch/ONNX Runtime threads
   each; ``0`` = ``max(1, cpus // N)``, one deployment per core share) in the same group;
2. waits until the group is *Stable* with N members, each assigned at least one partition
   (the broker's own view, ``describe_groups``);
3. warms every worker up (two batches per worker, spread over all partitions) and waits for
   their results;
4. publishes a backlog of ``frames`` frames, exactly ``frames / partitions`` per partition
   (explicit partition, not key hashing), and measures the steady rate from the result
   records' timestamps after each worker's first batch: ``frames_per_s``; per worker, the
   frames of the partitions it was assigned and its own CPU seconds (``/proc``);
5. SIGTERM: every worker must drain and exit 0.

``ratio_to_1`` = frames/s with N workers / frames/s with 1 worker, in the same run;
``efficiency`` = ratio / N; ``cpu_busy`` = the workers' CPU seconds from the backlog's
publication to its last result / (those seconds x ``cpu_count``): where it reaches ~1 the
machine, not the partitioning, is the limit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from benchmarks.pipeline import (
    DEFAULT_DATA,
    BenchError,
    FrameSource,
    _create_topics,
    _ResultReader,
    _serve_argv,
    process_cpu_s,
)
from ingest.camera import CameraSimulator
from ingest.settings import KafkaSettings


@dataclass
class ScalingConfig:
    """What to measure: worker counts, frames per count, partitions, threads per worker."""

    workers: tuple[int, ...] = (1, 2, 4)
    frames: int = 320
    batch_size: int = 8
    max_wait_ms: int = 20
    shots: int = 8
    defect_every: int = 5
    partitions: int = 0  # 0: max(workers)
    threads: int = 0  # per worker; 0: max(1, cpus // workers)
    checkpoint: Path | None = None
    data: Path = DEFAULT_DATA
    timeout_s: float = 600.0
    cpus: int = field(default_factory=lambda: os.cpu_count() or 1)

    def __post_init__(self) -> None:
        if not self.workers or min(self.workers) < 1:
            raise ValueError(f"workers: at least one count >= 1, got {self.workers}")
        if self.partitions == 0:
            self.partitions = max(self.workers)
        if self.partitions < max(self.workers):
            raise ValueError(
                f"partitions ({self.partitions}) < workers ({max(self.workers)}): the extra "
                "workers of a consumer group would sit idle"
            )
        if self.frames < self.partitions:
            raise ValueError(f"frames ({self.frames}) < partitions ({self.partitions})")

    def threads_for(self, workers: int) -> int:
        """torch / ONNX Runtime threads of each of ``workers`` workers."""
        return self.threads or max(1, self.cpus // workers)


def steady_rate(stamps_ms: list[int], skip: int) -> float:
    """Frames/s from sorted result timestamps (ms), leaving out the first ``skip`` results
    (each worker's first batch lands as a burst: counting it would overstate the rate)."""
    stamps = sorted(stamps_ms)
    skip = max(0, min(skip, len(stamps) - 2))
    span_s = (stamps[-1] - stamps[skip]) / 1000.0 if len(stamps) >= 2 else 0.0
    return (len(stamps) - 1 - skip) / span_s if span_s > 0 else float("nan")


def member_partitions(description: dict[str, Any], topic: str) -> dict[str, list[int]]:
    """``{member client id/member id: [partitions of topic]}`` from one group's entry of
    ``KafkaAdminClient.describe_groups`` (kafka-python 3: decoded assignments as dicts or
    objects)."""
    out: dict[str, list[int]] = {}
    for member in description.get("members", []):
        assignment = member.get("member_assignment")
        if isinstance(assignment, dict):
            pairs = [
                (a.get("topic"), a.get("partitions", []))
                for a in assignment.get("assigned_partitions", [])
            ]
        elif assignment is not None and hasattr(assignment, "assigned_partitions"):
            pairs = [
                (getattr(a, "topic", None) or a[0], getattr(a, "partitions", None) or a[1])
                for a in assignment.assigned_partitions
            ]
        else:
            pairs = []
        name = f"{member.get('client_id', '')}/{member.get('member_id', '')}"
        out[name] = sorted(int(p) for t, ps in pairs if t == topic for p in ps)
    return out


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add ``ratio_to_1`` (against the 1-worker run, else the smallest count) and
    ``efficiency`` (ratio / workers x base workers) to each run, in place."""
    base = min(runs, key=lambda r: r["workers"])
    for run in runs:
        ratio = run["frames_per_s"] / base["frames_per_s"] if base["frames_per_s"] else None
        run["ratio_to_1"] = round(ratio, 3) if ratio is not None else None
        run["efficiency"] = (
            round(ratio * base["workers"] / run["workers"], 3) if ratio is not None else None
        )
    return runs


def _wait_stable(
    client: dict[str, Any], group: str, topic: str, workers: int, deadline: float, alive
) -> dict[str, list[int]]:
    """Until the group is Stable with ``workers`` members, each with a partition."""
    from kafka.admin import KafkaAdminClient
    from kafka.errors import KafkaError

    admin = KafkaAdminClient(**client | {"client_id": "adqc-bench-scaling"})
    description: dict[str, Any] = {}
    try:
        while True:
            alive()
            try:
                description = admin.describe_groups([group]).get(group, {})
            except KafkaError as exc:  # e.g. no coordinator yet on a fresh broker
                if not exc.retriable or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
                continue
            assigned = member_partitions(description, topic)
            if (
                str(description.get("group_state", description.get("state", ""))) == "Stable"
                and len(assigned) == workers
                and all(assigned.values())
            ):
                return assigned
            if time.monotonic() > deadline:
                raise BenchError(f"group {group} not stable with {workers} members: {description}")
            time.sleep(0.5)
    finally:
        admin.close()


def run_scaling_bench(
    kafka: KafkaSettings,
    redis_url: str,
    workdir: Path,
    config: ScalingConfig,
    console: Console | None = None,
    serve_argv: Callable[[Path], list[str]] = _serve_argv,
) -> dict[str, Any]:
    """Run every worker count against the broker and Redis; returns the result dictionary."""
    from kafka import KafkaProducer

    from inference.engines.local import LocalEngine
    from inference.onboarding import onboard
    from inference.store import open_store

    console = console or Console(stderr=True)
    client = {k: v for k, v in kafka.client_config().items() if k != "client_id"}
    source = FrameSource.from_mvtec(config.data, config.shots)
    load_before = os.getloadavg()
    run = uuid.uuid4().hex[:6]
    product = f"scale-{run}"
    console.print(f"onboarding {product} from {len(source.shots)} shots of {config.data}")
    engine = LocalEngine(checkpoint=config.checkpoint)  # also writes the ONNX cache once
    onboard(engine, open_store(redis_url), product, source.shots, shots=config.shots)
    model_id = engine.model_id
    del engine

    producer = KafkaProducer(**client, acks="all", linger_ms=5)
    camera = CameraSimulator(producer, "unused", product, camera="cam-scale")
    runs = []
    try:
        for n in config.workers:
            runs.append(_one_count(n, config, client, kafka, redis_url, workdir, run, producer,
                                   camera, source, console, serve_argv))  # fmt: skip
    finally:
        producer.close()
    summarise(runs)
    return {
        "cpu_count": config.cpus,
        "workers": list(config.workers),
        "partitions": config.partitions,
        "frames": config.frames,
        "batch_size": config.batch_size,
        "model_id": model_id,
        "runs": runs,
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
    }


def _one_count(
    n: int,
    config: ScalingConfig,
    client: dict[str, Any],
    kafka: KafkaSettings,
    redis_url: str,
    workdir: Path,
    run: str,
    producer: Any,
    camera: CameraSimulator,
    source: FrameSource,
    console: Console,
    serve_argv: Callable[[Path], list[str]],
) -> dict[str, Any]:
    """One worker count: start, wait for a stable group, warm up, backlog, SIGTERM."""
    load_start = os.getloadavg()
    threads = config.threads_for(n)
    topics = {k: f"scale-{run}-n{n}-{k}" for k in ("frames", "results", "alarms", "dlq")}
    group = f"scale-{run}-n{n}"
    _create_topics(client, list(topics.values()), config.partitions)
    serve_config = {
        "kafka": kafka.model_dump(mode="json", exclude={"sasl_password"}),
        "topics": topics,
        "group": group,
        "batch": {
            "size": config.batch_size,
            "max_wait_ms": config.max_wait_ms,
            "max_in_flight": 8 * config.batch_size,
        },
        "engine": {"kind": "local", "torch_threads": threads}
        | ({"checkpoint": str(config.checkpoint)} if config.checkpoint else {}),
        "store": {"url": redis_url},
        "telemetry": {"prometheus_port": None},
        "log_level": "WARNING",
    }
    config_path = workdir / f"serve-n{n}.yaml"
    config_path.write_text(yaml.safe_dump(serve_config))
    camera.topic = topics["frames"]

    def send(frames: list[Path], first: int) -> None:
        messages = [camera.message(p, first + i) for i, p in enumerate(frames)]
        for i, (key, value, headers) in enumerate(messages):
            producer.send(
                topics["frames"],
                key=key,
                value=value,
                headers=headers.to_kafka(),
                partition=i % config.partitions,
            )
        producer.flush()

    console.print(f"[{n} worker(s), {threads} thread(s) each] starting")
    started = time.monotonic()
    logs = [open(workdir / f"serve-n{n}-{i}.log", "wb") for i in range(n)]  # noqa: SIM115
    procs = [
        subprocess.Popen(serve_argv(config_path), stdout=log, stderr=subprocess.STDOUT)
        for log in logs
    ]
    reader = _ResultReader(client, topics["results"], config.partitions)

    def alive() -> None:
        for i, proc in enumerate(procs):
            if proc.poll() is not None:
                text = (workdir / f"serve-n{n}-{i}.log").read_text(errors="replace")
                raise BenchError(f"worker {i} exited with {proc.returncode}: {text[-3000:]}")

    try:
        deadline = time.monotonic() + config.timeout_s
        assigned = _wait_stable(client, group, topics["frames"], n, deadline, alive)
        join_s = time.monotonic() - started
        warm = source.sequence(2 * config.batch_size * n, config.defect_every)
        send(warm, 0)
        reader.until(len(warm), deadline, alive)
        n0 = len(reader.records)
        frames = source.sequence(config.frames, config.defect_every)
        console.print(f"  joined in {join_s:.1f} s; backlog of {len(frames)} frames")
        cpu0 = [process_cpu_s(p.pid) for p in procs]
        published = time.time()
        send(frames, len(warm))
        reader.until(n0 + len(frames), deadline, alive)
        cpu1 = [process_cpu_s(p.pid) for p in procs]
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        codes = [proc.wait(120) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
        for log in logs:
            log.close()
        reader.close()

    backlog = reader.records[n0:]
    stamps = [ts for _, ts, _ in backlog]
    skip = config.batch_size * n
    rate = steady_rate(stamps, skip)
    window_s = (max(stamps) - sorted(stamps)[min(skip, len(stamps) - 2)]) / 1000.0
    by_partition: dict[int, list[int]] = {}
    for _, ts, message in backlog:
        by_partition.setdefault(message.source.partition, []).append(ts)
    pids = [p.pid for p in procs]
    per_worker = []
    for name, parts in sorted(assigned.items()):
        worker_stamps = [ts for p in parts for ts in by_partition.get(p, [])]
        per_worker.append(
            {
                "member": name,
                "partitions": parts,
                "frames": len(worker_stamps),
                "frames_per_s": round(steady_rate(worker_stamps, config.batch_size), 2),
            }
        )
    cpu_s = [round(b - a, 2) for a, b in zip(cpu0, cpu1, strict=True)]
    total_s = max(stamps) / 1000.0 - published
    result = {
        "workers": n,
        "threads_per_worker": threads,
        "frames_per_s": round(rate, 2),
        "frames_per_s_per_worker": round(rate / n, 2),
        "publish_to_last_frames_per_s": round(len(frames) / total_s, 2),
        "per_worker": per_worker,
        "worker_cpu_s": cpu_s,
        "worker_pids": pids,
        "cpu_busy": round(sum(cpu_s) / max(total_s, 1e-9) / config.cpus, 3),
        "cpu_ms_per_frame": round(1000.0 * sum(cpu_s) / len(frames), 1),
        "window_s": round(window_s, 2),
        "join_s": round(join_s, 1),
        "results": len(backlog),
        "serve_exit_codes": codes,
        "loadavg_start": [round(x, 2) for x in load_start],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
    }
    console.print(
        f"  {result['frames_per_s']} frames/s ({result['frames_per_s_per_worker']} per worker), "
        f"CPU busy {result['cpu_busy']}, exit codes {codes}"
    )
    return result


def run_with_servers(config: ScalingConfig, workdir: Path, console: Console) -> dict[str, Any]:
    """Start Kafka and Redis with ``deploy.servers``, run :func:`run_scaling_bench`, stop both."""
    from deploy.servers import KafkaBroker, RedisServer

    console.print("starting Kafka and Redis (deploy.servers)")
    with KafkaBroker(partitions=config.partitions) as broker, RedisServer() as redis:
        kafka = KafkaSettings(bootstrap=[broker.bootstrap])
        return run_scaling_bench(kafka, redis.url, workdir, config, console)
