"""``adqc bench soak``: the RSS of serve's per-frame memory path over many frames, hostile
ones mixed in (no broker, no engine: the decode, heatmap and DLQ-record building a worker does
for every frame, with serve's default limits).

Every ``hostile_every``-th frame is hostile, in turn: an all-black 8192x8192 PNG (~200 KB
encoded), a 4096x4096 noise JPEG (its alarm heatmap), 16 MiB of random bytes (its DLQ record),
a truncated PNG. Good frames are 900x900 textured PNGs. RSS is sampled every ``sample_every``
frames; a flat series (last samples close to the first ones after warm-up) is the pass mark.

Frames go through a pool of ``workers`` threads (default: serve's ``batch.decode_workers``),
at most ``2 x workers`` in flight, as serve decodes on its decode pool: the image codecs
and numpy release the GIL, so on more than one core the soak takes a fraction of the time of
a one-frame-at-a-time loop (where the time goes per stage is in the result,
``stage_seconds``: the alarm heatmap's PNG encoding of every scored frame dominates).
"""

from __future__ import annotations

import io
import os
import resource
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from inference.results import ScoreResult
from ingest.decode import decode_sized
from ingest.messages import build_dlq_record, build_heatmap
from ingest.schemas import FrameHeaders, MessageError, Source
from ingest.settings import ServeSettings


def rss_mib() -> float:
    """Resident set size of this process now (MiB), from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def frame_kinds(seed: int = 0) -> dict[str, tuple[bytes, str]]:
    """``{kind: (value, content_type)}`` of the good and hostile frames."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:900, 0:900]
    texture = 120 + 60 * np.cos(np.hypot(yy - 450, xx - 450) / 25.0) + rng.normal(0, 4, (900, 900))
    good = np.repeat(np.clip(texture, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    jpeg = io.BytesIO()
    noise = rng.integers(0, 256, (4096, 4096, 3), dtype=np.uint8)
    Image.fromarray(noise).save(jpeg, format="JPEG", quality=90)
    good_png = _png(Image.fromarray(good))
    return {
        "good": (good_png, "image/png"),
        "black-8192-png": (_png(Image.new("RGB", (8192, 8192))), "image/png"),
        "noise-4096-jpeg": (jpeg.getvalue(), "image/jpeg"),
        "random-16mib": (os.urandom(16 * 1024 * 1024 - 8192), "image/png"),
        "truncated-png": (good_png[: len(good_png) // 2], "image/png"),
    }


def run_soak(
    frames: int,
    hostile_every: int = 10,
    sample_every: int = 100,
    settings: ServeSettings | None = None,
    progress: Callable[[int, float], None] | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """Push ``frames`` frames through decode -> heatmap (scored ones) / DLQ record (bad ones)
    on ``workers`` threads (default ``settings.batch.decode_workers``); returns RSS samples,
    per-stage CPU-side seconds and a summary."""
    settings = settings or ServeSettings()
    workers = max(1, workers or settings.batch.decode_workers)
    limits = settings.limits
    kinds = frame_kinds()
    hostile = [k for k in kinds if k != "good"]
    anomaly = np.random.default_rng(1).random((56, 56)).astype(np.float32) * 2.0
    source = Source(topic="frames", partition=0, offset=0)
    stages = {"decode": 0.0, "heatmap": 0.0, "dlq_record": 0.0}
    lock = threading.Lock()

    def timed(stage: str, began: float) -> None:
        with lock:
            stages[stage] += time.perf_counter() - began

    def one(i: int) -> str:
        """Frame ``i`` as a worker handles it; returns ``scored`` or ``dlq``."""
        kind = hostile[(i // hostile_every) % len(hostile)] if i % hostile_every == 0 else "good"
        value, content_type = kinds[kind]
        headers = FrameHeaders(
            product="soak",
            line="l",
            camera="c",
            frame_id=f"f{i}",
            capture_time=datetime.now(UTC),
            content_type=content_type,
        )
        began = time.perf_counter()
        try:
            image, shape = decode_sized(value, headers, limits, limits.decode_max_side)
        except MessageError as exc:
            timed("decode", began)
            began = time.perf_counter()
            build_dlq_record(
                b"c",
                value,
                headers.to_kafka(),
                exc,
                source,
                "soak",
                value_max_bytes=limits.dlq_value_max_bytes,
            )
            timed("dlq_record", began)
            return "dlq"
        timed("decode", began)
        began = time.perf_counter()
        result = ScoreResult("soak", 2.0, 1.0, True, anomaly, [], "m", 1, image_shape=shape)
        build_heatmap(image, result, f"a{i}", "inline", max_side=settings.alarms.heatmap_max_side)
        timed("heatmap", began)
        return "scored"

    counts = {"scored": 0, "dlq": 0}
    samples: list[tuple[int, float]] = [(0, rss_mib())]
    start = time.monotonic()

    def finish(i: int, future: Future) -> None:
        counts[future.result()] += 1
        if i % sample_every == 0:
            samples.append((i, rss_mib()))
            if progress is not None:
                progress(i, samples[-1][1])

    in_flight: deque[tuple[int, Future]] = deque()
    with ThreadPoolExecutor(workers, "soak") as pool:
        for i in range(1, frames + 1):
            in_flight.append((i, pool.submit(one, i)))
            while len(in_flight) >= 2 * workers or (in_flight and i == frames):
                finish(*in_flight.popleft())
    elapsed = time.monotonic() - start
    rss = [r for _, r in samples]
    warm = rss[min(2, len(rss) - 1) :]
    return {
        "frames": frames,
        "hostile_every": hostile_every,
        "workers": workers,
        "scored": counts["scored"],
        "dlq": counts["dlq"],
        "seconds": round(elapsed, 1),
        "stage_seconds": {k: round(v, 1) for k, v in stages.items()},
        "rss_start_mib": round(rss[0], 1),
        "rss_after_warmup_mib": round(warm[0], 1),
        "rss_end_mib": round(rss[-1], 1),
        "rss_max_mib": round(max(rss), 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "growth_after_warmup_mib": round(rss[-1] - warm[0], 1),
        "samples": [{"frame": n, "rss_mib": round(r, 1)} for n, r in samples],
    }
