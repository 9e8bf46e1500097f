"""The serve loop against a real Kafka broker and Redis store, with the local engine."""

from __future__ import annotations

import base64
import io
import json
import time
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ingest_testkit import (
    Topics,
    committed,
    producer,
    read_all,
    running_loop,
    serve_config,
    serve_topics,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from ingest.camera import CameraSimulator
from ingest.schemas import (
    AlarmMessage,
    DlqInfo,
    DlqReason,
    FrameHeaders,
    ResultMessage,
    alarm_id_for,
    utc_now,
)
from ingest.settings import load_settings
from ingest.telemetry import Telemetry
from pretrain.preprocess import load_image

pytestmark = pytest.mark.integration


def _metrics(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    totals: dict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            totals[sample.name] += sample.value
    return totals


def _samples(port: int) -> list[Any]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def test_frames_become_results_and_alarms(
    kafka_broker: Any,
    product: Any,
    scorer: Any,
    frame_images: Any,
    ingest_checkpoint: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ingest.loop

    monkeypatch.setattr(ingest.loop, "LAG_INTERVAL_S", 0.2)
    topics, config = serve_topics(
        kafka_broker, "e2e", product.store_url, ingest_checkpoint, partitions=2
    )
    config["telemetry"] = {"prometheus_port": 0, "prometheus_addr": "127.0.0.1"}
    settings = load_settings(None, **config)
    exporter = InMemorySpanExporter()
    telemetry = Telemetry(settings.telemetry, span_exporter=exporter)
    port = telemetry.start_metrics_server()

    # Two cameras, good and defective frames interleaved.
    paths = [p for pair in zip(frame_images.good, frame_images.defect, strict=True) for p in pair]
    prod = producer(kafka_broker.bootstrap)
    cams = [
        CameraSimulator(prod, topics.frames, product.name, camera=c) for c in ("cam-a", "cam-b")
    ]
    with running_loop(settings, scorer, telemetry):
        sent: dict[str, tuple[FrameHeaders, Path]] = {}
        for i, path in enumerate(paths):
            _future, headers = cams[i % 2].publish(path, i)
            sent[headers.frame_id] = (headers, path)
        prod.flush()
        results = read_all(kafka_broker.bootstrap, topics.results, len(paths), timeout_s=90)
        n_defect = sum(ResultMessage.from_bytes(r.value).decision == "defect" for r in results)
        alarms = read_all(kafka_broker.bootstrap, topics.alarms, n_defect, timeout_s=30)
        time.sleep(0.5)  # one more lag refresh after the last frame
        metrics = _metrics(port)
        samples = _samples(port)
        health = urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert health.status == 200 and json.loads(health.read())["assigned_partitions"] == 2
    telemetry.shutdown()
    prod.close()

    parsed = [ResultMessage.from_bytes(r.value) for r in results]
    # Exactly one result per frame.
    assert sorted(r.frame_id for r in parsed) == sorted(sent)
    # Per-partition order: within a results partition, each camera's frames keep their order.
    by_partition: dict[tuple[int, int], list[int]] = defaultdict(list)
    for record, result in zip(results, parsed, strict=True):
        assert record.key == result.camera.encode()
        by_partition[(record.partition, result.source.partition)].append(result.source.offset)
    for offsets in by_partition.values():
        assert offsets == sorted(offsets)
    # Same scores as scoring the decoded images directly; decisions follow the threshold.
    direct = scorer.score([load_image(sent[r.frame_id][1]) for r in parsed], product.name)
    for result, ref in zip(parsed, direct, strict=True):
        assert result.score == pytest.approx(ref.score, rel=1e-4, abs=1e-6)
        assert result.threshold == pytest.approx(product.threshold)
        assert result.decision == ("defect" if result.score > result.threshold else "ok")
        assert result.model_id == ref.model_id and result.reference_version >= 1
        assert result.trace_id == sent[result.frame_id][0].traceparent.split("-")[1]
        assert result.timings.batch_size >= 1 and result.timings.total_ms > 0
    if frame_images.real:
        good = [r.score for r in parsed if sent[r.frame_id][1] in frame_images.good]
        bad = [r.score for r in parsed if sent[r.frame_id][1] in frame_images.defect]
        assert np.mean(bad) > np.mean(good)
    # Alarms exactly for the frames above threshold, with consistent fields and heatmaps.
    flagged = {r.alarm_id: r for r in parsed if r.decision == "defect"}
    if frame_images.real:
        assert flagged, "no MVTec bottle defect was flagged"
    assert all(r.alarm_id is None for r in parsed if r.decision == "ok")
    alarm_msgs = [AlarmMessage.from_bytes(a.value) for a in alarms]
    assert sorted(a.alarm_id for a in alarm_msgs) == sorted(flagged)
    for alarm in alarm_msgs:
        result = flagged[alarm.alarm_id]
        assert alarm.alarm_id == alarm_id_for(alarm.frame_id, alarm.model_id)
        assert (alarm.frame_id, alarm.score, alarm.camera) == (
            result.frame_id,
            result.score,
            result.camera,
        )
        assert alarm.regions, "a frame above threshold has at least one region above it"
        for region in alarm.regions:
            x0, y0, x1, y1 = region.bbox
            assert 0 <= x0 < x1 <= result.image_width and 0 <= y0 < y1 <= result.image_height
        png = Image.open(io.BytesIO(base64.b64decode(alarm.heatmap.data)))
        assert png.format == "PNG"
        assert png.size == (result.image_width, result.image_height)

    # Traces: one "<topic> process" span per frame, child of the frame's traceparent.
    spans = exporter.get_finished_spans()
    process = [s for s in spans if s.name == f"{topics.frames} process"]
    assert len(process) == len(paths)
    trace_ids = {format(s.context.trace_id, "032x") for s in process}
    assert trace_ids == {h.traceparent.split("-")[1] for h, _ in sent.values()}
    for span in process:
        assert span.parent is not None and span.parent.is_remote
        assert span.attributes["messaging.system"] == "kafka"
        assert span.attributes["messaging.destination.name"] == topics.frames
        assert span.attributes["messaging.consumer.group.name"] == topics.group
        assert span.attributes["messaging.destination.partition.id"] in ("0", "1")
        children = {s.name for s in spans if s.parent and s.parent.span_id == span.context.span_id}
        assert children == {"consume", "decode", "infer", "score", "publish"}
    # Metrics on /metrics.
    assert metrics["adqc_frames_in_total"] == len(paths)
    assert metrics["adqc_frames_out_total"] == len(paths)
    assert metrics["adqc_alarms_total"] == len(flagged)
    assert metrics["adqc_e2e_latency_seconds_count"] == len(paths)
    assert metrics["adqc_batch_size_count"] >= 1
    # Per product / line / camera, and the product's calibration next to what it observes.
    out = [s for s in samples if s.name == "adqc_frames_out_total"]
    assert {(s.labels["product"], s.labels["line"], s.labels["camera"]) for s in out} == {
        (product.name, "line-1", "cam-a"),
        (product.name, "line-1", "cam-b"),
    }
    by_name = {(s.name, s.labels.get("product")): s.value for s in samples}
    assert by_name[("adqc_score_ratio_count", product.name)] == len(paths)
    target = scorer.record(product.name).calibration.target_far
    assert by_name[("adqc_alarm_rate_target", product.name)] == pytest.approx(target)
    assert by_name[("adqc_alarm_rate", product.name)] == pytest.approx(n_defect / len(paths))
    lag = {s.labels["partition"]: s.value for s in samples if s.name == "adqc_consumer_lag"}
    assert lag == {"0": 0.0, "1": 0.0}  # everything consumed
    assert metrics["adqc_assigned_partitions"] == 2
    assert metrics["adqc_loop_heartbeat_timestamp_seconds"] > time.time() - 60


def _png(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (120, 120, 120)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_malformed_frames_go_to_the_dlq_and_the_loop_keeps_running(
    kafka_broker: Any, product: Any, scorer: Any, frame_images: Any, ingest_checkpoint: Path
) -> None:
    topics = Topics.unique("dlq")
    kafka_broker.create_topics(topics.names(), partitions=1)
    roots = {"claim_check_roots": [str(frame_images.good[1].parent.resolve()), "/nonexistent"]}
    settings = load_settings(
        None,
        **serve_config(
            kafka_broker.bootstrap, topics, product.store_url, ingest_checkpoint, limits=roots
        ),
    )
    telemetry = Telemetry(settings.telemetry)
    good = frame_images.good[0].read_bytes()

    def headers(**over: Any) -> list[tuple[str, bytes]]:
        fields = {
            "product": product.name,
            "line": "l1",
            "camera": "cam-x",
            "frame_id": f"f-{len(messages)}",
            "capture_time": utc_now(),
            "content_type": "image/png",
        }
        fields.update(over)
        return FrameHeaders(**fields).to_kafka()

    messages: list[tuple[bytes, list[tuple[str, bytes]], DlqReason | None]] = []
    no_id = [h for h in headers() if h[0] != "frame_id"]
    messages.append((good, no_id, DlqReason.MISSING_HEADER))
    messages.append((b"definitely not a png", headers(), DlqReason.UNDECODABLE_IMAGE))
    messages.append((good[: len(good) // 2], headers(), DlqReason.UNDECODABLE_IMAGE))
    messages.append((good, headers(product="no-such-product"), DlqReason.UNKNOWN_PRODUCT))
    messages.append((_png((8, 8)), headers(), DlqReason.WRONG_SIZE))
    messages.append((good, headers(width=17, height=17), DlqReason.WRONG_SIZE))
    messages.append((good, headers(content_type="image/jpeg"), DlqReason.UNDECODABLE_IMAGE))
    missing = b"file:///nonexistent/adqc/frame.png"
    claim_headers = headers(content_type="text/uri-list")
    messages.append((missing, claim_headers, DlqReason.CLAIM_CHECK_UNREADABLE))
    bad_time = [(k, b"yesterday" if k == "capture_time" else v) for k, v in headers()]
    messages.append((good, bad_time, DlqReason.INVALID_HEADER))
    messages.append((good, headers(), None))  # a valid frame after all of them
    claim = frame_images.good[1].resolve().as_uri().encode()
    messages.append((claim, headers(content_type="text/uri-list"), None))

    prod = producer(kafka_broker.bootstrap)
    with running_loop(settings, scorer, telemetry) as loop:
        for value, hdrs, _ in messages:
            prod.send(topics.frames, key=b"cam-x", value=value, headers=hdrs)
        prod.flush()
        n_bad = sum(reason is not None for _, _, reason in messages)
        dlq = read_all(kafka_broker.bootstrap, topics.dlq, n_bad, timeout_s=60)
        results = read_all(kafka_broker.bootstrap, topics.results, len(messages) - n_bad)
        assert loop.running.is_set()
    prod.close()
    telemetry.shutdown()

    assert len(dlq) == n_bad
    expected = {i: reason for i, (_, _, reason) in enumerate(messages) if reason is not None}
    for record in dlq:
        info = DlqInfo.from_kafka(record.headers)
        assert info.source_topic == topics.frames and info.source_partition == 0
        assert info.reason == expected[info.source_offset], info.detail
        assert info.detail and info.consumer_group == topics.group
        value, hdrs, _ = messages[info.source_offset]
        assert record.value == value and record.key == b"cam-x"
        assert [h for h in record.headers if not h[0].startswith("dlq.")] == hdrs
    assert len(results) == 2
    assert {ResultMessage.from_bytes(r.value).source.offset for r in results} == {
        len(messages) - 2,
        len(messages) - 1,
    }
    assert committed(kafka_broker.bootstrap, topics.group, topics.frames) == {0: len(messages)}
