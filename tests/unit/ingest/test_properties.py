"""Property-based tests (hypothesis) of the frame decoder and the frame-header parser: any
input either decodes/parses into something within the limits or fails with the DLQ error
type and a reason; nothing else escapes (no crash of the serve loop's decode thread)."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from inference.frames import FrameError, FrameLimits, decode_scaled, scaled_size
from ingest.schemas import DlqReason, FrameHeaders, MessageError

LIMITS = FrameLimits(max_bytes=1 << 20, min_side=4, max_side=512, max_pixels=200_000)
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
REASONS = {r.value for r in DlqReason}


def _encode(array: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def _valid() -> dict[str, bytes]:
    return {
        k: v
        for k, v in FrameHeaders(
            product="p",
            line="l",
            camera="c",
            frame_id="f",
            capture_time=datetime(2026, 1, 1, tzinfo=UTC),
            content_type="image/png",
        ).to_kafka()
    }


@FAST
@given(
    width=st.integers(1, 700),
    height=st.integers(1, 700),
    grey=st.booleans(),
    fmt=st.sampled_from(["PNG", "JPEG"]),
    max_side=st.one_of(st.none(), st.integers(16, 600)),
)
def test_any_image_decodes_within_limits_or_fails_with_a_reason(
    width: int, height: int, grey: bool, fmt: str, max_side: int | None
) -> None:
    shape = (height, width) if grey else (height, width, 3)
    data = _encode(np.random.default_rng(width * 7 + height).integers(0, 256, shape, np.uint8), fmt)
    try:
        image, full = decode_scaled(data, limits=LIMITS, max_side=max_side)
    except FrameError as exc:
        assert exc.reason == "wrong_size"
        too_small = min(width, height) < LIMITS.min_side
        too_big = max(width, height) > LIMITS.max_side or width * height > LIMITS.max_pixels
        assert too_small or too_big, exc.detail
        return
    assert full == (height, width)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert (image.shape[1], image.shape[0]) == scaled_size(width, height, max_side, 4)
    if max_side is not None and min(width, height) * max_side >= 4 * max(width, height):
        assert max(image.shape[:2]) <= max_side + 1


@FAST
@given(data=st.binary(min_size=0, max_size=4096), cut=st.integers(0, 4096))
def test_arbitrary_and_corrupted_bytes_fail_with_a_dlq_reason(data: bytes, cut: int) -> None:
    good = _encode(np.zeros((20, 30, 3), np.uint8), "PNG")
    for value in (data, good[:cut] + data, good[:8] + data):
        try:
            image = decode_scaled(value, limits=LIMITS, max_side=64)[0]
        except FrameError as exc:
            assert exc.reason in REASONS and exc.detail
        else:
            assert image.dtype == np.uint8 and image.shape[2] == 3


@FAST
@given(
    headers=st.lists(
        st.tuples(
            st.sampled_from([*_valid(), "x", "traceparent", "width"]) | st.text(max_size=12),
            st.one_of(st.none(), st.binary(max_size=40)),
        ),
        max_size=12,
    )
)
def test_any_header_list_parses_or_names_a_reason(headers: list) -> None:
    try:
        frame = FrameHeaders.from_kafka(headers)
    except MessageError as exc:
        assert exc.reason in set(DlqReason) and exc.detail
        return
    names = [n for n, _ in headers]
    assert names.count("product") == 1 and frame.product


@FAST
@given(
    name=st.sampled_from(["product", "frame_id", "camera", "content_type"]),
    other=st.text(min_size=1, max_size=20).map(str.encode),
    at=st.integers(0, 6),
)
def test_a_repeated_frame_header_is_a_dlq_reason_not_last_wins(
    name: str, other: bytes, at: int
) -> None:
    headers = list(_valid().items())
    headers.insert(at, (name, other))
    with pytest.raises(MessageError) as err:
        FrameHeaders.from_kafka(headers)
    assert err.value.reason is DlqReason.INVALID_HEADER
    assert f"header {name!r} appears more than once" in err.value.detail


@given(width=st.integers(1, 20_000), height=st.integers(1, 20_000), max_side=st.integers(16, 4096))
def test_scaled_size_never_exceeds_the_bound_unless_the_minimum_side_needs_it(
    width: int, height: int, max_side: int
) -> None:
    w, h = scaled_size(width, height, max_side, 16)
    assert w <= width and h <= height
    if max(width, height) <= max_side:
        assert (w, h) == (width, height)
    elif min(width, height) * max_side / max(width, height) >= 16:
        assert max(w, h) <= max_side + 1
    else:
        assert min(w, h) >= min(16, min(width, height)) - 1
