"""The rebalance listener never calls the consumer (kafka-python runs it on its IO thread): it
records the revocation; the main loop marks the revoked partitions' frames lost, never commits
them, and rewinds a partition that comes back to its committed offset. Fakes isolate the loop's
bookkeeping; the real-broker behaviour is tested in test_rebalance.py."""

from __future__ import annotations

from collections import namedtuple
from typing import Any

from kafka.structs import TopicPartition

from ingest.loop import Outbox, ServeLoop, Work, _Listener
from ingest.settings import TelemetrySettings, load_settings
from ingest.telemetry import Telemetry

A = TopicPartition("frames", 0)
B = TopicPartition("frames", 1)
Record = namedtuple("Record", "topic partition offset key value headers")


class IOThreadConsumer:
    """A consumer whose every call fails while ``in_listener`` is set (as kafka-python's do
    when called from its IO thread), recording seeks."""

    def __init__(self) -> None:
        self.in_listener = False
        self.assigned = {A, B}
        self.commits: list[dict] = []
        self.seeks: list[tuple[TopicPartition, int]] = []
        self.to_poll: dict = {}
        self.committed_offsets = {A: 3, B: 0}
        self.paused_tps: set = set()

    def _check(self) -> None:
        if self.in_listener:
            raise AssertionError("Cannot block on net.run() from the IO thread itself")

    def commit(self, offsets: dict) -> None:
        self._check()
        self.commits.append(offsets)

    def poll(self, timeout_ms: int = 0, max_records: int = 1) -> dict:
        self._check()
        polled, self.to_poll = self.to_poll, {}
        return polled

    def assignment(self) -> set:
        self._check()
        return set(self.assigned)

    def paused(self) -> set:
        return set(self.paused_tps)

    def pause(self, *tps: Any) -> None:
        self.paused_tps |= set(tps)

    def resume(self, *tps: Any) -> None:
        self.paused_tps -= set(tps)

    def committed(self, tp: TopicPartition) -> int | None:
        self._check()
        return self.committed_offsets.get(tp)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self._check()
        self.seeks.append((tp, offset))

    def seek_to_beginning(self, *tps: Any) -> None:
        self.seeks.extend((tp, 0) for tp in tps)

    def highwater(self, tp: TopicPartition) -> None:
        return None


class NoPublisher:
    def close(self) -> None: ...


def _loop(**sections: Any) -> tuple[ServeLoop, IOThreadConsumer]:
    settings = load_settings(None, telemetry={"prometheus_port": None}, **sections)
    loop = ServeLoop(
        settings,
        scorer=None,
        telemetry=Telemetry(TelemetrySettings(prometheus_port=None)),
        publisher=NoPublisher(),  # type: ignore[arg-type]
    )
    consumer = IOThreadConsumer()
    loop.consumer = consumer
    return loop, consumer


def _work(loop: ServeLoop, tp: TopicPartition, offset: int) -> Work:
    record = Record(tp.topic, tp.partition, offset, b"k", b"v", [])
    span = loop.telemetry.start_process_span(
        topic=tp.topic,
        partition=tp.partition,
        offset=offset,
        group="g",
        key=b"k",
        headers={},
        start_ns=0,
    )
    loop.tracker.add(tp, offset)
    return Work(record=record, tp=tp, received_ns=0, span=span)


def test_the_listener_only_records_and_the_main_loop_drops_the_revoked_frames() -> None:
    loop, consumer = _loop()
    a_ready, b_ready = _work(loop, A, 3), _work(loop, B, 0)
    a_sent, b_sent = _work(loop, A, 4), _work(loop, B, 1)
    loop._ready.extend([a_ready, b_ready])
    dead = {id(w): "undecodable_image" for w in (a_sent, b_sent)}
    loop._outboxes.append(Outbox([a_sent, b_sent], [], 0, dlq_reasons=dead))

    consumer.in_listener = True
    _Listener(loop).on_partitions_revoked([A])  # on the IO thread: no consumer call allowed
    consumer.in_listener = False
    assert not a_ready.lost and consumer.commits == []

    loop._apply_revocations()  # the main thread, after its next poll
    assert list(loop._ready) == [b_ready]
    assert a_ready.lost and a_sent.lost and not b_sent.lost
    # A's frames are never committed by this worker; B's are as usual
    loop._finish(loop._outboxes.popleft(), acked_ns=1)
    assert loop.tracker.committable() == {B: 0}
    loop.tracker.done(B, 0)
    assert loop.tracker.committable() == {B: 2}


def test_a_partition_that_comes_back_is_rewound_to_its_commit() -> None:
    loop, consumer = _loop()
    loop._ready.append(_work(loop, A, 3))
    _Listener(loop).on_partitions_lost([A])
    # The rebalance gave A back to us; the poll returns records fetched before it (offset 9):
    # they must not be accepted (frame 3 was dropped as lost and would be skipped).
    consumer.to_poll = {A: [Record(A.topic, A.partition, 9, b"k", b"v", [])]}
    loop._poll(0)
    assert consumer.seeks == [(A, 3)]
    assert loop.tracker.in_flight() == 0 and not loop._pending
    # the next poll reads from the commit again
    consumer.to_poll = {A: [Record(A.topic, A.partition, 3, b"k", b"not an image", [])]}
    loop._poll(0)
    assert [w.record.offset for w in loop._pending] == [3]
    assert loop.tracker.committable() == {A: 3}
    loop._decoder.shutdown(wait=True)


def test_decoded_pixels_over_the_budget_pause_the_partitions() -> None:
    import numpy as np

    loop, consumer = _loop(batch={"max_decoded_mib": 4})
    held = [_work(loop, A, i) for i in range(3)]
    for work in held:  # three decoded 1024x1024 RGB frames = 9 MiB > 4 MiB
        work.image = np.zeros((1024, 1024, 3), np.uint8)
        loop._decoded_bytes += work.image.nbytes
    loop._backpressure()
    assert loop._paused and consumer.paused_tps == {A, B}
    for work in held:
        loop._release(work)
    assert loop._decoded_bytes == 0
    loop._backpressure()  # in-flight count is still 3 (< half of 64): resumes
    assert not loop._paused and consumer.paused_tps == set()
