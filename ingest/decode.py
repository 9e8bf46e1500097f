"""Kafka frame values -> RGB uint8 arrays: :mod:`inference.frames` (the one frame decoder) with
the frame's headers, its errors turned into :class:`~ingest.schemas.MessageError` with the
:class:`~ingest.schemas.DlqReason` that routes the frame to the DLQ.

A frame's value is either the encoded image (``image/jpeg`` / ``image/png``) or, with
``content_type: text/uri-list``, a claim-check URI (``file:///...``) whose file holds it.
"""

from __future__ import annotations

import numpy as np

from inference.frames import FrameError, Limits, decode_scaled
from ingest.schemas import DlqReason, FrameHeaders, MessageError


def decode_frame(
    value: bytes | None, headers: FrameHeaders, limits: Limits, max_side: int | None = None
) -> np.ndarray:
    """Decode and validate a frame value into an RGB ``uint8`` array ``[H, W, 3]``
    (downscaled to ``max_side`` when given; see :func:`decode_sized`)."""
    return decode_sized(value, headers, limits, max_side)[0]


def decode_sized(
    value: bytes | None, headers: FrameHeaders, limits: Limits, max_side: int | None = None
) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode a frame, downscaled at decode to ``max_side``; returns (RGB, the frame's (H, W)).

    Raises:
        MessageError: empty or oversized value, unreadable claim check, data that is not the
            declared format, a truncated/corrupt image, or a size outside the limits (sides,
            pixels) or different from the declared ``width``/``height`` headers.
    """
    try:
        return decode_scaled(
            value,
            content_type=headers.content_type,
            width=headers.width,
            height=headers.height,
            limits=limits,
            max_side=max_side,
        )
    except FrameError as exc:
        raise MessageError(DlqReason(exc.reason), exc.detail) from exc
