"""Frame headers shared by the frame-decoding unit tests (inference/frames.py through
ingest's Kafka decode)."""

from __future__ import annotations

from datetime import UTC, datetime

from ingest.schemas import FrameHeaders


def frame_headers(content_type: str = "image/png", **over: object) -> FrameHeaders:
    """Valid headers of one frame of product "p" declared as ``content_type``; ``over``
    replaces or adds fields."""
    return FrameHeaders(
        product="p",
        line="l",
        camera="c",
        frame_id="f",
        capture_time=datetime.now(UTC),
        content_type=content_type,
        **over,
    )
