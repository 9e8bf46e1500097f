"""One frame's trace, from the camera to its result and alarm, found in a real Jaeger v2."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from ingest_testkit import (
    REPO_ROOT,
    ServeProcess,
    adqc_command,
    read_all,
    serve_topics,
    write_config,
)

from ingest.schemas import AlarmMessage, ResultMessage

pytestmark = pytest.mark.integration


def _wait_trace(jaeger: Any, trace_id: str, timeout_s: float = 60.0) -> dict[str, Any]:
    """The trace once both services' spans arrived (serve exports in batches)."""
    deadline = time.monotonic() + timeout_s
    trace: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        trace = jaeger.trace(trace_id)
        if trace is not None:
            services = {p["serviceName"] for p in trace["processes"].values()}
            names = {s["operationName"] for s in trace["spans"]}
            if services >= {"adqc-camera", "adqc-serve"} and "publish" in names:
                return trace
        time.sleep(0.5)
    raise AssertionError(f"trace {trace_id} incomplete in Jaeger after {timeout_s} s: {trace}")


def test_a_frame_trace_runs_from_the_camera_through_serve_in_jaeger(
    jaeger_server: Any,
    kafka_broker: Any,
    product: Any,
    frame_images: Any,
    ingest_checkpoint: Path,
    tmp_path: Path,
) -> None:
    topics, config = serve_topics(
        kafka_broker,
        "trace",
        product.store_url,
        ingest_checkpoint,
        telemetry={"prometheus_port": None, "otlp_endpoint": jaeger_server.otlp_http_endpoint},
    )
    serve = ServeProcess(write_config(tmp_path / "serve.yaml", config), tmp_path / "serve.log")
    try:
        camera = subprocess.run(
            adqc_command(
                "camera", "simulate", "--source", str(frame_images.defect[0]),
                "--product", product.name, "--topic", topics.frames, "--count", "1",
                "--bootstrap", kafka_broker.bootstrap,
                "--otlp-endpoint", jaeger_server.otlp_http_endpoint,
            ),
            capture_output=True, text=True, timeout=300, cwd=REPO_ROOT, check=False,
        )  # fmt: skip
        assert camera.returncode == 0, camera.stderr[-3000:]
        (frame,) = read_all(kafka_broker.bootstrap, topics.frames, 1, timeout_s=10, quiet_s=0)
        (record,) = read_all(kafka_broker.bootstrap, topics.results, 1, timeout_s=180)
        result = ResultMessage.from_bytes(record.value)
        alarms = read_all(
            kafka_broker.bootstrap, topics.alarms, int(result.decision == "defect"), timeout_s=30
        )
        # serve exports its spans in batches (every few seconds) while it runs
        trace = _wait_trace(jaeger_server, result.trace_id)
        serve.signal(signal.SIGTERM)
        assert serve.wait(60) == 0, serve.output()[-3000:]
    finally:
        serve.stop()

    # The trace id: from the camera frame's traceparent, carried on to the result (and alarm).
    sent_traceparent = dict(frame.headers)["traceparent"].decode()
    _version, trace_id, camera_span_id, _flags = sent_traceparent.split("-")
    assert result.trace_id == trace_id
    assert dict(record.headers)["traceparent"].decode().split("-")[1] == trace_id
    for alarm in alarms:
        assert AlarmMessage.from_bytes(alarm.value).trace_id == trace_id

    service = {pid: p["serviceName"] for pid, p in trace["processes"].items()}
    spans = {s["spanID"]: s for s in trace["spans"]}
    by_name = {s["operationName"]: s for s in trace["spans"]}

    # The camera's PRODUCER span is the one the frame's traceparent names ...
    publish = spans[camera_span_id]
    assert publish["operationName"] == f"{topics.frames} publish"
    assert service[publish["processID"]] == "adqc-camera"
    # ... serve's CONSUMER span is its child, and serve's stages are children of that.
    process = by_name[f"{topics.frames} process"]
    assert service[process["processID"]] == "adqc-serve"
    assert {(r["refType"], r["spanID"]) for r in process["references"]} == {
        ("CHILD_OF", camera_span_id)
    }
    for stage in ("consume", "decode", "infer", "score", "publish"):
        child = by_name[stage]
        assert child["references"][0]["spanID"] == process["spanID"], stage
    tags = {t["key"]: t["value"] for t in process["tags"]}
    assert tags["messaging.message.id"] == result.frame_id
    assert tags["span.kind"] == "consumer"
