"""Spans are parented by the frame's traceparent; metrics are served on /metrics."""

from __future__ import annotations

import io
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from kafka.structs import TopicPartition
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from ingest.camera import new_traceparent
from ingest.logs import KAFKA_TRANSPORT_LOGGER, ClosedSocketRead, configure_logging
from ingest.settings import SettingsError, TelemetrySettings, load_settings
from ingest.telemetry import LabelLimiter, Telemetry, trace_id_of, traceparent_of


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
        tel.observe_result(
            product="p", line="l", camera="c", decision="ok", score=1, threshold=2, latency_s=0.2
        )
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    finally:
        tel.shutdown()
    text = text.decode()
    assert 'adqc_frames_in_total{topic="frames"} 3.0' in text
    assert 'adqc_e2e_latency_seconds_count{camera="c",line="l",product="p"} 1.0' in text
    for name in ("adqc_frames_out", "adqc_frames_failed", "adqc_alarms", "adqc_batch_size"):
        assert f"# TYPE {name}" in text


# --- per-product metrics, bounded labels, lag, health, logs ----------------------------------


def _sample(tel: Telemetry, name: str, **labels: str) -> float | None:
    return tel.metrics.registry.get_sample_value(name, labels)


def _result(tel: Telemetry, product: str = "bottle", decision: str = "ok", **kw) -> None:
    args = {
        "product": product,
        "line": "line-1",
        "camera": "cam-1",
        "decision": decision,
        "score": 0.5,
        "threshold": 1.0,
        "latency_s": 0.2,
        "target_far": 0.01,
    }
    tel.observe_result(**(args | kw))


def test_result_metrics_carry_product_line_camera() -> None:
    tel = Telemetry(TelemetrySettings(prometheus_port=None))
    _result(tel, decision="ok", score=0.45, threshold=0.5)
    _result(tel, decision="defect", score=1.2, threshold=0.5, latency_s=3.0)
    tel.observe_alarm(product="bottle", line="line-1", camera="cam-1", severity="major")
    where = {"product": "bottle", "line": "line-1", "camera": "cam-1"}
    assert _sample(tel, "adqc_frames_out_total", decision="ok", **where) == 1
    assert _sample(tel, "adqc_frames_out_total", decision="defect", **where) == 1
    assert _sample(tel, "adqc_alarms_total", severity="major", **where) == 1
    assert _sample(tel, "adqc_e2e_latency_seconds_count", **where) == 2
    assert _sample(tel, "adqc_e2e_latency_seconds_bucket", le="1.0", **where) == 1
    # score / threshold: 0.9 and 2.4
    assert _sample(tel, "adqc_score_ratio_bucket", product="bottle", le="0.9") == 1
    assert _sample(tel, "adqc_score_ratio_bucket", product="bottle", le="1.0") == 1
    assert _sample(tel, "adqc_score_ratio_bucket", product="bottle", le="2.0") == 1
    assert _sample(tel, "adqc_score_ratio_bucket", product="bottle", le="3.0") == 2
    assert _sample(tel, "adqc_score_ratio_sum", product="bottle") == pytest.approx(3.3)
    assert _sample(tel, "adqc_alarm_rate", product="bottle") == 0.5
    assert _sample(tel, "adqc_alarm_rate_target", product="bottle") == 0.01


def test_observed_alarm_rate_is_over_the_last_window_of_frames() -> None:
    tel = Telemetry(TelemetrySettings(prometheus_port=None, alarm_rate_window=10))
    for _ in range(10):
        _result(tel, "cable", decision="defect")
    assert _sample(tel, "adqc_alarm_rate", product="cable") == 1.0
    for i in range(10):
        _result(tel, "cable", decision="defect" if i < 2 else "ok")
    assert _sample(tel, "adqc_alarm_rate", product="cable") == pytest.approx(0.2)
    _result(tel, "screw", decision="ok")  # another product has its own window
    assert _sample(tel, "adqc_alarm_rate", product="screw") == 0.0
    assert _sample(tel, "adqc_alarm_rate", product="cable") == pytest.approx(0.2)


def test_label_cardinality_is_bounded() -> None:
    tel = Telemetry(
        TelemetrySettings(prometheus_port=None, max_products=2, max_lines=1, max_cameras=3)
    )
    for i in range(50):
        _result(tel, f"p{i}", line=f"l{i}", camera=f"c{i}")
        tel.observe_failure("unknown_product", f"p{i}")
    products = {
        s.labels["product"]
        for family in tel.metrics.registry.collect()
        if family.name == "adqc_frames_out"
        for s in family.samples
    }
    assert products == {"p0", "p1", "other"}
    assert (
        _sample(
            tel,
            "adqc_frames_out_total",
            decision="ok",
            product="other",
            line="other",
            camera="other",
        )
        == 47
    )
    # p0 and p1 were seen in results; the others are not onboarded as far as labels go
    assert _sample(tel, "adqc_frames_failed_total", reason="unknown_product", product="other") == 48
    assert _sample(tel, "adqc_frames_failed_total", reason="unknown_product", product="p1") == 1
    assert _sample(tel, "adqc_alarm_rate", product="p2") is None
    tel.observe_failure("missing_header", None)
    assert _sample(tel, "adqc_frames_failed_total", reason="missing_header", product="unknown") == 1


