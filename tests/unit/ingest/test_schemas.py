"""Message schemas: header parsing, ids, DLQ headers, and the generated JSON Schemas."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import jsonschema
import pytest

from ingest.schemas import (
    SCHEMA_DIR,
    AlarmMessage,
    DlqInfo,
    DlqReason,
    FrameHeaders,
    Heatmap,
    MessageError,
    Region,
    ResultMessage,
    Source,
    Timings,
    alarm_id_for,
    json_schemas,
    severity_for,
    strip_dlq_headers,
)

T0 = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


def _headers(**over: object) -> FrameHeaders:
    fields = dict(
        product="bottle",
        line="l1",
        camera="cam-1",
        frame_id="f-1",
        capture_time=T0,
        content_type="image/png",
        traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01",
        width=256,
        height=200,
    )
    fields.update(over)
    return FrameHeaders(**fields)


def test_frame_headers_round_trip_through_kafka_headers() -> None:
    headers = _headers()
    kafka = headers.to_kafka()
    assert ("capture_time", b"2026-01-02T03:04:05.678Z") in kafka
    assert all(isinstance(v, bytes) for _, v in kafka)
    assert FrameHeaders.from_kafka(kafka) == headers


def test_missing_headers_are_named() -> None:
    kafka = [(k, v) for k, v in _headers().to_kafka() if k not in ("frame_id", "camera")]
    with pytest.raises(MessageError) as err:
        FrameHeaders.from_kafka(kafka)
    assert err.value.reason is DlqReason.MISSING_HEADER
    assert "camera" in err.value.detail and "frame_id" in err.value.detail


@pytest.mark.parametrize(
    ("name", "value", "reason", "fragment"),
    [
        ("capture_time", b"2026-01-02T03:04:05", DlqReason.INVALID_HEADER, "timezone"),
        ("capture_time", b"soon", DlqReason.INVALID_HEADER, "capture_time"),
        ("traceparent", b"00-xyz", DlqReason.INVALID_HEADER, "traceparent"),
        ("width", b"-3", DlqReason.INVALID_HEADER, "width"),
        ("content_type", b"image/gif", DlqReason.UNSUPPORTED_CONTENT_TYPE, "image/gif"),
        ("product", b"\xff\xfe", DlqReason.INVALID_HEADER, "UTF-8"),
    ],
)
def test_invalid_headers_say_which_and_why(
    name: str, value: bytes, reason: DlqReason, fragment: str
) -> None:
    kafka = [(k, value if k == name else v) for k, v in _headers().to_kafka()]
    with pytest.raises(MessageError) as err:
        FrameHeaders.from_kafka(kafka)
    assert err.value.reason is reason
    assert fragment in err.value.detail


def test_alarm_ids_are_deterministic_per_frame_and_model() -> None:
    a = alarm_id_for("f-1", "mobilenet_v2:abc")
    assert a == alarm_id_for("f-1", "mobilenet_v2:abc")
    assert a != alarm_id_for("f-2", "mobilenet_v2:abc")
    assert a != alarm_id_for("f-1", "mobilenet_v2:def")


def test_severity_grows_with_the_score_over_threshold() -> None:
    assert severity_for(1.1, 1.0) == "minor"
    assert severity_for(1.5, 1.0) == "major"
    assert severity_for(2.5, 1.0) == "critical"
    assert severity_for(0.1, 0.0) == "critical"


def test_dlq_headers_round_trip_and_strip() -> None:
    info = DlqInfo(
        reason=DlqReason.WRONG_SIZE,
        detail="image is 8x8",
        time=T0,
        source_topic="frames",
        source_partition=1,
        source_offset=42,
        consumer_group="g",
    )
    original = [("product", b"p"), ("frame_id", b"f")]
    headers = original + info.to_kafka()
    assert DlqInfo.from_kafka(headers) == info
    assert strip_dlq_headers(headers) == original


def _result() -> ResultMessage:
    return ResultMessage(
        frame_id="f-1",
        product="bottle",
        line="l1",
        camera="cam-1",
        capture_time=T0,
        processed_at=T0,
        score=1.5,
        threshold=1.0,
        decision="defect",
        alarm_id=alarm_id_for("f-1", "m:1"),
        model_id="m:1",
        reference_version=3,
        image_width=256,
        image_height=200,
        timings=Timings(queue_ms=1, decode_ms=2, infer_ms=3, score_ms=4, batch_size=8, total_ms=10),
        source=Source(topic="frames", partition=0, offset=7),
        trace_id="a" * 32,
    )


def _alarm() -> AlarmMessage:
    return AlarmMessage(
        alarm_id=alarm_id_for("f-1", "m:1"),
        frame_id="f-1",
        line="l1",
        camera="cam-1",
        product="bottle",
        capture_time=T0,
        detected_at=T0,
        score=1.5,
        threshold=1.0,
        severity="major",
        regions=[Region(bbox=(1, 2, 30, 40), area=300, peak=1.5)],
        heatmap=Heatmap(encoding="uri", uri="file:///tmp/x.png", width=256, height=200),
        model_id="m:1",
        reference_version=3,
        source=Source(topic="frames", partition=0, offset=7),
    )


def test_results_and_alarms_round_trip_as_json() -> None:
    for message in (_result(), _alarm()):
        assert type(message).from_bytes(message.to_bytes()) == message
        assert json.loads(message.to_bytes())["schema_version"] == 1


def test_generated_json_schemas_are_up_to_date() -> None:
    expected = json_schemas()
    for name, text in expected.items():
        path = SCHEMA_DIR / name
        assert path.is_file(), f"{path} missing: run `python -m ingest.schemas`"
        assert path.read_text() == text, f"{path} is stale: run `python -m ingest.schemas`"


def test_messages_validate_against_the_published_json_schemas() -> None:
    schemas = {name.split(".v")[0]: json.loads(text) for name, text in json_schemas().items()}
    jsonschema.validate(json.loads(_result().to_bytes()), schemas["result"])
    jsonschema.validate(json.loads(_alarm().to_bytes()), schemas["alarm"])
    bad = json.loads(_alarm().to_bytes())
    bad["severity"] = "apocalyptic"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schemas["alarm"])
