"""No poison pill: every output of the serve loop is made to fit what the broker takes, and
every frame's offset is committed once it is accounted for (real Kafka, Redis, local engine)."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pytest
from ingest_testkit import Topics, answered, committed, running_loop, serve_config, serve_topics
from PIL import Image

from ingest.schemas import AlarmMessage, DlqInfo, DlqReason, FrameHeaders, utc_now
from ingest.settings import load_settings
from ingest.telemetry import Telemetry

pytestmark = pytest.mark.integration

BIG = 16 * 1024 * 1024 - 8192  # a frame just under the producer's and broker's 16 MiB limit


def _headers(product: str, frame_id: str, content_type: str = "image/png") -> list[Any]:
    return FrameHeaders(
        product=product,
        line="l1",
        camera="cam-p",
        frame_id=frame_id,
        capture_time=utc_now(),
        content_type=content_type,
    ).to_kafka()


def _noise_jpeg(side: int) -> bytes:
    rng = np.random.default_rng(1)
    buffer = io.BytesIO()
    pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _big_producer_send(bootstrap: str, topic: str, frames: list[tuple[bytes, list[Any]]]) -> None:
    from kafka import KafkaProducer

    prod = KafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=16 * 1024 * 1024)
    try:
        for value, headers in frames:
            prod.send(topic, key=b"cam-p", value=value, headers=headers)
        prod.flush()
    finally:
        prod.close()


def test_huge_bad_frames_and_huge_heatmaps_never_stop_the_loop(
    kafka_broker: Any,
    product: Any,
    scorer: Any,
    frame_images: Any,
    ingest_checkpoint: Path,
    tmp_path: Path,
) -> None:
    root = tmp_path / "claims"
    root.mkdir()
    topics, config = serve_topics(
        kafka_broker,
        "pill",
        product.store_url,
        ingest_checkpoint,
        limits={"claim_check_roots": [str(root)]},
    )
    settings = load_settings(None, **config)
    telemetry = Telemetry(settings.telemetry)
    big_bad = os.urandom(BIG)
    jpeg = _noise_jpeg(4096)
    good = frame_images.good[0].read_bytes()
    frames = [
        (big_bad, _headers(product.name, "huge-bad")),  # DLQ copy would be > 16 MiB
        (jpeg, _headers(product.name, "huge-jpeg", "image/jpeg")),  # inline heatmap 4096^2
        (good, _headers(product.name, "good-after")),
    ]
    with running_loop(settings, scorer, telemetry) as loop:
        _big_producer_send(kafka_broker.bootstrap, topics.frames, frames)
        out = answered(kafka_broker.bootstrap, topics, lambda a: len(set(a.frame_ids())) >= 3, 180)
        assert loop.running.is_set()
    telemetry.shutdown()

    assert sorted(set(out.frame_ids())) == ["good-after", "huge-bad", "huge-jpeg"]
    # the huge bad frame: an excerpt in the DLQ, the whole value as a claim check
    (record,) = out.dlq
    info = DlqInfo.from_kafka(record.headers)
    assert info.reason is DlqReason.UNDECODABLE_IMAGE
    assert info.value_kept == "excerpt" and info.value_bytes == BIG
    assert len(record.value) == settings.limits.dlq_value_max_bytes
    assert record.value == big_bad[: len(record.value)]
    saved = Path(urlparse(info.claim_check).path)
    assert saved.is_relative_to(root) and saved.read_bytes() == big_bad
    # the 4096x4096 JPEG: scored at its full size, its heatmap bounded
    (jpeg_result,) = [r for r in out.results if r.frame_id == "huge-jpeg"]
    assert (jpeg_result.image_width, jpeg_result.image_height) == (4096, 4096)
    if jpeg_result.decision == "defect":
        alarms = answered_alarms(kafka_broker.bootstrap, topics.alarms)
        (alarm,) = [a for a in alarms if a.frame_id == "huge-jpeg"]
        assert alarm.heatmap is not None and max(alarm.heatmap.width, alarm.heatmap.height) <= 1024
        assert all(r.bbox[2] <= 4096 and r.bbox[3] <= 4096 for r in alarm.regions)
    assert committed(kafka_broker.bootstrap, topics.group, topics.frames) == {0: 3}


def answered_alarms(bootstrap: str, topic: str) -> list[AlarmMessage]:
    from ingest_testkit import read_to_end

    return [AlarmMessage.from_bytes(r.value) for r in read_to_end(bootstrap, topic)]


def test_records_the_broker_refuses_fall_back_to_smaller_ones(
    kafka_broker: Any,
    product: Any,
    scorer: Any,
    frame_images: Any,
    ingest_checkpoint: Path,
) -> None:
    """Topics with a small max.message.bytes: an alarm goes out without its heatmap, a DLQ
    record as metadata only; every offset is still committed."""
    topics = Topics.unique("refuse")
    kafka_broker.create_topics([topics.frames, topics.results], partitions=1)
    small = {"max.message.bytes": "65536"}
    kafka_broker.create_topics([topics.alarms, topics.dlq], partitions=1, config=small)
    config = serve_config(kafka_broker.bootstrap, topics, product.store_url, ingest_checkpoint)
    settings = load_settings(None, **config)
    telemetry = Telemetry(settings.telemetry)
    frames = [(os.urandom(300_000), _headers(product.name, "bad-300k"))]
    frames += [
        (path.read_bytes(), _headers(product.name, f"defect-{i}"))
        for i, path in enumerate(frame_images.defect[:3])
    ]
    with running_loop(settings, scorer, telemetry) as loop:
        _big_producer_send(kafka_broker.bootstrap, topics.frames, frames)
        out = answered(kafka_broker.bootstrap, topics, lambda a: len(set(a.frame_ids())) >= 4, 180)
        assert loop.running.is_set()
    telemetry.shutdown()

    assert sorted(set(out.frame_ids())) == ["bad-300k", "defect-0", "defect-1", "defect-2"]
    dlq = [DlqInfo.from_kafka(r.headers) for r in out.dlq]
    (bad,) = [(r, i) for r, i in zip(out.dlq, dlq, strict=True) if i.source_offset == 0]
    assert bad[1].value_kept == "none" and not bad[0].value
    assert bad[1].value_bytes == 300_000 and bad[1].reason is DlqReason.UNDECODABLE_IMAGE
    alarms = answered_alarms(kafka_broker.bootstrap, topics.alarms)
    defects = [r for r in out.results if r.decision == "defect"]
    assert defects, "no defective frame scored as defect: nothing tested the alarm fallback"
    assert {a.alarm_id for a in alarms} == {r.alarm_id for r in defects}
    assert all(a.heatmap is None for a in alarms)  # inline heatmaps did not fit 64 KiB
    assert committed(kafka_broker.bootstrap, topics.group, topics.frames) == {0: 4}
