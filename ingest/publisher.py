"""Kafka producer side: results, alarms and dead-letter records.

The producer is idempotent with ``acks=all``: a send is acknowledged only when every in-sync
replica has it, and broker-side retries never duplicate or reorder a partition's records.
Each ``send_*`` returns kafka-python's future; the serve loop commits a frame's offset only
once all of that frame's futures have succeeded.
"""

from __future__ import annotations

from typing import Any

from kafka import KafkaProducer
from kafka.producer.future import FutureRecordMetadata

from ingest.schemas import AlarmMessage, DlqInfo, HeaderList, ResultMessage
from ingest.settings import KafkaSettings, TopicsSettings

JSON = b"application/json"


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
            "max_request_size": 16 * 1024 * 1024,
            "delivery_timeout_ms": 120_000,
        }
        config.update(overrides)
        self.topics = topics
        self.producer = KafkaProducer(**config)

    def send_result(
        self, result: ResultMessage, key: bytes | None, trace_headers: dict[str, str]
    ) -> FutureRecordMetadata:
        """Publish a frame's result (key = camera id)."""
        return self.producer.send(
            self.topics.results,
            key=key,
            value=result.to_bytes(),
            headers=_headers(result.frame_id, result.product, trace_headers),
        )

    def send_alarm(
        self, alarm: AlarmMessage, key: bytes | None, trace_headers: dict[str, str]
    ) -> FutureRecordMetadata:
        """Publish an alarm (key = camera id, so a camera's alarms stay in order)."""
        headers = _headers(alarm.frame_id, alarm.product, trace_headers)
        headers.append(("alarm_id", alarm.alarm_id.encode()))
        return self.producer.send(
            self.topics.alarms, key=key, value=alarm.to_bytes(), headers=headers
        )

    def send_dlq(
        self,
        key: bytes | None,
        value: bytes | None,
        original_headers: HeaderList,
        info: DlqInfo,
    ) -> FutureRecordMetadata:
        """Dead-letter a frame: original key, value and headers plus ``dlq.*`` headers."""
        headers = [(k, v if v is not None else b"") for k, v in original_headers]
        headers += info.to_kafka()
        return self.producer.send(self.topics.dlq, key=key, value=value, headers=headers)

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
