"""Frame decoding and validation (each failure carries its DLQ reason)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from frame_testkit import frame_headers
from PIL import Image

from ingest.decode import decode_frame
from ingest.schemas import DlqReason, FrameHeaders, MessageError
from ingest.settings import FrameLimits


def _encode(image: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt)
    return buffer.getvalue()


IMAGE = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)


def test_png_decodes_exactly_and_jpeg_approximately() -> None:
    out = decode_frame(_encode(IMAGE, "PNG"), frame_headers(), FrameLimits())
    assert out.dtype == np.uint8 and out.shape == (48, 64, 3)
    assert np.array_equal(out, IMAGE)
    jpeg = decode_frame(_encode(IMAGE, "JPEG"), frame_headers("image/jpeg"), FrameLimits())
    assert jpeg.shape == (48, 64, 3)


def test_grayscale_frames_become_rgb() -> None:
    gray = _encode(IMAGE[..., 0], "PNG")
    out = decode_frame(gray, frame_headers(), FrameLimits())
    assert out.shape == (48, 64, 3)
    assert np.array_equal(out[..., 0], out[..., 2])


def test_claim_check_reads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "frame.png"
    path.write_bytes(_encode(IMAGE, "PNG"))
    uri = path.as_uri().encode()
    limits = FrameLimits(claim_check_roots=[tmp_path])
    out = decode_frame(uri, frame_headers("text/uri-list"), limits)
    assert np.array_equal(out, IMAGE)


@pytest.mark.parametrize(
    ("value", "headers", "limits", "reason", "fragment"),
    [
        (b"", frame_headers(), FrameLimits(), DlqReason.UNDECODABLE_IMAGE, "empty"),
        (b"garbage", frame_headers(), FrameLimits(), DlqReason.UNDECODABLE_IMAGE, "cannot decode"),
        (
            _encode(IMAGE, "PNG")[:200],
            frame_headers(),
            FrameLimits(),
            DlqReason.UNDECODABLE_IMAGE,
            "cannot decode",
        ),
        (
            _encode(IMAGE, "JPEG"),
            frame_headers("image/png"),
            FrameLimits(),
            DlqReason.UNDECODABLE_IMAGE,
            "data is JPEG",
        ),
        (
            _encode(IMAGE, "GIF"),
            frame_headers(),
            FrameLimits(),
            DlqReason.UNDECODABLE_IMAGE,
            "GIF",
        ),
        (
            _encode(IMAGE, "PNG"),
            frame_headers(width=64, height=40),
            FrameLimits(),
            DlqReason.WRONG_SIZE,
            "declare 64x40",
        ),
        (
            _encode(IMAGE, "PNG"),
            frame_headers(),
            FrameLimits(min_side=50),
            DlqReason.WRONG_SIZE,
            "64x48",
        ),
        (
            _encode(IMAGE, "PNG"),
            frame_headers(),
            FrameLimits(max_side=60),
            DlqReason.WRONG_SIZE,
            "64x48",
        ),
        (
            _encode(IMAGE, "PNG"),
            frame_headers(),
            FrameLimits(max_bytes=100),
            DlqReason.WRONG_SIZE,
            "max_bytes",
        ),
        (
            b"http://example.com/x.png",
            frame_headers("text/uri-list"),
            FrameLimits(claim_check_roots=[Path("/srv/frames")]),
            DlqReason.CLAIM_CHECK_UNREADABLE,
            "file://",
        ),
        (
            b"file:///nonexistent/x.png",
            frame_headers("text/uri-list"),
            FrameLimits(claim_check_roots=[Path("/nonexistent")]),
            DlqReason.CLAIM_CHECK_UNREADABLE,
            "/nonexistent/x.png",
        ),
        (
            b"file:///etc/hostname",
            frame_headers("text/uri-list"),
            FrameLimits(claim_check_roots=[Path("/srv/frames")]),
            DlqReason.CLAIM_CHECK_UNREADABLE,
            "outside the allowed roots",
        ),
        (
            b"file:///etc/hostname",
            frame_headers("text/uri-list"),
            FrameLimits(),
            DlqReason.CLAIM_CHECK_UNREADABLE,
            "claim checks are off",
        ),
    ],
)
def test_bad_frames_carry_a_reason(
    value: bytes, headers: FrameHeaders, limits: FrameLimits, reason: DlqReason, fragment: str
) -> None:
    with pytest.raises(MessageError) as err:
        decode_frame(value, headers, limits)
    assert err.value.reason is reason
    assert fragment in err.value.detail
