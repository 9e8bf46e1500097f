"""Kafka message schemas: frames (headers), results, alarms and dead-letter records.

Every JSON message carries ``schema_version``; changes are additive within a major version.
The frame *value* is binary (an encoded image, or a claim-check URI); its metadata travels in
Kafka headers, parsed by :class:`FrameHeaders`. Results and alarms are JSON (UTF-8) values.
Dead-letter records keep the original key, value and headers and add ``dlq.*`` headers
(:class:`DlqInfo`). See docs/messages.md; JSON Schemas are generated into docs/schemas/.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from inference.results import Region

SCHEMA_VERSION = 1
"""Version of every message defined here (frames headers, results, alarms, DLQ headers)."""

ALARM_NAMESPACE = uuid.UUID("6f1c3a52-6d7e-5b1a-9a41-0a5e8a7c2d10")
"""uuid5 namespace of alarm ids: ``alarm_id = uuid5(ALARM_NAMESPACE, f"{frame_id}|{model_id}")``."""

IMAGE_CONTENT_TYPES = ("image/jpeg", "image/png")
CLAIM_CHECK_CONTENT_TYPE = "text/uri-list"
"""A frame whose value is a UTF-8 URI (``file:///...``) pointing at the encoded image."""

HeaderList = list[tuple[str, bytes]]

REQUIRED_FRAME_HEADERS = ("product", "line", "camera", "frame_id", "capture_time", "content_type")

HeaderVersion = Annotated[int, Field(ge=1, le=SCHEMA_VERSION)]
"""Header values are text: the version is parsed from ``"1"``."""

Identifier = Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[^\s]+$")]


class MessageError(ValueError):
    """A message that does not satisfy its schema; ``reason`` is a :class:`DlqReason`."""

    def __init__(self, reason: DlqReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


class DlqReason(StrEnum):
    """Why a frame went to the dead-letter topic (header ``dlq.reason``)."""

    MISSING_HEADER = "missing_header"
    INVALID_HEADER = "invalid_header"
    UNSUPPORTED_CONTENT_TYPE = "unsupported_content_type"
    UNDECODABLE_IMAGE = "undecodable_image"
    CLAIM_CHECK_UNREADABLE = "claim_check_unreadable"
    WRONG_SIZE = "wrong_size"
    UNKNOWN_PRODUCT = "unknown_product"
    MODEL_MISMATCH = "model_mismatch"
    SCORING_FAILED = "scoring_failed"


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def to_bytes(self) -> bytes:
        """The UTF-8 JSON value written to Kafka."""
        return self.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, value: bytes):  # noqa: ANN206 - returns cls
        """Parse a Kafka value; raises :class:`pydantic.ValidationError` on a bad message."""
        return cls.model_validate_json(value)


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("timestamp must carry a timezone (RFC 3339, e.g. 2026-01-01T08:00:00Z)")
    return value.astimezone(UTC)


def utc_now() -> datetime:
    """The current time as an aware UTC datetime."""
    return datetime.now(UTC)


def format_time(value: datetime) -> str:
    """RFC 3339 UTC text with millisecond precision, e.g. ``2026-01-01T08:00:00.123Z``."""
    return _aware(value).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class FrameHeaders(_Message):
    """Metadata of a frame on the ``frames`` topic, carried in Kafka headers (UTF-8 values).

    Required headers: ``product``, ``line``, ``camera``, ``frame_id``, ``capture_time``,
    ``content_type``. Optional: ``traceparent``/``tracestate`` (W3C trace context),
    ``width``/``height`` (declared image size, checked against the decoded image) and
    ``schema_version``. The record key is the camera id.
    """

    schema_version: HeaderVersion = SCHEMA_VERSION
    product: Identifier
    line: Identifier
    camera: Identifier
    frame_id: Identifier
    capture_time: datetime
    content_type: Literal["image/jpeg", "image/png", "text/uri-list"]
    traceparent: str | None = Field(
        default=None, pattern=r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"
    )
    tracestate: str | None = None
    width: int | None = Field(default=None, gt=0)
    height: int | None = Field(default=None, gt=0)

    @field_validator("capture_time")
    @classmethod
    def _capture_aware(cls, value: datetime) -> datetime:
        return _aware(value)

    @classmethod
    def from_kafka(cls, headers: Sequence[tuple[str, bytes | None]] | None) -> FrameHeaders:
        """Parse Kafka headers; raises :class:`MessageError` naming the header at fault."""
        raw: dict[str, str] = {}
        for name, value in headers or ():
            try:
                raw[name] = (value or b"").decode("utf-8")
            except UnicodeDecodeError as exc:
                detail = f"header {name!r} is not UTF-8"
                raise MessageError(DlqReason.INVALID_HEADER, detail) from exc
        missing = [name for name in REQUIRED_FRAME_HEADERS if not raw.get(name)]
        if missing:
            raise MessageError(DlqReason.MISSING_HEADER, f"missing header(s): {', '.join(missing)}")
        known = {k: v for k, v in raw.items() if k in cls.model_fields}
        if "content_type" in known and known["content_type"] not in (
            *IMAGE_CONTENT_TYPES,
            CLAIM_CHECK_CONTENT_TYPE,
        ):
            raise MessageError(
                DlqReason.UNSUPPORTED_CONTENT_TYPE,
                f"content_type {known['content_type']!r} is not one of "
                f"{', '.join((*IMAGE_CONTENT_TYPES, CLAIM_CHECK_CONTENT_TYPE))}",
            )
        try:
            return cls.model_validate(known)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "?"
            raise MessageError(
                DlqReason.INVALID_HEADER, f"header {field!r}: {first['msg']}"
            ) from exc

    def to_kafka(self) -> HeaderList:
        """Kafka headers for this frame (``None`` fields are left out)."""
        out: HeaderList = []
        for name, value in self.model_dump(exclude_none=True).items():
            text = format_time(value) if isinstance(value, datetime) else str(value)
            out.append((name, text.encode()))
        return out


class Source(_Message):
    """Where the frame was read: topic, partition, offset."""

    topic: str
    partition: int = Field(ge=0)
    offset: int = Field(ge=0)


class Timings(_Message):
    """Per-frame timings in milliseconds (batch stages: this frame's share of its batch)."""

    queue_ms: float = Field(description="capture time to the poll that received the frame")
    decode_ms: float
    infer_ms: float = Field(description="resize + engine features (share of the batch)")
    score_ms: float = Field(description="anomaly maps, scores, regions (share of the batch)")
    batch_size: int = Field(ge=1)
    total_ms: float = Field(description="capture time to the hand-off of this result")


class ResultMessage(_Message):
    """One per frame on the ``results`` topic (key = camera id)."""

    schema_version: Literal[1] = SCHEMA_VERSION
    frame_id: str
    product: str
    line: str
    camera: str
    capture_time: datetime
    processed_at: datetime
    score: float
    threshold: float
    decision: Literal["ok", "defect"]
    alarm_id: str | None = Field(default=None, description="set when decision is 'defect'")
    model_id: str
    reference_version: int
    image_width: int
    image_height: int
    timings: Timings
    source: Source
    trace_id: str | None = None


class Heatmap(_Message):
    """The anomaly heatmap overlay: inline base64 PNG, or a claim-check URI."""

    content_type: Literal["image/png"] = "image/png"
    encoding: Literal["base64", "uri"]
    data: str | None = Field(default=None, description="base64 PNG when encoding is 'base64'")
    uri: str | None = Field(default=None, description="where the PNG is when encoding is 'uri'")
    width: int
    height: int


Severity = Literal["minor", "major", "critical"]


def severity_for(score: float, threshold: float) -> Severity:
    """Severity from the score/threshold ratio: < 1.25 minor, < 2 major, else critical."""
    ratio = score / threshold if threshold > 0 else float("inf")
    if ratio < 1.25:
        return "minor"
    if ratio < 2.0:
        return "major"
    return "critical"


def alarm_id_for(frame_id: str, model_id: str) -> str:
    """Deterministic alarm id: the same frame scored by the same model gives the same id."""
    return str(uuid.uuid5(ALARM_NAMESPACE, f"{frame_id}|{model_id}"))


class AlarmMessage(_Message):
    """One per defective frame on the ``alarms`` topic (key = alarm id), for the MES.

    ``alarm_id`` is idempotent: consumers dedupe on it (redeliveries after a crash carry the
    same id).
    """

    schema_version: Literal[1] = SCHEMA_VERSION
    alarm_id: str
    frame_id: str
    line: str
    camera: str
    product: str
    capture_time: datetime
    detected_at: datetime
    score: float
    threshold: float
    severity: Severity
    regions: list[Region]  # the scorer's regions, in frame pixels
    heatmap: Heatmap | None
    model_id: str
    reference_version: int
    trace_id: str | None = None
    source: Source


class DlqInfo(_Message):
    """The ``dlq.*`` headers added to a dead-lettered frame (original key/value/headers kept)."""

    schema_version: HeaderVersion = SCHEMA_VERSION
    reason: DlqReason
    detail: str
    time: datetime
    source_topic: str
    source_partition: int
    source_offset: int
    consumer_group: str | None = None

    def to_kafka(self) -> HeaderList:
        """``dlq.<field>`` headers (UTF-8)."""
        out: HeaderList = []
        for name, value in self.model_dump(exclude_none=True).items():
            text = format_time(value) if isinstance(value, datetime) else str(value)
            out.append((f"dlq.{name}", text.encode()))
        return out

    @classmethod
    def from_kafka(cls, headers: Iterable[tuple[str, bytes]]) -> DlqInfo:
        """Parse the ``dlq.*`` headers of a dead-letter record."""
        raw = {k[4:]: v.decode() for k, v in headers if k.startswith("dlq.") and v is not None}
        return cls.model_validate(raw)


def strip_dlq_headers(headers: Iterable[tuple[str, bytes]]) -> HeaderList:
    """The original frame headers of a dead-letter record (for a replay)."""
    return [(k, v) for k, v in headers if not k.startswith("dlq.")]


MESSAGE_MODELS: dict[str, type[BaseModel]] = {
    "frame-headers": FrameHeaders,
    "result": ResultMessage,
    "alarm": AlarmMessage,
    "dlq-headers": DlqInfo,
}
"""Models whose JSON Schemas are generated into docs/schemas/<name>.v1.json."""


SCHEMA_DIR = Path(__file__).resolve().parents[1] / "docs" / "schemas"


def json_schemas() -> dict[str, str]:
    """``{file name: JSON Schema text}`` of every message (what docs/schemas/ holds)."""
    out = {}
    for name, model in MESSAGE_MODELS.items():
        schema = model.model_json_schema(mode="serialization")
        schema["$id"] = f"https://adqc.dev/schemas/{name}.v{SCHEMA_VERSION}.json"
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        out[f"{name}.v{SCHEMA_VERSION}.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return out


def write_json_schemas(directory: Path = SCHEMA_DIR) -> list[Path]:
    """Regenerate docs/schemas/*.json (``python -m ingest.schemas``)."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in json_schemas().items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written


if __name__ == "__main__":
    for written_path in write_json_schemas():
        print(written_path)
