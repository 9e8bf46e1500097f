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
import os
import stat
import time
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
    """What a valid frame looks like (``ingest.settings.FrameLimits`` is one).

    Optional attributes (read with defaults when absent): ``max_pixels`` (width x height of
    one frame), ``claim_check_timeout_s`` (reading one claim check)."""

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
    max_pixels: int = 8192 * 8192
    claim_check_timeout_s: float = 5.0


DEFAULT_MAX_PIXELS = 8192 * 8192
DEFAULT_CLAIM_CHECK_TIMEOUT_S = 5.0
READ_CHUNK = 1 << 20


DEFAULT_LIMITS = FrameLimits()


def read_claim_check(uri: str, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """Read the encoded image a ``file://`` claim-check URI points at.

    Claim checks are off unless ``limits.claim_check_roots`` names directories; the path
    (symlinks resolved) must lie inside one of them and be a regular file (a FIFO, a device
    or a directory is refused without blocking); at most ``max_bytes`` are read, within
    ``claim_check_timeout_s``.
    """
    roots = list(limits.claim_check_roots)
    if not roots:
        raise FrameError(
            CLAIM_CHECK_UNREADABLE,
            "claim checks are off (limits.claim_check_roots is empty): "
            "configure the directories claim checks may point into",
        )
    parsed = urlparse(uri.strip())
    if parsed.scheme != "file":
        raise FrameError(
            CLAIM_CHECK_UNREADABLE, f"claim check {uri[:200]!r}: only file:// URIs are supported"
        )
    if parsed.netloc not in ("", "localhost"):
        raise FrameError(
            CLAIM_CHECK_UNREADABLE, f"claim check {uri[:200]!r}: remote host {parsed.netloc!r}"
        )
    path = Path(unquote(parsed.path))
    try:
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        raise FrameError(CLAIM_CHECK_UNREADABLE, f"claim check {path}: {_why(exc)}") from exc
    if not any(resolved.is_relative_to(root.resolve()) for root in roots):
        raise FrameError(
            CLAIM_CHECK_UNREADABLE,
            f"claim check {path} is outside the allowed roots {', '.join(str(r) for r in roots)}",
        )
    timeout = float(getattr(limits, "claim_check_timeout_s", DEFAULT_CLAIM_CHECK_TIMEOUT_S))
    try:
        return read_regular_file(resolved, limits.max_bytes, timeout, "claim check")
    except OSError as exc:
        raise FrameError(CLAIM_CHECK_UNREADABLE, f"claim check {path}: {_why(exc)}") from exc


def read_regular_file(path: Path, max_bytes: int, timeout_s: float, what: str) -> bytes:
    """The bytes of a regular file: opened without following a final symlink and without
    blocking (a FIFO or device is refused before any read), at most ``max_bytes`` read in
    chunks, abandoned after ``timeout_s``. Raises FrameError or OSError."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FrameError(
                CLAIM_CHECK_UNREADABLE if what == "claim check" else UNDECODABLE_IMAGE,
                f"{what} {path} is not a regular file ({_kind(info.st_mode)})",
            )
        if info.st_size > max_bytes:
            raise FrameError(WRONG_SIZE, f"{what} {path}: {info.st_size} bytes > {max_bytes}")
        deadline = time.monotonic() + timeout_s
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = os.read(fd, min(READ_CHUNK, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                raise FrameError(WRONG_SIZE, f"{what} {path}: more than {max_bytes} bytes")
            if time.monotonic() > deadline:
                raise FrameError(
                    CLAIM_CHECK_UNREADABLE if what == "claim check" else UNDECODABLE_IMAGE,
                    f"{what} {path}: not read within {timeout_s:g} s",
                )
        return b"".join(chunks)
    finally:
        os.close(fd)


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _why(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc)


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
    """Decode and validate an encoded image into RGB uint8 ``[H, W, 3]`` (full resolution).

    ``content_type`` is the declared type (a claim-check URI is followed); ``width`` and
    ``height`` the declared size, when given. Raises :class:`FrameError`: empty or oversized
    value, unreadable claim check, data that is not the declared format, a truncated or corrupt
    image, or a size outside the limits or different from the declared one.
    """
    image, _size = decode_scaled(
        value,
        content_type=content_type,
        width=width,
        height=height,
        limits=limits,
        formats=formats,
        name=name,
    )
    return image


def decode_scaled(
    value: bytes | None,
    *,
    content_type: str | None = None,
    width: int | None = None,
    height: int | None = None,
    limits: Limits = DEFAULT_LIMITS,
    formats: Sequence[str] = tuple(CONTENT_FORMATS.values()),
    name: str = "frame",
    max_side: int | None = None,
) -> tuple[np.ndarray, tuple[int, int]]:
    """:func:`decode_frame`, downscaled at decode so that no side exceeds ``max_side`` (None:
    full resolution); returns the RGB array and the frame's full (H, W).

    A JPEG is decoded at a reduced DCT scale; other formats are resized in their own mode
    before the RGB conversion, so a large frame never exists as full-resolution RGB. The
    frame's width x height is checked against ``limits.max_pixels`` before decoding.
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
                full_w, full_h = image.size
                _check_size(full_w, full_h, width, height, limits, name)
                target = scaled_size(full_w, full_h, max_side, limits.min_side)
                if target != (full_w, full_h) and fmt == "JPEG":
                    image.draft("RGB", target)  # DCT scaling: decodes at >= target size
                image.load()  # decodes fully: truncated data fails here
                rgb = to_rgb(_shrink(image, target) if image.size != target else image)
    except FrameError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise FrameError(WRONG_SIZE, f"{name}: {exc}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise FrameError(UNDECODABLE_IMAGE, f"cannot decode image {name}: {exc}") from exc
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8)), (full_h, full_w)


