"""Result/alarm/DLQ builders from a typed ScoreResult; the demo's alarms are the same alarms."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from inference.results import Region, ScoreResult
from inference.scorer import find_regions
from ingest.messages import build_alarm, build_heatmap, build_result, frame_timings, png_size
from ingest.schemas import SCHEMA_DIR, FrameHeaders, Source, alarm_id_for

CAPTURE = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _schema(name: str) -> dict:
    return json.loads((SCHEMA_DIR / f"{name}.v1.json").read_text())


def _frame(frame_id: str = "cam-1-0007") -> FrameHeaders:
    return FrameHeaders(
        product="bottle",
        line="line-1",
        camera="cam-1",
        frame_id=frame_id,
        capture_time=CAPTURE,
        content_type="image/png",
    )


def _result(score: float = 1.5, shape: tuple[int, int] = (64, 96)) -> ScoreResult:
    anomaly = np.zeros((32, 32), np.float32)
    anomaly[4:8, 4:10] = score
    return ScoreResult(
        product="bottle",
        score=score,
        threshold=1.0,
        is_defective=score > 1.0,
        anomaly_map=anomaly,
        regions=find_regions(anomaly, 1.0, shape) if score > 1.0 else [],
        model_id="mobilenet_v2:1a2b3c4d5e6f",
        reference_version=3,
        timings={"resize_ms": 1.0, "features_ms": 4.0, "detector_ms": 2.0, "regions_ms": 0.5},
        image_shape=shape,
    )


SOURCE = Source(topic="frames", partition=0, offset=7)


def test_alarm_carries_the_scorers_frame_pixel_regions_and_validates() -> None:
    res = _result()
    image = np.full((64, 96, 3), 90, np.uint8)
    alarm_id = alarm_id_for("cam-1-0007", res.model_id)
    heatmap = build_heatmap(image, res, alarm_id, "inline")
    alarm = build_alarm(_frame(), res, source=SOURCE, heatmap=heatmap, trace_id="ab" * 16)
    assert alarm.alarm_id == alarm_id and alarm.severity == "major"
    (region,) = alarm.regions
    assert isinstance(region, Region) and region == res.regions[0]
    # 24 map pixels above threshold; each map pixel covers (64*96)/(32*32) = 6 frame pixels
    assert region.area == 24 * 6 and region.bbox == (12, 8, 30, 16)
    assert (heatmap.height, heatmap.width) == (64, 96)
    assert png_size(base64.b64decode(heatmap.data)) == (64, 96)
    jsonschema.validate(json.loads(alarm.to_bytes()), _schema("alarm"))


def test_result_message_validates_and_links_the_alarm() -> None:
    res = _result()
    now = datetime.now(UTC)
    timings = frame_timings(
        _frame(), res, received_ns=int(CAPTURE.timestamp() * 1e9) + 3_000_000, decode_ns=2_000_000,
        batch_size=4, now=now,
    )  # fmt: skip
    assert timings.infer_ms == 5.0 and timings.score_ms == 2.5 and timings.decode_ms == 2.0
    assert abs(timings.queue_ms - 3.0) < 1e-3
    result = build_result(
        _frame(), res, image_shape=(64, 96), timings=timings, source=SOURCE, processed_at=now
    )
    assert result.decision == "defect" and result.alarm_id == alarm_id_for(
        "cam-1-0007", res.model_id
    )
    assert (result.image_width, result.image_height) == (96, 64)
    jsonschema.validate(json.loads(result.to_bytes()), _schema("result"))
    good = build_result(
        _frame(), _result(0.5), image_shape=(64, 96), timings=timings, source=SOURCE,
        processed_at=now,
    )  # fmt: skip
    assert good.decision == "ok" and good.alarm_id is None
    with pytest.raises(ValueError, match="not defective"):
        build_alarm(_frame(), _result(0.5), source=SOURCE)


def test_uri_heatmaps_are_written_by_alarm_id(tmp_path: Path) -> None:
    heatmap = build_heatmap(np.zeros((64, 96, 3), np.uint8), _result(), "abc", "uri", tmp_path)
    assert heatmap.uri == (tmp_path / "abc.png").resolve().as_uri()
    assert (tmp_path / "abc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert build_heatmap(np.zeros((64, 96, 3), np.uint8), _result(), "abc", "none") is None


def test_demo_alarms_are_serve_alarms(tmp_path: Path) -> None:
    from adqc.demo import Frame, _alarm

    res = _result()
    image = np.full((64, 96, 3), 90, np.uint8)
    alarm = _alarm(Frame("cell0042", tmp_path / "cell0042.png"), 5, image, res, tmp_path)
    document = json.loads(alarm.model_dump_json())
    jsonschema.validate(document, _schema("alarm"))
    serve_alarm = build_alarm(_frame("cell0042"), res, source=SOURCE)
    assert alarm.alarm_id == serve_alarm.alarm_id  # the id serve gives the same frame
    assert alarm.regions == serve_alarm.regions and alarm.severity == serve_alarm.severity
    assert (tmp_path / f"{alarm.alarm_id}.png").is_file()
