"""`adqc serve` on a Redis that is only a cache of the durable reference store: a FLUSHALL in
mid-stream loses no product, sends nothing to the DLQ and does not stop the worker."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
from ingest_testkit import (
    ServeProcess,
    onboard_unique,
    producer,
    read_all,
    serve_topics,
    write_config,
)

from ingest.camera import CameraSimulator
from ingest.schemas import ResultMessage

pytestmark = pytest.mark.integration


def test_flushall_mid_stream_is_answered_from_the_durable_copy(
    kafka_broker: Any,
    redis_server_factory: Any,
    local_engine: Any,
    frame_images: Any,
    ingest_checkpoint: Path,
    tmp_path: Path,
) -> None:
    from inference.store import open_store

    redis = redis_server_factory()  # private: FLUSHALL must not touch other tests' keys
    store_url = f"{redis.url}?durable=file://{tmp_path / 'references'}"
    with open_store(store_url) as store:
        name = onboard_unique(local_engine, store, "bottle", frame_images.shots).record.product

    topics, config = serve_topics(kafka_broker, "flush", store_url, ingest_checkpoint)
    path = write_config(tmp_path / "serve.yaml", config)
    images = frame_images.good + frame_images.defect
    prod = producer(kafka_broker.bootstrap)
    camera = CameraSimulator(prod, topics.frames, name)
    sent: list[str] = []

    def publish(start: int, count: int) -> None:
        for i in range(start, start + count):
            _f, headers = camera.publish(images[i % len(images)], i)
            sent.append(headers.frame_id)
        prod.flush()

    worker = ServeProcess(path, tmp_path / "serve.log")
    try:
        publish(0, 6)
        read_all(kafka_broker.bootstrap, topics.results, 6, timeout_s=120, quiet_s=0)
        redis.client().flushall()
        assert redis.client().dbsize() == 0
        publish(6, 6)
        records = read_all(kafka_broker.bootstrap, topics.results, 12, timeout_s=120)
        results = [ResultMessage.from_bytes(r.value) for r in records]
        assert {r.frame_id for r in results} == set(sent)
        assert {r.product for r in results} == {name}
        assert read_all(kafka_broker.bootstrap, topics.dlq, 1, timeout_s=3, quiet_s=0) == []
        assert worker.proc.poll() is None, worker.output()[-3000:]  # still running
        assert redis.client().exists(f"adqc:product:{name}:latest")  # refilled from the copy
        worker.signal(signal.SIGTERM)
        assert worker.wait(60) == 0, worker.output()[-3000:]
    finally:
        worker.stop()
        prod.close()