def test_dead_lettered_products_do_not_take_label_slots() -> None:
    tel = Telemetry(TelemetrySettings(prometheus_port=None, max_products=2))
    for i in range(10):
        tel.observe_failure("unknown_product", f"junk-{i}")
    _result(tel, "bottle")
    _result(tel, "cable")
    tel.observe_failure("wrong_size", "bottle")
    assert _sample(tel, "adqc_frames_failed_total", reason="unknown_product", product="other") == 10
    assert _sample(tel, "adqc_frames_failed_total", reason="wrong_size", product="bottle") == 1
    where = {"line": "line-1", "camera": "cam-1", "decision": "ok"}
    assert _sample(tel, "adqc_frames_out_total", product="cable", **where) == 1
    # empty and overlong values
    limiter = LabelLimiter({"product": 5})
    assert limiter("product", "") == "unknown"
    assert limiter("product", "x" * 200) == "x" * 64


def test_consumer_lag_per_partition_and_revoked_partitions_disappear() -> None:
    tel = Telemetry(TelemetrySettings(prometheus_port=None))
    tel.set_consumer_lag(
        {TopicPartition("frames", 0): 120, TopicPartition("frames", 1): 50, ("frames", 2): None},
        {TopicPartition("frames", 0): 100, TopicPartition("frames", 1): 60, ("frames", 2): 7},
    )
    assert _sample(tel, "adqc_consumer_lag", topic="frames", partition="0") == 20
    assert _sample(tel, "adqc_consumer_lag", topic="frames", partition="1") == 0  # never < 0
    assert _sample(tel, "adqc_consumer_lag", topic="frames", partition="2") is None
    tel.set_consumer_lag({("frames", 1): 90}, {("frames", 1): 60})  # partition 0 revoked
    assert _sample(tel, "adqc_consumer_lag", topic="frames", partition="0") is None
    assert _sample(tel, "adqc_consumer_lag", topic="frames", partition="1") == 30


def test_healthz_fails_when_the_loop_stops_beating_with_partitions_assigned() -> None:
    tel = Telemetry(
        TelemetrySettings(prometheus_port=0, prometheus_addr="127.0.0.1", stall_after_s=0.3)
    )
    port = tel.start_metrics_server()

    def get(path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    try:
        status, body = get("/healthz")
        assert status == 200 and json.loads(body)["status"] == "starting"
        tel.heartbeat(assigned=0)
        time.sleep(0.4)
        assert get("/healthz")[0] == 200  # idle (no partitions): nothing to stall
        tel.heartbeat(assigned=3)
        assert get("/healthz")[0] == 200
        time.sleep(0.4)
        status, body = get("/healthz")
        assert status == 503
        details = json.loads(body)
        assert details["status"] == "stalled" and details["assigned_partitions"] == 3
        assert details["heartbeat_age_s"] > 0.3
        tel.heartbeat(assigned=3)
        assert get("/healthz")[0] == 200
        status, text = get("/metrics")  # the exposition is still served next to it
        assert status == 200 and "adqc_assigned_partitions 3.0" in text
        assert "adqc_loop_heartbeat_timestamp_seconds" in text
    finally:
        tel.shutdown()


def test_series_names_cover_counters_histograms_gauges() -> None:
    names = Telemetry(TelemetrySettings(prometheus_port=None)).metrics.series_names()
    for name in (
        "adqc_frames_out_total",
        "adqc_e2e_latency_seconds_bucket",
        "adqc_score_ratio_count",
        "adqc_consumer_lag",
        "adqc_alarm_rate_target",
    ):
        assert name in names
    assert "adqc_frames_out" not in names  # a counter is exposed with _total only


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """A stream for ``configure_logging``; the root logger's handlers and level are restored."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        yield io.StringIO()
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_log_format(fmt: str, monkeypatch, log_stream: io.StringIO) -> None:
    monkeypatch.setenv("ADQC_LOG_FORMAT", fmt)
    settings = load_settings()
    assert settings.log_format == fmt
    configure_logging("INFO", settings.log_format, stream=log_stream)
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("adqc.serve").exception("frame %s failed", "f-1")
    logging.getLogger("adqc.serve").debug("not shown")
    lines = log_stream.getvalue().strip().splitlines()
    if fmt == "json":
        record = json.loads(lines[0])
        assert len([line for line in lines if line.startswith("{")]) == 1
        assert record["level"] == "ERROR" and record["logger"] == "adqc.serve"
        assert record["message"] == "frame f-1 failed"
        assert "ValueError: boom" in record["exc_info"]
        assert record["time"][:2] == "20"
    else:
        assert lines[0].endswith("ERROR adqc.serve: frame f-1 failed")


def test_log_format_is_validated(monkeypatch) -> None:
    monkeypatch.setenv("ADQC_LOG_FORMAT", "xml")
    with pytest.raises(SettingsError, match="log_format"):
        load_settings()


def test_kafka_closed_socket_read_is_dropped_and_other_kafka_errors_pass(
    log_stream: io.StringIO,
) -> None:
    """kafka-python's read of a socket it has just closed (an ERROR with a traceback in
    3.0.12) is not logged; a real transport error still is."""
    transport = logging.getLogger(KAFKA_TRANSPORT_LOGGER)
    configure_logging("INFO", "text", stream=log_stream)
    configure_logging("INFO", "text", stream=log_stream)  # idempotent: one filter
    assert sum(isinstance(f, ClosedSocketRead) for f in transport.filters) == 1
    for name, exc in [
        (
            "<KafkaTCPTransport [none] (closed)>",
            AttributeError("'NoneType' object has no attribute 'recv'"),
        ),
        ("<KafkaTCPTransport [broker:9092]>", ConnectionResetError("reset by peer")),
    ]:
        try:
            raise exc
        except Exception:
            transport.exception("%s: Error receiving network data closing socket", name)
    out = log_stream.getvalue()
    assert "(closed)" not in out and "AttributeError" not in out
    assert "[broker:9092]>: Error receiving network data" in out
    assert "ConnectionResetError: reset by peer" in out
