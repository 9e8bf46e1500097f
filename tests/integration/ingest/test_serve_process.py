"""`adqc serve` as a real process: hard kill + restart (at-least-once), SIGTERM drain."""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from ingest_testkit import (
    ServeProcess,
    committed,
    producer,
    read_all,
    serve_topics,
    write_config,
)

from ingest.alarms import AlarmTail
from ingest.camera import CameraSimulator
from ingest.schemas import ResultMessage

pytestmark = pytest.mark.integration


def _results(records: list[Any]) -> list[ResultMessage]:
    return [ResultMessage.from_bytes(r.value) for r in records]


def test_hard_kill_and_restart_loses_no_frame(
    kafka_broker: Any, product: Any, frame_images: Any, ingest_checkpoint: Path, tmp_path: Path
) -> None:
    topics, config = serve_topics(
        kafka_broker, "kill", product.store_url, ingest_checkpoint, partitions=2
    )
    path = write_config(tmp_path / "serve.yaml", config)
    images = frame_images.good + frame_images.defect
    prod = producer(kafka_broker.bootstrap)
    # cam-a and cam-b hash to different partitions of a 2-partition topic.
    cams = [
        CameraSimulator(prod, topics.frames, product.name, camera=c) for c in ("cam-a", "cam-b")
    ]
    sent: list[str] = []

    def publish(start: int, count: int, fps: float) -> None:
        for i in range(start, start + count):
            _f, headers = cams[i % 2].publish(images[i % len(images)], i)
            sent.append(headers.frame_id)
            prod.flush()
            if fps:
                time.sleep(1.0 / fps)

    first = ServeProcess(path, tmp_path / "first.log")
    second = None
    try:
        publish(0, 6, 0)
        read_all(kafka_broker.bootstrap, topics.results, 2, timeout_s=120)
        # Frames keep coming while the first worker is killed and the second one starts.
        camera = threading.Thread(target=publish, args=(6, 30, 10.0))
        camera.start()
        read_all(kafka_broker.bootstrap, topics.results, 10, timeout_s=60)
        first.kill()
        at_kill = committed(kafka_broker.bootstrap, topics.group, topics.frames)
        second = ServeProcess(path, tmp_path / "second.log")
        camera.join()

        def all_answered(records: list[Any]) -> bool:
            return {r.frame_id for r in _results(records)} >= set(sent)

        results = _results(
            read_all(kafka_broker.bootstrap, topics.results, all_answered, timeout_s=120)
        )
        second.signal(signal.SIGTERM)
        assert second.wait(60) == 0, second.output()[-3000:]
    finally:
        first.stop()
        if second is not None:
            second.stop()
        prod.close()

    # Every frame got a result; only frames not committed when the first worker died repeat.
    counts = Counter(r.frame_id for r in results)
    assert set(counts) == set(sent), first.output()[-2000:] + second.output()[-2000:]
    for r in results:
        if r.source.offset < at_kill.get(r.source.partition, 0):
            assert counts[r.frame_id] == 1, f"committed frame {r.frame_id} was processed again"
        assert counts[r.frame_id] <= 2
    # Redelivered frames get the same alarm id: an MES deduping by id sees each alarm once.
    expected_alarms = {r.alarm_id for r in results if r.decision == "defect"}
    n_alarms = sum(1 for r in results if r.decision == "defect")
    tail = AlarmTail(kafka_broker.bootstrap, topics.alarms, from_beginning=True)
    try:
        unique = list(tail.alarms(idle_timeout_s=3.0))
    finally:
        tail.close()
    assert sorted(a.alarm_id for a in unique) == sorted(expected_alarms)
    assert tail.stats.unique + tail.stats.duplicates == n_alarms
    # The drained second worker committed everything.
    final = committed(kafka_broker.bootstrap, topics.group, topics.frames)
    assert sum(final.values()) == len(sent), final


def test_sigterm_finishes_the_batch_in_flight_and_commits(
    kafka_broker: Any, product: Any, frame_images: Any, ingest_checkpoint: Path, tmp_path: Path
) -> None:
    topics, config = serve_topics(
        kafka_broker,
        "term",
        product.store_url,
        ingest_checkpoint,
        batch={"size": 2, "max_in_flight": 4, "decode_workers": 1},
    )
    path = write_config(tmp_path / "serve.yaml", config)
    prod = producer(kafka_broker.bootstrap)
    cam = CameraSimulator(prod, topics.frames, product.name, camera="c1")
    images = frame_images.good + frame_images.defect
    n = 60
    for i in range(n):
        cam.publish(images[i % len(images)], i)
    prod.flush()
    prod.close()
    proc = ServeProcess(path, tmp_path / "serve.log")
    try:
        read_all(kafka_broker.bootstrap, topics.results, 3, timeout_s=120, quiet_s=0)
        proc.signal(signal.SIGTERM)
        assert proc.wait(60) == 0, proc.output()[-3000:]
    finally:
        proc.stop()
    log = proc.output()
    assert "received SIGTERM: draining" in log and "stopped:" in log, log[-3000:]
    results = _results(read_all(kafka_broker.bootstrap, topics.results, n, timeout_s=3))
    offsets = sorted(r.source.offset for r in results)
    point = committed(kafka_broker.bootstrap, topics.group, topics.frames)[0]
    # Everything published was committed, and nothing unpublished was: the commit point is
    # exactly the end of the answered prefix.
    assert offsets == list(range(point)), (point, offsets)
    assert 0 < point < n, "SIGTERM should have stopped the worker mid-stream"
