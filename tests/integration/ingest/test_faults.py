"""Fault-injection scenarios (``make test-faults``, marker ``faults``): hostile frames of every
kind against a real ``adqc serve`` process, and a slow, overloaded engine. For each: frames in
= results + DLQ records (by frame id), no worker exit, memory bounded. The rebalance and broker
restart scenarios are in test_rebalance.py, worker SIGKILL in test_serve_process.py, the Redis
outage in test_outage.py (all part of the suite)."""

from __future__ import annotations

import io
import os
import signal
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ingest_testkit import (
    ServeProcess,
    answered,
    committed,
    fault_report,
    running_loop,
    serve_topics,
    write_config,
)
from PIL import Image

from ingest.schemas import DlqInfo, FrameHeaders, utc_now
from ingest.settings import load_settings
from ingest.telemetry import Telemetry

pytestmark = [pytest.mark.integration, pytest.mark.faults]

_report = fault_report  # measured outcomes -> $ADQC_FAULT_REPORT (docs/RELIABILITY.md)


def _headers(product: str, frame_id: str, content_type: str = "image/png") -> list[Any]:
    return FrameHeaders(
        product=product,
        line="l1",
        camera="cam-h",
        frame_id=frame_id,
        capture_time=utc_now(),
        content_type=content_type,
    ).to_kafka()


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _bomb() -> bytes:
    """A PNG whose IHDR claims 100000 x 100000 (a decompression bomb)."""
    data = bytearray(_png(Image.new("L", (16, 16))))
    data[16:24] = (100_000).to_bytes(4, "big") + (100_000).to_bytes(4, "big")
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    return bytes(data)


