"""Transient outages on real Kafka + Redis: the loop retries with back-off, commits nothing
meanwhile, recovers."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from ingest_testkit import (
    committed,
    onboard_unique,
    producer,
    read_all,
    running_loop,
    serve_topics,
)

from ingest.camera import CameraSimulator
from ingest.schemas import ResultMessage
from ingest.settings import load_settings
from ingest.telemetry import Telemetry


@pytest.mark.integration
def test_store_outage_is_retried_without_committing(
    kafka_broker: Any,
    redis_server_factory: Any,
    local_engine: Any,
    frame_images: Any,
    ingest_checkpoint: Path,
) -> None:
    from inference.scorer import Scorer
    from inference.store import open_store

    redis = redis_server_factory(appendonly=True)
    store = open_store(redis.url)
    name = onboard_unique(local_engine, store, "outage", frame_images.shots).record.product
    scorer = Scorer(local_engine, store, batch_size=4)
    topics, config = serve_topics(kafka_broker, "outage", redis.url, ingest_checkpoint)
    config["telemetry"] = {"prometheus_port": 0, "prometheus_addr": "127.0.0.1"}
    config["retry"] = {"initial_backoff_s": 0.1, "max_backoff_s": 0.5}
    settings = load_settings(None, **config)
    telemetry = Telemetry(settings.telemetry)
    port = telemetry.start_metrics_server()
    prod = producer(kafka_broker.bootstrap)
    cam = CameraSimulator(prod, topics.frames, name, camera="cam-1")
    images = frame_images.good[:4]
    try:
        with running_loop(settings, scorer, telemetry) as loop:
            for i, path in enumerate(images):
                cam.publish(path, i)
            prod.flush()
            assert len(read_all(kafka_broker.bootstrap, topics.results, 4, quiet_s=0.5)) == 4
            time.sleep(0.5)  # let the commit of the first four happen
            redis.stop()
            for i, path in enumerate(images, start=4):
                cam.publish(path, i)
            prod.flush()
            time.sleep(3.0)
            during = read_all(kafka_broker.bootstrap, topics.results, 5, timeout_s=1.0)
            assert len(during) == 4, "no result can be made while the store is down"
            assert committed(kafka_broker.bootstrap, topics.group, topics.frames) == {0: 4}
            assert loop.running.is_set(), "the loop must not exit on an outage"
            metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
            assert 'adqc_retries_total{cause="StoreUnavailableError"}' in metrics
            redis.start()
            after = read_all(kafka_broker.bootstrap, topics.results, 8, timeout_s=60)
    finally:
        prod.close()
        telemetry.shutdown()
    offsets = sorted(ResultMessage.from_bytes(r.value).source.offset for r in after)
    assert offsets == list(range(8))
    assert committed(kafka_broker.bootstrap, topics.group, topics.frames) == {0: 8}
    assert read_all(kafka_broker.bootstrap, topics.dlq, 1, timeout_s=0.5, quiet_s=0) == []