def scaled_size(
    width: int, height: int, max_side: int | None, min_side: int = 1
) -> tuple[int, int]:
    """(W, H) scaled down (aspect kept) so the longer side is at most ``max_side``, never
    making the shorter side smaller than ``min_side`` (nor enlarging)."""
    longest = max(width, height)
    if max_side is None or longest <= max_side:
        return width, height
    scale = max(max_side / longest, min(1.0, min_side / max(1, min(width, height))))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _shrink(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Resize in the image's own mode (16-bit as 32-bit int, palette/bilevel expanded)."""
    if image.mode in ("I;16", "I;16B", "I;16L"):
        image = image.convert("I")
    elif image.mode in ("P", "1", "PA", "CMYK", "YCbCr"):
        image = to_rgb(image)
    return image.resize(size, Image.BILINEAR, reducing_gap=3.0)


def _read(path: Path, limits: Limits, what: str) -> bytes:
    timeout = float(getattr(limits, "claim_check_timeout_s", DEFAULT_CLAIM_CHECK_TIMEOUT_S))
    return read_regular_file(path.resolve(), limits.max_bytes, max(timeout, 30.0), what)


def _names(formats: Sequence[str]) -> str:
    return ", ".join(formats[:-1]) + f" or {formats[-1]}" if len(formats) > 1 else formats[0]


def _check_size(
    width: int,
    height: int,
    declared_w: int | None,
    declared_h: int | None,
    limits: Limits,
    name: str = "frame",
) -> None:
    which = "image" if name == "frame" else f"image {name}"
    if min(width, height) < limits.min_side or max(width, height) > limits.max_side:
        raise FrameError(
            WRONG_SIZE,
            f"{which} is {width}x{height}; sides must be within "
            f"[{limits.min_side}, {limits.max_side}]",
        )
    max_pixels = int(getattr(limits, "max_pixels", DEFAULT_MAX_PIXELS))
    if width * height > max_pixels:
        raise FrameError(
            WRONG_SIZE, f"{which} is {width}x{height} = {width * height} pixels > {max_pixels}"
        )
    if (declared_w, declared_h) != (None, None) and (declared_w, declared_h) != (width, height):
        raise FrameError(
            WRONG_SIZE, f"image is {width}x{height} but headers declare {declared_w}x{declared_h}"
        )
