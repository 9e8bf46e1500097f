"""Kafka producer side: results, alarms and dead-letter records.

The producer is idempotent with ``acks=all``: a send is acknowledged only when every in-sync
replica has it, and broker-side retries never duplicate or reorder a partition's records.
Each ``send_*`` returns kafka-python's future; the serve loop commits a frame's offset only
once all of that frame's futures have succeeded.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from kafka import KafkaProducer
from kafka.errors import (
    InvalidRecordError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
)
from kafka.future import Future
from kafka.producer.future import FutureRecordMetadata

from ingest.schemas import AlarmMessage, HeaderList, ResultMessage
from ingest.settings import KafkaSettings, TopicsSettings

if TYPE_CHECKING:
    from ingest.messages import DlqRecord

log = logging.getLogger("adqc.serve")

JSON = b"application/json"
MAX_REQUEST_BYTES = 16 * 1024 * 1024
RECORD_OVERHEAD = 512  # batch and record framing, generously
#: errors that sending the same record again cannot fix (the record must change)
UNSENDABLE = (MessageSizeTooLargeError, RecordListTooLargeError, InvalidRecordError)


def unsendable(exc: BaseException | None) -> bool:
    """True when ``exc`` (a send's failure) means this record can never be published: too
    large, refused as invalid, or not even serialisable; other errors are outages."""
    if exc is None:
        return False
    return isinstance(exc, UNSENDABLE) or not isinstance(exc, KafkaError)


def topic_limits(kafka: KafkaSettings, names: list[str], default: int) -> dict[str, int]:
    """``{topic: max.message.bytes}`` (at most ``default``) read from the broker; ``default``
    for a topic whose configuration cannot be read."""
    out = dict.fromkeys(names, default)
    try:
        from kafka import KafkaAdminClient
        from kafka.admin import ConfigResource, ConfigResourceType

        admin = KafkaAdminClient(**kafka.client_config())
        try:
            found = admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, n, None) for n in names],
                config_filter="all",
            )
        finally:
            admin.close()
        for name, value in _walk_limits(found):
            if name in out:
                out[name] = min(default, int(value))
    except Exception as exc:  # noqa: BLE001 - a missing topic or an old broker: use the default
        log.warning("topic size limits not read (%s); assuming %d bytes", exc, default)
    return out


def _walk_limits(found: Any) -> list[tuple[str, str]]:
    """(topic, max.message.bytes) pairs out of ``describe_configs``' nested answer."""
    out = []
    topics = found.get("topic", found) if isinstance(found, dict) else {}
    for name, configs in (topics or {}).items():
        entry = configs.get("max.message.bytes") if isinstance(configs, dict) else None
        value = entry.get("value") if isinstance(entry, dict) else entry
        if value is not None:
            out.append((name, str(value)))
    return out


def failed(exc: BaseException) -> Future:
    """A send future that already failed with ``exc`` (a send that raised at once)."""
    future = Future()
    future.failure(exc)
    return future


class Publisher:
    """Sends results, alarms and DLQ records to their topics.

    Args:
        kafka: connection settings.
        topics: topic names.
        **overrides: extra KafkaProducer arguments.
    """

    def __init__(self, kafka: KafkaSettings, topics: TopicsSettings, **overrides: Any) -> None:
        config: dict[str, Any] = {
            **kafka.client_config(),
            "acks": "all",
            "enable_idempotence": True,
            "linger_ms": 2,
            "max_in_flight_requests_per_connection": 5,
            "max_request_size": MAX_REQUEST_BYTES,
            "delivery_timeout_ms": 120_000,
        }
        config.update(overrides)
        self.topics = topics
        self._config = config
        self.producer = KafkaProducer(**config)
        names = [topics.results, topics.alarms, topics.dlq]
        self.max_bytes = topic_limits(kafka, names, int(config["max_request_size"]))

    def fits(self, topic: str, key: bytes | None, value: bytes | None, headers: HeaderList) -> bool:
        """Whether a record is (conservatively) within the topic's ``max.message.bytes`` and
        the producer's request limit: checked before sending, because a record the broker
        refuses also fails the idempotent producer's later sends to that partition."""
        size = RECORD_OVERHEAD + len(key or b"") + len(value or b"")
        size += sum(len(k.encode()) + len(v or b"") + 12 for k, v in headers)
        return size <= self.max_bytes.get(topic, MAX_REQUEST_BYTES)

    def reset(self) -> None:
        """A new producer (after the broker refused a record: kafka-python's idempotent
        producer then fails every later send to that partition); the old one is flushed and
        closed, its failed sends are resent by the caller."""
        old, self.producer = self.producer, KafkaProducer(**self._config)
        try:
            old.close(timeout=10)
        except KafkaError as exc:
            log.warning("closing the old producer: %s", exc)

    def _send(
        self, topic: str, *, key: bytes | None, value: bytes | None, headers: HeaderList
    ) -> FutureRecordMetadata | Future:
        """``producer.send``; a record refused at once (too large for the topic, not
        serialisable) comes back as a failed future, like a record the broker refuses."""
        if not self.fits(topic, key, value, headers):
            size = len(value or b"")
            limit = self.max_bytes.get(topic, MAX_REQUEST_BYTES)
            return failed(
                MessageSizeTooLargeError(f"{topic}: a {size}-byte value exceeds {limit} bytes")
            )
        try:
            return self.producer.send(topic, key=key, value=value, headers=headers)
        except (KafkaError, ValueError, TypeError, AssertionError) as exc:
            return failed(exc)  # an outage is resent with back-off, a bad record replaced

    def send_result(
        self, result: ResultMessage, key: bytes | None, trace_headers: dict[str, str]
    ) -> FutureRecordMetadata | Future:
        """Publish a frame's result (key = camera id)."""
        return self._send(
            self.topics.results,
            key=key,
            value=result.to_bytes(),
            headers=_headers(result.frame_id, result.product, trace_headers),
        )

    def send_alarm(
        self, alarm: AlarmMessage, key: bytes | None, trace_headers: dict[str, str]
    ) -> FutureRecordMetadata | Future:
        """Publish an alarm (key = camera id, so a camera's alarms stay in order)."""
        headers = _headers(alarm.frame_id, alarm.product, trace_headers)
        headers.append(("alarm_id", alarm.alarm_id.encode()))
        return self._send(self.topics.alarms, key=key, value=alarm.to_bytes(), headers=headers)

    def send_dlq(self, record: DlqRecord) -> FutureRecordMetadata | Future:
        """Dead-letter a frame (:func:`ingest.messages.build_dlq_record` made it fit)."""
        return self._send(
            self.topics.dlq, key=record.key, value=record.value, headers=list(record.headers)
        )

    def flush(self, timeout_s: float | None = None) -> None:
        """Send everything buffered and wait for the acknowledgements."""
        self.producer.flush(timeout=timeout_s)

    def close(self, timeout_s: float = 10.0) -> None:
        """Flush and close the producer."""
        self.producer.close(timeout=timeout_s)


def _headers(frame_id: str, product: str, trace_headers: dict[str, str]) -> HeaderList:
    out: HeaderList = [
        ("content_type", JSON),
        ("frame_id", frame_id.encode()),
        ("product", product.encode()),
    ]
    out += [(k, v.encode()) for k, v in trace_headers.items()]
    return out
