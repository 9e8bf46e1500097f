"""Credentials refused mid-run (the Redis password rotated, the ACL changed while serving) are
fatal for the worker, not for the frame: the loop raises StoreAuthError without a DLQ record
and without committing the frame. Fakes isolate the loop; the real Redis + Kafka + serve
process behaviour is tested in tests/integration/ingest/test_credentials_rotation.py."""

from __future__ import annotations

import io
import threading
from collections import namedtuple
from typing import Any

import numpy as np
import pytest
from frame_testkit import frame_headers
from kafka.structs import TopicPartition
from PIL import Image

from inference.store import StoreAuthError
from ingest.loop import ServeLoop
from ingest.settings import TelemetrySettings, load_settings
from ingest.telemetry import Telemetry

TP = TopicPartition("frames", 0)
Record = namedtuple("Record", "topic partition offset key value headers")


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


class OneFrameConsumer:
    """Hands out one good frame at offset 5, then nothing; records commits."""

    def __init__(self) -> None:
        headers = frame_headers().to_kafka()
        self.to_poll = {TP: [Record(TP.topic, TP.partition, 5, b"c", _png(), headers)]}
        self.commits: list[dict] = []
        self.closed = False

    def poll(self, timeout_ms: int = 0, max_records: int = 1) -> dict:
        polled, self.to_poll = self.to_poll, {}
        return polled

    def commit(self, offsets: dict) -> None:
        self.commits.append(offsets)

    def assignment(self) -> set:
        return {TP}

    def paused(self) -> set:
        return set()

    def pause(self, *tps: Any) -> None: ...

    def resume(self, *tps: Any) -> None: ...

    def highwater(self, tp: TopicPartition) -> None:
        return None

    def close(self, autocommit: bool = True) -> None:
        assert autocommit is False
        self.closed = True


class RecordingPublisher:
    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []

    def send_dlq(self, record: Any) -> Any:
        self.sent.append(("dlq", record))
        raise AssertionError("a refused password must not dead-letter the frame")

    def send_result(self, *args: Any) -> Any:
        self.sent.append(("result", args))
        raise AssertionError("nothing was scored")

    def close(self) -> None: ...


class RefusingScorer:
    """A scorer whose store was told the password is wrong (redis WRONGPASS / NOPERM)."""

    def __init__(self) -> None:
        self.calls = 0

    def score(self, images: list[np.ndarray], product: str) -> list[Any]:
        self.calls += 1
        raise StoreAuthError("Redis at redis://:***@redis:6379/0 refused the credentials")


def test_a_store_credentials_refusal_mid_run_stops_the_loop_without_dlq_or_commit() -> None:
    settings = load_settings(
        None, telemetry={"prometheus_port": None}, retry={"initial_backoff_s": 0.01}
    )
    consumer = OneFrameConsumer()
    publisher = RecordingPublisher()
    scorer = RefusingScorer()
    loop = ServeLoop(
        settings,
        scorer=scorer,
        telemetry=Telemetry(TelemetrySettings(prometheus_port=None)),
        consumer_factory=lambda _listener: consumer,
        publisher=publisher,  # type: ignore[arg-type]
    )
    raised: list[BaseException] = []

    def run() -> None:
        try:
            loop.run()
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(30)
    if thread.is_alive():
        loop.stop()
        thread.join(30)
        pytest.fail("the loop kept running after the store refused its credentials")
    assert len(raised) == 1 and isinstance(raised[0], StoreAuthError), raised
    assert scorer.calls == 1  # not retried: no retry fixes a password
    assert publisher.sent == []  # no DLQ record, no result
    # offset 5 stays uncommitted: a commit, if any, points at it (the next owner re-reads it)
    assert all(offsets[TP].offset <= 5 for offsets in consumer.commits if TP in offsets)
    assert loop.tracker.in_flight() == 1
    assert consumer.closed
