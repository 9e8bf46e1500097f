"""The ingest and store limits (``adqc bench io``): Redis reference fetch, Kafka raw rates.

- **Redis reference fetch** (``inference.store`` on a real Redis): a record with a K-shot pool
  shaped like the shipped backbone's (MobileNetV2: 64/96/320 channels, 14/14/7 grids: K x 196,
  K x 196, K x 49 rows; the content does not change the cost) is published, then read
  *cold* (a fresh store whose connection is already open: serving-pointer read, one MULTI of
  the blobs, decode) and *warm* (the same store again: the pointer read, then its cache), as
  ``Scorer.record`` does once per batch. Median and p99 ms of ``repeats`` calls.
- **Kafka raw produce / consume** of frame-sized messages (default: the bytes of the first
  test image of the data folder, e.g. a 900x900 MVTec PNG; else random bytes) on a
  ``partitions``-partition topic: producer ``acks=all``, ``linger_ms=5`` (as the camera
  simulator and the pipeline benchmark); consumer assigned every partition from the
  beginning, no group. Messages/s and MB/s: the ceiling of what one process can ingest,
  without decode or scoring.
"""

from __future__ import annotations

import os
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def pool_record(shots: int, product: str, seed: int = 0) -> Any:
    """A FeatureNorm record whose pool has the shipped backbone's shapes for ``shots`` shots."""
    from benchmarks.triton import featurenorm_record
    from pretrain.backbones.cnn import MOBILENET_V2

    rng = np.random.default_rng(seed)
    pool = [
        rng.standard_normal((shots * g * g, c), dtype=np.float32)
        for c, g in zip(MOBILENET_V2.channels, MOBILENET_V2.grid_sizes, strict=True)
    ]
    return featurenorm_record(
        product,
        "mobilenet_v2:bench0000000",
        MOBILENET_V2.name,
        MOBILENET_V2.image_size,
        shots,
        pool,
    )


def bench_redis(redis_url: str, shots: tuple[int, ...] = (8, 64), repeats: int = 20) -> list[dict]:
    """Cold and warm reference fetch per pool size K (see the module docstring)."""
    from inference.store import open_store

    rows = []
    for k in shots:
        product = f"io-{uuid.uuid4().hex[:8]}"
        record = pool_record(k, product)
        writer = open_store(redis_url)
        writer.publish(record)
        writer.close()
        cold, warm = [], []
        for _ in range(repeats):
            store = open_store(redis_url)
            store.ping()  # the connection is open: cold measures the fetch, not the connect
            t0 = time.perf_counter()
            store.get(product)
            cold.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            store.get(product)
            warm.append((time.perf_counter() - t0) * 1000)
            store.close()
        nbytes = sum(a.nbytes for a in record.pool)
        rows.append(
            {
                "shots": k,
                "pool_rows": [int(a.shape[0]) for a in record.pool],
                "pool_mb": round(nbytes / 1e6, 2),
                "cold_ms_p50": round(statistics.median(cold), 3),
                "cold_ms_p99": round(_percentile(cold, 99), 3),
                "warm_ms_p50": round(statistics.median(warm), 3),
                "warm_ms_p99": round(_percentile(warm, 99), 3),
                "cold_mb_per_s": round(nbytes / 1e6 / (statistics.median(cold) / 1000), 1),
                "cold_over_warm": round(statistics.median(cold) / statistics.median(warm), 1),
                "repeats": repeats,
            }
        )
    return rows


def frame_bytes(data: Path | None, size: int = 0) -> tuple[bytes, str]:
    """(payload, where it came from): ``size`` random bytes, else the first test image."""
    if not size and data is not None:
        from ingest.camera import list_images

        root = data / "test" if (data / "test").is_dir() else data
        try:
            path = list_images(root)[0]
            return path.read_bytes(), str(path)
        except (OSError, ValueError):
            pass
    size = size or 400_000
    return np.random.default_rng(0).bytes(size), f"{size} random bytes"


def bench_kafka(
    bootstrap: str, payload: bytes, messages: int = 1000, partitions: int = 2
) -> dict[str, Any]:
    """Raw produce and consume rates of ``messages`` copies of ``payload``."""
    from kafka import KafkaConsumer, KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.structs import TopicPartition

    topic = f"io-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="adqc-bench-io")
    try:
        admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        admin.close()
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=5,
        max_request_size=max(1_048_576, 2 * len(payload)),
    )
    try:
        producer.send(topic, value=payload, partition=0).get(timeout=60)  # metadata, warm-up
        t0 = time.perf_counter()
        futures = [
            producer.send(topic, value=payload, partition=i % partitions) for i in range(messages)
        ]
        producer.flush()
        for future in futures:
            future.get(timeout=60)
        produce_s = time.perf_counter() - t0
    finally:
        producer.close()
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        max_partition_fetch_bytes=max(1_048_576, 2 * len(payload)),
    )
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        total, seen = messages + 1, 0
        t0 = time.perf_counter()
        deadline = time.monotonic() + 300
        while seen < total and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                seen += len(records)
        consume_s = time.perf_counter() - t0
    finally:
        consumer.close()
    mb = len(payload) * messages / 1e6
    return {
        "message_bytes": len(payload),
        "messages": messages,
        "partitions": partitions,
        "produce_msgs_per_s": round(messages / produce_s, 1),
        "produce_mb_per_s": round(mb / produce_s, 1),
        "consume_msgs_per_s": round(seen / consume_s, 1),
        "consume_mb_per_s": round(len(payload) * seen / 1e6 / consume_s, 1),
        "consumed": seen,
    }


def run_io(
    redis_url: str,
    bootstrap: str,
    *,
    shots: tuple[int, ...] = (8, 64),
    repeats: int = 20,
    messages: int = 1000,
    message_bytes: int = 0,
    partitions: int = 2,
    data: Path | None = None,
) -> dict[str, Any]:
    """Both benchmarks against running servers; a JSON-friendly dict."""
    load_start = os.getloadavg()
    payload, source = frame_bytes(data, message_bytes)
    result = {
        "redis_reference_fetch": bench_redis(redis_url, shots, repeats),
        "kafka_raw": bench_kafka(bootstrap, payload, messages, partitions) | {"payload": source},
        "cpu_count": os.cpu_count(),
        "loadavg_start": [round(x, 2) for x in load_start],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
    }
    return result


def run_with_servers(**kwargs: Any) -> dict[str, Any]:
    """Start Redis and Kafka with ``deploy.servers``, run :func:`run_io`, stop both."""
    from deploy.servers import KafkaBroker, RedisServer

    # generous start-up limits: on a loaded 2-core machine the JVM alone can take minutes
    with KafkaBroker(startup_timeout=300) as broker, RedisServer(startup_timeout=120) as redis:
        return run_io(redis.url, broker.bootstrap, **kwargs)
