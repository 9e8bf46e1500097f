"""Kafka consumer side: the manual-commit consumer and the per-partition offset tracker.

Offsets are committed only up to the first frame that is not finished (its result, alarm or
DLQ record acknowledged by the broker), so a crash re-delivers every unfinished frame
(at-least-once) and never skips one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from kafka import KafkaConsumer
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition

from ingest.settings import ServeSettings


class OffsetTracker:
    """Which offsets of each partition are in flight, and what is safe to commit.

    ``add`` each offset when it is polled (in order, per partition), ``done`` when its
    outputs are acknowledged (any order). ``committable`` gives, per partition, the offset
    of the first unfinished record (or one past the last finished one): the next offset to
    read after a restart.
    """

    def __init__(self) -> None:
        self._pending: dict[TopicPartition, dict[int, bool]] = {}
        self._next: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}

    def add(self, tp: TopicPartition, offset: int) -> None:
        """Register a polled offset (offsets of a partition arrive in increasing order)."""
        self._pending.setdefault(tp, {})[offset] = False
        self._next.setdefault(tp, offset)

    def done(self, tp: TopicPartition, offset: int) -> None:
        """Mark ``offset`` finished; finished prefixes are folded into the commit point."""
        pending = self._pending.get(tp)
        if pending is None or offset not in pending:
            return  # the partition was revoked meanwhile
        pending[offset] = True
        for off in sorted(pending):
            if not pending[off]:
                break
            del pending[off]
            self._next[tp] = off + 1

    def in_flight(self) -> int:
        """How many offsets are registered and not finished."""
        return sum(len(p) for p in self._pending.values())

    def committable(self) -> dict[TopicPartition, int]:
        """Partitions whose commit point moved since the last :meth:`mark_committed`."""
        out: dict[TopicPartition, int] = {}
        for tp, nxt in self._next.items():
            pending = self._pending.get(tp)
            point = min(pending) if pending else nxt
            if self._committed.get(tp) != point:
                out[tp] = point
        return out

    def mark_committed(self, offsets: dict[TopicPartition, int]) -> None:
        """Remember what was committed so :meth:`committable` reports only changes."""
        self._committed.update(offsets)

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """Drop revoked partitions."""
        for tp in partitions:
            self._pending.pop(tp, None)
            self._next.pop(tp, None)
            self._committed.pop(tp, None)


log = logging.getLogger(__name__)


def commit_map(offsets: dict[TopicPartition, int]) -> dict[TopicPartition, OffsetAndMetadata]:
    """kafka-python's commit argument for ``{partition: next offset}``."""
    return {tp: OffsetAndMetadata(off, "", -1) for tp, off in offsets.items()}


#: how often the serve consumer refreshes topic metadata (ms)
METADATA_MAX_AGE_MS = 10_000


def create_consumer(
    settings: ServeSettings,
    listener: ConsumerRebalanceListener | None = None,
    **overrides: Any,
) -> KafkaConsumer:
    """A manual-commit consumer of the frames topic for the serve loop's group."""
    config: dict[str, Any] = {
        **settings.kafka.client_config(),
        "group_id": settings.group,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "session_timeout_ms": settings.kafka.session_timeout_ms,
        "heartbeat_interval_ms": max(settings.kafka.session_timeout_ms // 3, 500),
        "max_poll_interval_ms": settings.kafka.max_poll_interval_ms,
        "max_poll_records": settings.batch.max_in_flight,
        "fetch_max_wait_ms": 50,
        "max_partition_fetch_bytes": 8 * 1024 * 1024,
        # refresh topic metadata every few seconds (kafka-python's default is 5 minutes)
        "metadata_max_age_ms": METADATA_MAX_AGE_MS,
    }
    config.update(overrides)
    consumer = KafkaConsumer(**config)
    consumer.subscribe([settings.topics.frames], listener=listener)
    # load the topic's metadata before the first poll joins the group: a join made on the
    # bootstrap metadata alone assigned nothing ("No partition metadata") and stayed idle
    try:
        consumer.partitions_for_topic(settings.topics.frames)
    except KafkaError as exc:  # best effort: the group join still works, and is retried
        log.warning("metadata of %s not loaded before joining: %s", settings.topics.frames, exc)
    return consumer
