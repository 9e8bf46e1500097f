"""A camera simulator: publishes the images of a folder to the frames topic at a set rate.

Each frame is one Kafka record: key = camera id, value = the encoded file bytes (or, with
``claim_check=True``, its ``file://`` URI), headers = :class:`~ingest.schemas.FrameHeaders`
(product, line, camera, frame id, capture time, content type, image size and a fresh W3C
``traceparent``, as an instrumented camera gateway would send). With a ``tracer`` the
``traceparent`` is that of a ``"<topic> publish"`` PRODUCER span, exported like any span, so
the frame's trace starts at the camera.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kafka import KafkaProducer
from opentelemetry.trace import SpanKind, Tracer
from PIL import Image, UnidentifiedImageError

from ingest.schemas import CLAIM_CHECK_CONTENT_TYPE, FrameHeaders, utc_now
from ingest.settings import KafkaSettings

SUFFIX_CONTENT_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


class CameraSourceError(ValueError):
    """The source folder is missing, empty or holds an unreadable image (named)."""


def list_images(source: Path) -> list[Path]:
    """PNG/JPEG files under ``source`` (recursively), sorted by path."""
    if not source.exists():
        raise CameraSourceError(f"{source}: no such file or directory")
    if source.is_file():
        files = [source]
    else:
        files = sorted(p for p in source.rglob("*") if p.suffix.lower() in SUFFIX_CONTENT_TYPES)
    files = [p for p in files if p.suffix.lower() in SUFFIX_CONTENT_TYPES]
    if not files:
        raise CameraSourceError(f"{source}: no .png/.jpg/.jpeg images found")
    return files


def new_traceparent() -> str:
    """A fresh sampled W3C ``traceparent`` (random trace and span ids)."""
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


@dataclass(frozen=True)
class SentFrame:
    """What was published for one frame (for tests and summaries)."""

    headers: FrameHeaders
    path: Path
    partition: int
    offset: int


class CameraSimulator:
    """Publishes image files as frames of one camera.

    Args:
        producer: a KafkaProducer (e.g. from :func:`make_producer`).
        topic: frames topic.
        product, line, camera: frame metadata (``camera`` is also the record key).
        claim_check: send ``file://`` URIs instead of image bytes.
        tracer: make a PRODUCER span per frame (see :mod:`ingest.tracing`); default: a random
            ``traceparent`` and no span.
    """

    def __init__(
        self,
        producer: KafkaProducer,
        topic: str,
        product: str,
        line: str = "line-1",
        camera: str = "cam-1",
        claim_check: bool = False,
        tracer: Tracer | None = None,
    ) -> None:
        self.producer = producer
        self.tracer = tracer
        self.topic = topic
        self.product = product
        self.line = line
        self.camera = camera
        self.claim_check = claim_check
        self._run = uuid.uuid4().hex[:8]

    def message(
        self, path: Path, index: int, traceparent: str | None = None
    ) -> tuple[bytes, bytes, FrameHeaders]:
        """(key, value, headers) for ``path`` as the ``index``-th frame (a fresh
        ``traceparent`` unless one is given)."""
        content_type = SUFFIX_CONTENT_TYPES.get(path.suffix.lower())
        if content_type is None:
            raise CameraSourceError(f"{path}: not a .png/.jpg/.jpeg file")
        try:
            with Image.open(path) as image:
                width, height = image.size
        except (OSError, UnidentifiedImageError) as exc:
            raise CameraSourceError(f"{path}: not a readable image ({exc})") from exc
        if self.claim_check:
            value = path.resolve().as_uri().encode()
            content_type = CLAIM_CHECK_CONTENT_TYPE
        else:
            value = path.read_bytes()
        headers = FrameHeaders(
            product=self.product,
            line=self.line,
            camera=self.camera,
            frame_id=f"{self.camera}-{self._run}-{index:07d}",
            capture_time=utc_now(),
            content_type=content_type,
            traceparent=traceparent or new_traceparent(),
            width=width,
            height=height,
        )
        return self.camera.encode(), value, headers

    def publish(self, path: Path, index: int) -> Any:
        """Send one frame; returns kafka-python's future and the headers sent."""
        if self.tracer is None:
            return self._send(*self.message(path, index))
        from ingest.tracing import traceparent

        attributes = {
            "messaging.system": "kafka",
            "messaging.operation.type": "send",
            "messaging.destination.name": self.topic,
            "messaging.kafka.message.key": self.camera,
            "adqc.product": self.product,
            "adqc.line": self.line,
        }
        name = f"{self.topic} publish"
        with self.tracer.start_as_current_span(
            name, kind=SpanKind.PRODUCER, attributes=attributes
        ) as span:
            key, value, headers = self.message(path, index, traceparent(span))
            span.set_attribute("messaging.message.id", headers.frame_id)
            return self._send(key, value, headers)

    def _send(self, key: bytes, value: bytes, headers: FrameHeaders) -> Any:
        future = self.producer.send(self.topic, key=key, value=value, headers=headers.to_kafka())
        return future, headers

    def run(
        self,
        paths: Iterable[Path],
        fps: float = 0.0,
        count: int | None = None,
        loop: bool = False,
        on_sent: Callable[[int], None] | None = None,
    ) -> list[SentFrame]:
        """Publish ``paths`` (cycling if ``loop``) at ``fps`` (0 = as fast as possible).

        Stops after ``count`` frames when given. Waits for every acknowledgement and
        returns what was sent, in order.
        """
        pending = []
        period = 1.0 / fps if fps > 0 else 0.0
        start = time.monotonic()
        for index, path in enumerate(_frames(list(paths), count, loop)):
            if period:
                delay = start + index * period - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            future, headers = self.publish(path, index)
            pending.append((future, headers, path))
            if on_sent is not None:
                on_sent(index + 1)
        self.producer.flush()
        sent = []
        for future, headers, path in pending:
            meta = future.get(timeout=60)
            sent.append(SentFrame(headers, path, meta.partition, meta.offset))
        return sent


def _frames(paths: list[Path], count: int | None, loop: bool) -> Iterator[Path]:
    if not paths:
        return
    n = 0
    while True:
        for path in paths:
            if count is not None and n >= count:
                return
            yield path
            n += 1
        if not loop:
            return


def make_producer(
    bootstrap: str | list[str] | None = None,
    *,
    kafka: KafkaSettings | None = None,
    **overrides: Any,
) -> KafkaProducer:
    """An idempotent ``acks=all`` producer for frames.

    ``kafka`` brings the security settings (TLS files, SASL) and, unless ``bootstrap`` is
    given, the bootstrap servers; ``overrides`` are passed to KafkaProducer last.
    """
    config: dict[str, Any] = kafka.client_config() if kafka is not None else {}
    if bootstrap is not None:
        config["bootstrap_servers"] = bootstrap
    if "bootstrap_servers" not in config:
        raise ValueError("make_producer needs bootstrap or kafka settings")
    config |= {
        "client_id": "adqc-camera",
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 5,
        "max_request_size": 16 * 1024 * 1024,
    }
    config.update(overrides)
    return KafkaProducer(**config)
