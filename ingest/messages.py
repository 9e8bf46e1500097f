"""Building the outgoing messages of a frame: result, alarm (with its heatmap) and DLQ info.

Pure functions of a typed :class:`~inference.results.ScoreResult` and the frame's headers; no
Kafka here (the loop in :mod:`ingest.loop` sends what these build).
"""

from __future__ import annotations

import base64
import logging
from datetime import datetime
from pathlib import Path
from typing import Literal

import numpy as np

from inference.results import ScoreResult
from ingest.schemas import (
    AlarmMessage,
    DlqInfo,
    FrameHeaders,
    Heatmap,
    MessageError,
    ResultMessage,
    Source,
    Timings,
    alarm_id_for,
    severity_for,
    utc_now,
)

log = logging.getLogger("adqc.serve")

HeatmapMode = Literal["inline", "uri", "none"]


def frame_timings(
    frame: FrameHeaders,
    result: ScoreResult,
    *,
    received_ns: int,
    decode_ns: int,
    batch_size: int,
    now: datetime,
) -> Timings:
    """The result's ``timings``: queue (capture -> poll), decode, the frame's share of the
    batch's engine (resize + features) and scoring (detector + regions) time, and the total."""
    share = result.timings or {}
    return Timings(
        queue_ms=max(0.0, (received_ns / 1e9 - frame.capture_time.timestamp()) * 1e3),
        decode_ms=decode_ns / 1e6,
        infer_ms=share.get("resize_ms", 0.0) + share.get("features_ms", 0.0),
        score_ms=share.get("detector_ms", 0.0) + share.get("regions_ms", 0.0),
        batch_size=batch_size,
        total_ms=max(0.0, (now - frame.capture_time).total_seconds() * 1e3),
    )


def alarm_id_of(frame: FrameHeaders, result: ScoreResult) -> str | None:
    """The alarm id of a defective frame (deterministic), None for a good one."""
    return alarm_id_for(frame.frame_id, result.model_id) if result.is_defective else None


def build_result(
    frame: FrameHeaders,
    result: ScoreResult,
    *,
    image_shape: tuple[int, int],
    timings: Timings,
    source: Source,
    processed_at: datetime,
    trace_id: str | None = None,
) -> ResultMessage:
    """The ``results`` message of a scored frame (``image_shape`` = the frame's (H, W))."""
    height, width = image_shape
    return ResultMessage(
        frame_id=frame.frame_id,
        product=frame.product,
        line=frame.line,
        camera=frame.camera,
        capture_time=frame.capture_time,
        processed_at=processed_at,
        score=float(result.score),
        threshold=float(result.threshold),
        decision="defect" if result.is_defective else "ok",
        alarm_id=alarm_id_of(frame, result),
        model_id=result.model_id,
        reference_version=int(result.reference_version),
        image_width=width,
        image_height=height,
        timings=timings,
        source=source,
        trace_id=trace_id,
    )


def build_alarm(
    frame: FrameHeaders,
    result: ScoreResult,
    *,
    source: Source,
    detected_at: datetime | None = None,
    heatmap: Heatmap | None = None,
    trace_id: str | None = None,
) -> AlarmMessage:
    """The ``alarms`` message of a defective frame; its regions are the scorer's (frame
    pixels) and its id :func:`~ingest.schemas.alarm_id_for` of frame id and model id."""
    if not result.is_defective:
        raise ValueError(f"frame {frame.frame_id!r} is not defective: no alarm")
    return AlarmMessage(
        alarm_id=alarm_id_for(frame.frame_id, result.model_id),
        frame_id=frame.frame_id,
        line=frame.line,
        camera=frame.camera,
        product=frame.product,
        capture_time=frame.capture_time,
        detected_at=detected_at or utc_now(),
        score=float(result.score),
        threshold=float(result.threshold),
        severity=severity_for(float(result.score), float(result.threshold)),
        regions=list(result.regions),
        heatmap=heatmap,
        model_id=result.model_id,
        reference_version=int(result.reference_version),
        trace_id=trace_id,
        source=source,
    )


def build_heatmap(
    image: np.ndarray,
    result: ScoreResult,
    alarm_id: str,
    mode: HeatmapMode,
    directory: str | Path | None = None,
) -> Heatmap | None:
    """The alarm's heatmap: inline base64 PNG, a ``file://`` URI of a PNG written under
    ``directory`` (named ``<alarm_id>.png``, written atomically), or None for mode ``none``
    or when drawing fails (the alarm matters more than its picture)."""
    if mode == "none":
        return None
    from inference.scorer import heatmap_png

    try:
        png = heatmap_png(image, result.anomaly_map, float(result.threshold))
    except Exception:
        log.exception("heatmap failed; alarm %s goes out without one", alarm_id)
        return None
    height, width = png_size(png)
    if mode == "inline":
        data = base64.b64encode(png).decode()
        return Heatmap(encoding="base64", data=data, width=width, height=height)
    if directory is None:
        raise ValueError("heatmap mode 'uri' needs a directory")
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{alarm_id}.png"
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(png)
    tmp.replace(path)
    return Heatmap(encoding="uri", uri=path.resolve().as_uri(), width=width, height=height)


def build_dlq_info(error: MessageError, source: Source, group: str | None) -> DlqInfo:
    """The ``dlq.*`` headers of a frame dead-lettered for ``error``."""
    return DlqInfo(
        reason=error.reason,
        detail=error.detail[:2000],
        time=utc_now(),
        source_topic=source.topic,
        source_partition=source.partition,
        source_offset=source.offset,
        consumer_group=group,
    )


def png_size(png: bytes) -> tuple[int, int]:
    """(height, width) from a PNG's IHDR chunk."""
    width = int.from_bytes(png[16:20], "big")
    height = int.from_bytes(png[20:24], "big")
    return height, width
