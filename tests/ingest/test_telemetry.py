"""Spans are parented by the frame's traceparent; metrics are served on /metrics."""

from __future__ import annotations

import time
import urllib.request

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from ingest.camera import new_traceparent
from ingest.settings import TelemetrySettings
from ingest.telemetry import Telemetry, trace_id_of, traceparent_of


def test_process_span_continues_the_camera_trace() -> None:
    exporter = InMemorySpanExporter()
    tel = Telemetry(TelemetrySettings(prometheus_port=None), span_exporter=exporter)
    parent = new_traceparent()
    now = time.time_ns()
    span = tel.start_process_span(
        topic="frames",
        partition=1,
        offset=42,
        group="g",
        key=b"cam-1",
        headers={"traceparent": parent, "frame_id": "f-1", "product": "p"},
        start_ns=now,
    )
    tel.child_span(span, "decode", now, now + 1000)
    span.end()
    tel.shutdown()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    process = spans["frames process"]
    assert process.kind is SpanKind.CONSUMER
    assert format(process.context.trace_id, "032x") == parent.split("-")[1]
    assert format(process.parent.span_id, "016x") == parent.split("-")[2]
    attrs = process.attributes
    assert attrs["messaging.system"] == "kafka"
    assert attrs["messaging.operation.type"] == "process"
    assert attrs["messaging.destination.name"] == "frames"
    assert attrs["messaging.destination.partition.id"] == "1"
    assert attrs["messaging.kafka.offset"] == 42
    assert attrs["messaging.consumer.group.name"] == "g"
    assert attrs["messaging.kafka.message.key"] == "cam-1"
    assert attrs["messaging.message.id"] == "f-1"
    assert spans["decode"].parent.span_id == process.context.span_id
    header = traceparent_of(span)["traceparent"]
    assert header.split("-")[1] == parent.split("-")[1] == trace_id_of(span)


def test_frames_without_traceparent_start_a_new_trace() -> None:
    exporter = InMemorySpanExporter()
    tel = Telemetry(TelemetrySettings(prometheus_port=None), span_exporter=exporter)
    span = tel.start_process_span(
        topic="t", partition=0, offset=0, group="g", key=None, headers={}, start_ns=time.time_ns()
    )
    span.end()
    (finished,) = exporter.get_finished_spans()
    assert finished.parent is None and trace_id_of(span) is not None


def test_metrics_endpoint_serves_the_pipeline_metrics() -> None:
    tel = Telemetry(TelemetrySettings(prometheus_port=0, prometheus_addr="127.0.0.1"))
    port = tel.start_metrics_server()
    try:
        tel.metrics.frames_in.labels(topic="frames").inc(3)
        tel.metrics.e2e_latency.observe(0.2)
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    finally:
        tel.shutdown()
    text = text.decode()
    assert 'adqc_frames_in_total{topic="frames"} 3.0' in text
    assert "adqc_e2e_latency_seconds_count 1.0" in text
    for name in ("adqc_frames_out", "adqc_frames_failed", "adqc_alarms", "adqc_batch_size"):
        assert f"# TYPE {name}" in text
