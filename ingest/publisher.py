"""Kafka producer side: results, alarms and dead-letter records.

The producer is idempotent with ``acks=all``: a send is acknowledged only when every in-sync
replica has it, and broker-side retries never duplicate or reorder a partition's records.
Each ``send_*`` returns kafka-python's future; the serve loop commits a frame's offset only
once all of that frame's futures have succeeded.
"""

from __future__ import annotations

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

JSON = b"application/json"
MAX_REQUEST_BYTES = 16 * 1024 * 1024
#: errors that sending the same record again cannot fix (the record must change)
UNSENDABLE = (MessageSizeTooLargeError, RecordListTooLargeError, InvalidRecordError)


def unsendable(exc: BaseException | None) -> bool:
    """True when ``exc`` (a send's failure) means this record can never be published: too
    large, refused as invalid, or not even serialisable; other errors are outages."""
    if exc is None:
        return False
    return isinstance(exc, UNSENDABLE) or not isinstance(exc, KafkaError)


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
        self.producer = KafkaProducer(**config)

    def _send(self, topic: str, **kwargs: Any) -> FutureRecordMetadata | Future:
        """``producer.send``; a record refused at once (too large, not serialisable) comes
        back as a failed future, like a record the broker refuses."""
        try:
            return self.producer.send(topic, **kwargs)
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
