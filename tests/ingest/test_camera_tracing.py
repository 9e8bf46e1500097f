"""The camera simulator's PRODUCER span: the frame's traceparent points at it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from PIL import Image

from ingest.camera import CameraSimulator
from ingest.tracing import tracer_provider


class _Producer:
    """Records what would be sent (no broker: this test is about the headers)."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send(self, topic: str, **kwargs: Any) -> None:
        self.sent.append({"topic": topic, **kwargs})


def _image(tmp_path: Path) -> Path:
    path = tmp_path / "part.png"
    Image.fromarray(np.full((32, 48, 3), 128, np.uint8)).save(path)
    return path


def test_publish_span_is_the_parent_named_in_the_traceparent(tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    provider = tracer_provider("adqc-camera", exporter=exporter)
    producer = _Producer()
    cam = CameraSimulator(
        producer,
        "frames",
        "bottle",
        camera="cam-7",
        tracer=provider.get_tracer("t"),  # type: ignore[arg-type]
    )
    _future, headers = cam.publish(_image(tmp_path), 0)
    provider.force_flush()
    (span,) = exporter.get_finished_spans()
    ctx = span.get_span_context()
    assert headers.traceparent == f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-01"
    assert span.name == "frames publish" and span.kind == SpanKind.PRODUCER
    assert span.attributes["messaging.message.id"] == headers.frame_id
    assert span.attributes["messaging.kafka.message.key"] == "cam-7"
    assert span.resource.attributes["service.name"] == "adqc-camera"
    sent = dict(producer.sent[0]["headers"])
    assert sent["traceparent"].decode() == headers.traceparent
    provider.shutdown()


def test_without_a_tracer_each_frame_gets_a_fresh_trace(tmp_path: Path) -> None:
    cam = CameraSimulator(_Producer(), "frames", "bottle")  # type: ignore[arg-type]
    image = _image(tmp_path)
    first = cam.publish(image, 0)[1].traceparent
    second = cam.publish(image, 1)[1].traceparent
    assert first.split("-")[1] != second.split("-")[1]
