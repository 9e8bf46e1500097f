"""End-to-end smoke check of a running deployment: send one frame, wait for its outcome.

Used by the Helm chart's ``helm test`` hook (``python -m ingest.smoke``). Kafka connection
and topics come from the same ``ADQC_*`` environment as the workers (``load_settings``).

With ``--product`` naming an onboarded product the frame must come back as a result on the
results topic (consume -> decode -> engine -> score -> publish). Without it the frame names a
product that does not exist and must come back on the dead-letter topic with reason
``unknown_product`` (consume -> decode -> store lookup -> publish), which needs no onboarding.
Exit status 0 when the expected outcome arrives in time, 1 otherwise (the reason printed).
"""

from __future__ import annotations

import argparse
import io
import sys
import time
import uuid
from dataclasses import dataclass

import numpy as np
from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition
from PIL import Image

from ingest.camera import new_traceparent
from ingest.schemas import DlqInfo, DlqReason, FrameHeaders, ResultMessage, utc_now
from ingest.settings import KafkaSettings, TopicsSettings, load_settings

MISSING_PRODUCT = "adqc-smoke-no-such-product"


@dataclass(frozen=True)
class Outcome:
    """Where the smoke frame ended: ``"result"`` or ``"dlq"``, and a one-line description."""

    kind: str
    detail: str


def smoke_image(size: int = 128, seed: int = 0) -> bytes:
    """A small textured PNG (valid for every decoder limit)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(90, 160, size=(size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _frame_id(headers: list[tuple[str, bytes]] | None) -> str | None:
    for name, value in headers or ():
        if name == "frame_id" and value is not None:
            return value.decode("utf-8", "replace")
    return None


def run_smoke(
    kafka: KafkaSettings,
    topics: TopicsSettings,
    product: str | None,
    timeout_s: float = 120.0,
    line: str = "smoke",
    camera: str = "smoke-cam",
) -> Outcome | None:
    """Send one frame of ``product`` (None: a product that does not exist) and return where it
    ended, or None when nothing arrived within ``timeout_s``."""
    client = kafka.client_config()
    consumer = KafkaConsumer(**client, enable_auto_commit=False, group_id=None)
    producer = KafkaProducer(**client, acks="all", max_request_size=16 * 1024 * 1024)
    try:
        watched = [
            TopicPartition(topic, p)
            for topic in (topics.results, topics.dlq)
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        if not watched:
            raise RuntimeError(f"topics {topics.results!r} and {topics.dlq!r} do not exist")
        consumer.assign(watched)
        consumer.seek_to_end(*watched)
        for tp in watched:
            consumer.position(tp)  # resolve "end" now, before the frame is sent
        png = smoke_image()
        headers = FrameHeaders(
            product=product or MISSING_PRODUCT,
            line=line,
            camera=camera,
            frame_id=f"smoke-{uuid.uuid4().hex}",
            capture_time=utc_now(),
            content_type="image/png",
            traceparent=new_traceparent(),
            width=128,
            height=128,
        )
        producer.send(
            topics.frames, key=camera.encode(), value=png, headers=headers.to_kafka()
        ).get(timeout=30)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=500).items():
                for record in records:
                    if tp.topic == topics.results:
                        result = ResultMessage.from_bytes(record.value)
                        if result.frame_id == headers.frame_id:
                            return Outcome(
                                "result",
                                f"{result.decision} score={result.score:.4g} "
                                f"threshold={result.threshold:.4g} model={result.model_id}",
                            )
                    elif _frame_id(record.headers) == headers.frame_id:
                        info = DlqInfo.from_kafka(record.headers)
                        return Outcome("dlq", f"{info.reason}: {info.detail}")
        return None
    finally:
        producer.close(timeout=5)
        consumer.close()


def main(argv: list[str] | None = None) -> int:
    """``python -m ingest.smoke [--product P] [--timeout S]``."""
    parser = argparse.ArgumentParser(
        prog="python -m ingest.smoke", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--product", default="", help="an onboarded product (empty: expect DLQ)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait")
    args = parser.parse_args(argv)
    settings = load_settings()
    outcome = run_smoke(settings.kafka, settings.topics, args.product or None, args.timeout)
    if outcome is None:
        print(f"FAIL: no result or DLQ record for the smoke frame within {args.timeout:g} s")
        return 1
    expected = "result" if args.product else "dlq"
    print(f"{outcome.kind}: {outcome.detail}")
    if outcome.kind != expected:
        print(f"FAIL: expected a {expected} record for the smoke frame")
        return 1
    if expected == "dlq" and not outcome.detail.startswith(DlqReason.UNKNOWN_PRODUCT.value):
        print(f"FAIL: expected DLQ reason {DlqReason.UNKNOWN_PRODUCT.value}")
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
