"""The one frame decoder, camera to model: encoded bytes, a file or a claim check -> RGB uint8.

Every image the product scores or learns from goes through here: Kafka frames (``adqc serve``,
via ``ingest.decode``), onboarding's reference images, the demo's camera. The checks are the
ingest limits (bytes, side lengths, declared size, the declared format, claim-check roots,
decompression bombs); the pixels are converted by :func:`pretrain.preprocess.to_rgb`
(16-bit rescaled, alpha composited on black, grey and palette expanded), as in pretraining.

Failures raise :class:`FrameError`, an :class:`~pretrain.preprocess.ImageLoadError` whose
``reason`` is the dead-letter reason code (``ingest.schemas.DlqReason`` values).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlparse

import numpy as np
from PIL import Image, UnidentifiedImageError

from pretrain.preprocess import ImageLoadError, to_rgb

UNDECODABLE_IMAGE = "undecodable_image"
WRONG_SIZE = "wrong_size"
CLAIM_CHECK_UNREADABLE = "claim_check_unreadable"

CLAIM_CHECK_CONTENT_TYPE = "text/uri-list"
#: formats a Kafka frame may declare (``content_type`` -> PIL format)
CONTENT_FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG"}
#: formats an image file may have (references, demo and bench sources)
FILE_FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "WEBP")


class FrameError(ImageLoadError):
    """A frame that cannot be used; ``reason`` is its dead-letter reason code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class Limits(Protocol):
    """What a valid frame looks like (``ingest.settings.FrameLimits`` is one)."""

    max_bytes: int
    min_side: int
    max_side: int
    claim_check_roots: Sequence[Path]


@dataclass(frozen=True)
class FrameLimits:
    """The default limits (the same defaults as ``adqc serve``'s ``limits`` settings)."""

    max_bytes: int = 20 * 1024 * 1024
    min_side: int = 16
    max_side: int = 8192
    claim_check_roots: Sequence[Path] = ()


DEFAULT_LIMITS = FrameLimits()


def read_claim_check(uri: str, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """Read the encoded image a ``file://`` claim-check URI points at."""
    parsed = urlparse(uri.strip())
    if parsed.scheme != "file":
        raise FrameError(
            CLAIM_CHECK_UNREADABLE, f"claim check {uri!r}: only file:// URIs are supported"
        )
    path = Path(unquote(parsed.path))
    if limits.claim_check_roots:
        resolved = path.resolve()
        if not any(resolved.is_relative_to(root.resolve()) for root in limits.claim_check_roots):
            raise FrameError(
                CLAIM_CHECK_UNREADABLE,
                f"claim check {path} is outside the allowed roots "
                f"{', '.join(str(r) for r in limits.claim_check_roots)}",
            )
    try:
        return _read(path, limits, "claim check")
    except OSError as exc:
        raise FrameError(
            CLAIM_CHECK_UNREADABLE, f"claim check {path}: {exc.strerror or exc}"
        ) from exc


def load_frame(path: str | Path, limits: Limits = DEFAULT_LIMITS) -> np.ndarray:
    """An image file as RGB uint8 ``[H, W, 3]`` (any of FILE_FORMATS), checked as a frame."""
    path = Path(path)
    try:
        data = _read(path, limits, "image file")
    except FileNotFoundError as exc:
        raise FrameError(UNDECODABLE_IMAGE, f"image file not found: {path}") from exc
    except OSError as exc:
        raise FrameError(UNDECODABLE_IMAGE, f"cannot read image {path}: {exc}") from exc
    return decode_frame(data, limits=limits, formats=FILE_FORMATS, name=str(path))


def decode_frame(
    value: bytes | None,
    *,
    content_type: str | None = None,
    width: int | None = None,
    height: int | None = None,
    limits: Limits = DEFAULT_LIMITS,
    formats: Sequence[str] = tuple(CONTENT_FORMATS.values()),
    name: str = "frame",
) -> np.ndarray:
    """Decode and validate an encoded image into RGB uint8 ``[H, W, 3]``.

    ``content_type`` is the declared type (a claim-check URI is followed); ``width`` and
    ``height`` the declared size, when given. Raises :class:`FrameError`: empty or oversized
    value, unreadable claim check, data that is not the declared format, a truncated or corrupt
    image, or a size outside the limits or different from the declared one.
    """
    if not value:
        raise FrameError(UNDECODABLE_IMAGE, "empty message value")
    if len(value) > limits.max_bytes:
        raise FrameError(WRONG_SIZE, f"value is {len(value)} bytes > max_bytes {limits.max_bytes}")
    if content_type == CLAIM_CHECK_CONTENT_TYPE:
        try:
            uri = value.decode("utf-8")
        except UnicodeDecodeError as exc:
            detail = "claim-check value is not a UTF-8 URI"
            raise FrameError(CLAIM_CHECK_UNREADABLE, detail) from exc
        value = read_claim_check(uri, limits)
    expected = CONTENT_FORMATS.get(content_type or "")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(value)) as image:
                fmt = image.format
                if fmt not in formats:
                    raise FrameError(
                        UNDECODABLE_IMAGE, f"{name}: image format {fmt} is not {_names(formats)}"
                    )
                if expected is not None and fmt != expected:
                    raise FrameError(
                        UNDECODABLE_IMAGE, f"content_type {content_type} but the data is {fmt}"
                    )
                _check_size(*image.size, width, height, limits)
                image.load()  # decodes fully: truncated data fails here
                rgb = to_rgb(image)
    except FrameError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise FrameError(WRONG_SIZE, f"{name}: {exc}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise FrameError(UNDECODABLE_IMAGE, f"cannot decode image {name}: {exc}") from exc
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))


def _read(path: Path, limits: Limits, what: str) -> bytes:
    size = path.stat().st_size
    if size > limits.max_bytes:
        raise FrameError(WRONG_SIZE, f"{what} {path}: {size} bytes > {limits.max_bytes}")
    return path.read_bytes()


def _names(formats: Sequence[str]) -> str:
    return ", ".join(formats[:-1]) + f" or {formats[-1]}" if len(formats) > 1 else formats[0]


def _check_size(
    width: int, height: int, declared_w: int | None, declared_h: int | None, limits: Limits
) -> None:
    if min(width, height) < limits.min_side or max(width, height) > limits.max_side:
        raise FrameError(
            WRONG_SIZE,
            f"image is {width}x{height}; sides must be within "
            f"[{limits.min_side}, {limits.max_side}]",
        )
    if (declared_w, declared_h) != (None, None) and (declared_w, declared_h) != (width, height):
        raise FrameError(
            WRONG_SIZE, f"image is {width}x{height} but headers declare {declared_w}x{declared_h}"
        )
