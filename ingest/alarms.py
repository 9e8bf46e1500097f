"""An MES-like alarm subscriber: reads the alarms topic, validates, dedupes by ``alarm_id``.

The serve loop is at-least-once, so an alarm can be delivered twice (after a crash between
publishing and committing). Alarm ids are deterministic (uuid5 of frame id + model id): an
MES keeps the ids it has seen and drops repeats, which is what :class:`AlarmTail` does.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import cachetools
from kafka import KafkaConsumer
from kafka.structs import TopicPartition
from pydantic import ValidationError

from ingest.schemas import AlarmMessage
from ingest.settings import KafkaSettings


class SeenIds:
    """A bounded set of recently seen ids (least recently seen forgotten first)."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._ids: cachetools.LRUCache[str, None] = cachetools.LRUCache(maxsize=capacity)

    def add(self, key: str) -> bool:
        """Remember ``key``; True if it is new."""
        if key in self._ids:
            self._ids[key] = None  # refresh: seen again, forgotten last
            return False
        self._ids[key] = None
        return True

    def __len__(self) -> int:
        return len(self._ids)


@dataclass
class TailStats:
    """Counts of what the tail has read."""

    unique: int = 0
    duplicates: int = 0
    invalid: int = 0


@dataclass(frozen=True)
class TailEvent:
    """One alarm record: the parsed alarm (None if invalid), and whether it was a repeat."""

    alarm: AlarmMessage | None
    duplicate: bool
    partition: int
    offset: int
    error: str | None = None


class AlarmTail:
    """Subscribe to the alarms topic and yield alarms, deduplicated by id.

    Without ``group`` it reads like ``kafka-console-consumer``: all partitions, from the
    beginning or only new records, nothing committed. With ``group`` it joins that consumer
    group and commits what it has handed out. ``kafka`` brings the security settings (TLS
    files, SASL) and, unless ``bootstrap`` is given, the bootstrap servers.
    """

    def __init__(
        self,
        bootstrap: str | list[str] | None = None,
        topic: str = "alarms",
        from_beginning: bool = False,
        group: str | None = None,
        *,
        kafka: KafkaSettings | None = None,
        **overrides: Any,
    ) -> None:
        self.topic = topic
        self.seen = SeenIds()
        self.stats = TailStats()
        config: dict[str, Any] = kafka.client_config() if kafka is not None else {}
        if bootstrap is not None:
            config["bootstrap_servers"] = bootstrap
        if "bootstrap_servers" not in config:
            raise ValueError("AlarmTail needs bootstrap or kafka settings")
        config |= {
            "client_id": "adqc-alarms-tail",
            "group_id": group,
            "enable_auto_commit": group is not None,
            "auto_offset_reset": "earliest" if from_beginning else "latest",
        }
        config.update(overrides)
        self.consumer = KafkaConsumer(**config)
        if group is not None:
            self.consumer.subscribe([topic])
        else:
            partitions = self._partitions()
            self.consumer.assign(partitions)
            if from_beginning:
                self.consumer.seek_to_beginning(*partitions)
            else:
                self.consumer.seek_to_end(*partitions)

    def _partitions(self, timeout_s: float = 30.0) -> list[TopicPartition]:
        deadline = time.monotonic() + timeout_s
        while True:
            ids = self.consumer.partitions_for_topic(self.topic)
            if ids:
                return [TopicPartition(self.topic, p) for p in sorted(ids)]
            if time.monotonic() > deadline:
                raise TimeoutError(f"topic {self.topic!r} not found within {timeout_s:.0f} s")
            time.sleep(0.2)

    def events(self, idle_timeout_s: float | None = None) -> Iterator[TailEvent]:
        """Every alarm record as it arrives; stops after ``idle_timeout_s`` without any."""
        last = time.monotonic()
        while True:
            polled = self.consumer.poll(timeout_ms=200)
            if not polled:
                if idle_timeout_s is not None and time.monotonic() - last > idle_timeout_s:
                    return
                continue
            last = time.monotonic()
            for records in polled.values():
                for record in records:
                    yield self._event(record)

    def _event(self, record: Any) -> TailEvent:
        try:
            alarm = AlarmMessage.from_bytes(record.value)
        except ValidationError as exc:
            self.stats.invalid += 1
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            detail = f"{where}: {first['msg']}"
            return TailEvent(None, False, record.partition, record.offset, detail)
        new = self.seen.add(alarm.alarm_id)
        if new:
            self.stats.unique += 1
        else:
            self.stats.duplicates += 1
        return TailEvent(alarm, not new, record.partition, record.offset)

    def alarms(
        self, idle_timeout_s: float | None = None, limit: int | None = None
    ) -> Iterator[AlarmMessage]:
        """Unique, valid alarms only (repeats and invalid records are counted, not yielded)."""
        n = 0
        for event in self.events(idle_timeout_s):
            if event.alarm is None or event.duplicate:
                continue
            yield event.alarm
            n += 1
            if limit is not None and n >= limit:
                return

    def close(self) -> None:
        """Close the consumer."""
        self.consumer.close()

    def __enter__(self) -> AlarmTail:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
