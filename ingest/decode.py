"""Kafka frame values -> RGB uint8 arrays: :mod:`inference.frames` (the one frame decoder) with
the frame's headers, its errors turned into :class:`~ingest.schemas.MessageError` with the
:class:`~ingest.schemas.DlqReason` that routes the frame to the DLQ.

A frame's value is either the encoded image (``image/jpeg`` / ``image/png``) or, with
``content_type: text/uri-list``, a claim-check URI (``file:///...``) whose file holds it.
"""

from __future__ import annotations

import numpy as np

from inference.frames import FrameError, Limits
from inference.frames import decode_frame as decode_image
from ingest.schemas import DlqReason, FrameHeaders, MessageError


def decode_frame(value: bytes | None, headers: FrameHeaders, limits: Limits) -> np.ndarray:
    """Decode and validate a frame value into an RGB ``uint8`` array ``[H, W, 3]``.

    Raises:
        MessageError: empty or oversized value, unreadable claim check, data that is not the
            declared format, a truncated/corrupt image, or a size outside the limits or
            different from the declared ``width``/``height`` headers.
    """
    try:
        return decode_image(
            value,
            content_type=headers.content_type,
            width=headers.width,
            height=headers.height,
            limits=limits,
        )
    except FrameError as exc:
        raise MessageError(DlqReason(exc.reason), exc.detail) from exc