def _hostile_frames(product: str, good: bytes, claims: Path, tmp: Path) -> list[tuple]:
    """(frame id, value, headers) of every hostile kind, good frames in between."""
    fifo = claims / "pipe.png"
    os.mkfifo(fifo)
    outside = tmp / "outside.png"
    outside.write_bytes(good)
    (claims / "escape.png").symlink_to(outside)
    (claims / "ok.png").write_bytes(good)
    black = _png(Image.new("RGB", (8192, 8192)))
    uri = "text/uri-list"
    frames: list[tuple] = []

    def add(fid: str, value: bytes, content_type: str = "image/png", extra=()) -> None:
        frames.append((fid, value, _headers(product, fid, content_type) + list(extra)))

    add("good-0", good)
    add("claim-fifo", fifo.as_uri().encode(), uri)
    add("claim-dev-zero", b"file:///dev/zero", uri)
    add("claim-passwd", b"file:///etc/passwd", uri)
    add("claim-escape", (claims / "escape.png").as_uri().encode(), uri)
    add("claim-ok", (claims / "ok.png").as_uri().encode(), uri)
    for i in range(6):
        add(f"black-8192-{i}", black)
    add("bad-16mib", os.urandom(16 * 1024 * 1024 - 8192))
    add("random-bytes", os.urandom(5000))
    add("truncated", good[: len(good) // 2])
    add("bomb", _bomb())
    add("dup-product", good, extra=[("product", b"other-product")])
    add("jpeg-4096", _noise_jpeg(4096), "image/jpeg")
    add("good-1", good)
    return frames


def _noise_jpeg(side: int) -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(3).integers(0, 256, (side, side, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _vm_hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def test_hostile_frames_of_every_kind_against_a_serve_process(
    kafka_broker: Any,
    product: Any,
    frame_images: Any,
    ingest_checkpoint: Path,
    tmp_path: Path,
) -> None:
    from kafka import KafkaProducer

    claims = tmp_path / "claims"
    claims.mkdir()
    topics, config = serve_topics(
        kafka_broker,
        "hostile",
        product.store_url,
        ingest_checkpoint,
        limits={"claim_check_roots": [str(claims)], "claim_check_timeout_s": 2.0},
    )
    path = write_config(tmp_path / "serve.yaml", config)
    frames = _hostile_frames(product.name, frame_images.good[0].read_bytes(), claims, tmp_path)
    proc = ServeProcess(path, tmp_path / "serve.log")
    prod = KafkaProducer(
        bootstrap_servers=kafka_broker.bootstrap, acks="all", max_request_size=16 * 1024 * 1024
    )
    start = time.monotonic()
    try:
        for _fid, value, headers in frames:
            prod.send(topics.frames, key=b"cam-h", value=value, headers=headers)
        prod.flush()
        ids = {fid for fid, _, _ in frames}
        out = answered(kafka_broker.bootstrap, topics, lambda a: set(a.frame_ids()) >= ids, 400)
        elapsed = time.monotonic() - start
        assert proc.proc.poll() is None, proc.output()[-3000:]
        peak_mib = _vm_hwm_mib(proc.proc.pid)
        proc.signal(signal.SIGTERM)
        assert proc.wait(90) == 0, proc.output()[-3000:]
    finally:
        prod.close()
        proc.stop()

    got = out.frame_ids()
    assert set(got) == ids, f"missing {ids - set(got)}"
    reasons = {}
    for record in out.dlq:
        fid = dict(record.headers).get("frame_id", b"?").decode()
        reasons[fid] = DlqInfo.from_kafka(record.headers).reason.value
    results = {r.frame_id for r in out.results}
    assert {"good-0", "good-1", "claim-ok", "jpeg-4096"} <= results
    assert {f"black-8192-{i}" for i in range(6)} <= results  # scored, downscaled at decode
    for fid in ("claim-fifo", "claim-dev-zero", "claim-passwd", "claim-escape"):
        assert reasons[fid] == "claim_check_unreadable", (fid, reasons)
    assert reasons["dup-product"] == "invalid_header"
    assert reasons["bomb"] == "wrong_size"
    assert committed(kafka_broker.bootstrap, topics.group, topics.frames) == {0: len(frames)}
    # torch + model + 6 hostile 8192^2 frames: before the decode-time downscale this was >6 GB
    assert peak_mib < 3000, peak_mib
    _report(
        "hostile frames (serve process)",
        frames=len(frames),
        results=len(out.results),
        dlq=len(out.dlq),
        missing=len(ids - set(got)),
        worker_exits=0,
        peak_rss_mib=round(peak_mib),
        seconds=round(elapsed, 1),
        dlq_reasons=reasons,
    )


class SlowOverloadedScorer:
    """Wraps a scorer: every call takes ``delay_s`` longer, and every other call first fails
    as an overloaded Triton would (DEADLINE_EXCEEDED after the engine's own retries)."""

    def __init__(self, scorer: Any, delay_s: float) -> None:
        self.scorer = scorer
        self.delay_s = delay_s
        self.calls = 0
        self.overloads = 0

    def score(self, images: list[np.ndarray], product: str) -> list[Any]:
        from inference.engines.triton import TritonOverloadedError

        self.calls += 1
        time.sleep(self.delay_s)
        if self.calls % 2 == 1:
            self.overloads += 1
            raise TritonOverloadedError("deadline exceeded (injected)", "DEADLINE_EXCEEDED")
        return self.scorer.score(images, product)


def test_a_slow_overloaded_engine_is_back_pressure_not_dlq(
    kafka_broker: Any, product: Any, scorer: Any, frame_images: Any, ingest_checkpoint: Path
) -> None:
    topics, config = serve_topics(
        kafka_broker,
        "slow",
        product.store_url,
        ingest_checkpoint,
        partitions=2,
        batch={"size": 4, "max_in_flight": 8},
        retry={"initial_backoff_s": 0.1, "max_backoff_s": 0.5},
    )
    settings = load_settings(None, **config)
    telemetry = Telemetry(settings.telemetry)
    slow = SlowOverloadedScorer(scorer, delay_s=0.5)
    from kafka import KafkaProducer

    prod = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap, acks="all")
    images = frame_images.good + frame_images.defect
    n = 24
    start = time.monotonic()
    with running_loop(settings, slow, telemetry) as loop:
        for i in range(n):
            prod.send(
                topics.frames,
                key=f"cam-{i % 2}".encode(),
                value=images[i % len(images)].read_bytes(),
                headers=_headers(product.name, f"slow-{i}"),
            )
        prod.flush()
        ids = {f"slow-{i}" for i in range(n)}
        out = answered(kafka_broker.bootstrap, topics, lambda a: set(a.frame_ids()) >= ids, 300)
        assert loop.running.is_set()
        retries = telemetry.metrics.retries.labels(cause="TritonOverloadedError")._value.get()
    prod.close()
    telemetry.shutdown()
    assert {r.frame_id for r in out.results} == ids and not out.dlq
    assert slow.overloads >= 1 and retries >= slow.overloads
    _report(
        "slow + overloaded engine (DEADLINE_EXCEEDED every other call)",
        frames=n,
        results=len(out.results),
        dlq=len(out.dlq),
        worker_exits=0,
        overloads=slow.overloads,
        retries_metric=retries,
        seconds=round(time.monotonic() - start, 1),
    )
