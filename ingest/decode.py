"""Frame values -> RGB uint8 arrays, with the validation that routes bad frames to the DLQ.

A frame's value is either the encoded image (``image/jpeg`` / ``image/png``) or, with
``content_type: text/uri-list``, a claim-check URI (``file:///...``) whose file holds the
encoded image. Every failure raises :class:`~ingest.schemas.MessageError` with a
:class:`~ingest.schemas.DlqReason`.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
from PIL import Image, UnidentifiedImageError

from ingest.schemas import CLAIM_CHECK_CONTENT_TYPE, DlqReason, FrameHeaders, MessageError
from ingest.settings import FrameLimits

_FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG"}


def resolve_claim_check(uri: str, limits: FrameLimits) -> bytes:
    """Read the encoded image a ``file://`` claim-check URI points at."""
    parsed = urlparse(uri.strip())
    if parsed.scheme != "file":
        raise MessageError(
            DlqReason.CLAIM_CHECK_UNREADABLE,
            f"claim check {uri!r}: only file:// URIs are supported",
        )
    path = Path(unquote(parsed.path))
    if limits.claim_check_roots:
        resolved = path.resolve()
        if not any(resolved.is_relative_to(root.resolve()) for root in limits.claim_check_roots):
            raise MessageError(
                DlqReason.CLAIM_CHECK_UNREADABLE,
                f"claim check {path} is outside the allowed roots "
                f"{', '.join(str(r) for r in limits.claim_check_roots)}",
            )
    try:
        size = path.stat().st_size
        if size > limits.max_bytes:
            raise MessageError(
                DlqReason.WRONG_SIZE, f"claim check {path}: {size} bytes > {limits.max_bytes}"
            )
        return path.read_bytes()
    except OSError as exc:
        raise MessageError(
            DlqReason.CLAIM_CHECK_UNREADABLE, f"claim check {path}: {exc.strerror or exc}"
        ) from exc


def decode_frame(value: bytes | None, headers: FrameHeaders, limits: FrameLimits) -> np.ndarray:
    """Decode and validate a frame value into an RGB ``uint8`` array ``[H, W, 3]``.

    Raises:
        MessageError: empty or oversized value, unreadable claim check, data that is not the
            declared format, a truncated/corrupt image, or a size outside the limits or
            different from the declared ``width``/``height`` headers.
    """
    if not value:
        raise MessageError(DlqReason.UNDECODABLE_IMAGE, "empty message value")
    if len(value) > limits.max_bytes:
        raise MessageError(
            DlqReason.WRONG_SIZE, f"value is {len(value)} bytes > max_bytes {limits.max_bytes}"
        )
    expected = _FORMATS.get(headers.content_type)
    if headers.content_type == CLAIM_CHECK_CONTENT_TYPE:
        try:
            uri = value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MessageError(
                DlqReason.CLAIM_CHECK_UNREADABLE, "claim-check value is not a UTF-8 URI"
            ) from exc
        value = resolve_claim_check(uri, limits)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(value))
            fmt = image.format
            if fmt not in ("JPEG", "PNG"):
                raise MessageError(
                    DlqReason.UNDECODABLE_IMAGE, f"image format {fmt} is not JPEG or PNG"
                )
            if expected is not None and fmt != expected:
                raise MessageError(
                    DlqReason.UNDECODABLE_IMAGE,
                    f"content_type {headers.content_type} but the data is {fmt}",
                )
            width, height = image.size
            _check_size(width, height, headers, limits)
            rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except MessageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise MessageError(DlqReason.WRONG_SIZE, str(exc)) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise MessageError(DlqReason.UNDECODABLE_IMAGE, f"cannot decode image: {exc}") from exc
    return rgb


def _check_size(width: int, height: int, headers: FrameHeaders, limits: FrameLimits) -> None:
    if min(width, height) < limits.min_side or max(width, height) > limits.max_side:
        raise MessageError(
            DlqReason.WRONG_SIZE,
            f"image is {width}x{height}; sides must be within "
            f"[{limits.min_side}, {limits.max_side}]",
        )
    declared = (headers.width, headers.height)
    if any(d is not None for d in declared) and declared != (width, height):
        raise MessageError(
            DlqReason.WRONG_SIZE,
            f"image is {width}x{height} but headers declare {headers.width}x{headers.height}",
        )
