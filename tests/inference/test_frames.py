"""One frame contract: the Kafka decode path and the onboarding path give identical arrays."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inference.frames import FrameError, decode_frame, load_frame
from inference.onboarding import load_images
from ingest.decode import decode_frame as decode_kafka_frame
from ingest.schemas import DlqReason, FrameHeaders, MessageError
from ingest.settings import FrameLimits
from pretrain.preprocess import ImageLoadError, load_image, resize_uint8

RNG = np.random.default_rng(7)
RGB = RNG.integers(0, 256, (40, 56, 3), dtype=np.uint8)
GREY16 = (RNG.integers(0, 1024, (40, 56)) + 30_000).astype(np.uint16)  # a narrow 16-bit band


def _images() -> dict[str, Image.Image]:
    rgba = np.dstack([RGB, RNG.integers(0, 256, (40, 56), dtype=np.uint8)])
    palette = Image.fromarray(RGB).quantize(colors=16)
    transparent = palette.copy()
    transparent.info["transparency"] = 3
    return {
        "rgb8": Image.fromarray(RGB),
        "grey16": Image.fromarray(GREY16),
        "rgba": Image.fromarray(rgba, mode="RGBA"),
        "grey": Image.fromarray(RGB[..., 1]),
        "palette": palette,
        "palette_transparent": transparent,
    }


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _headers(content_type: str = "image/png") -> FrameHeaders:
    return FrameHeaders(
        product="p",
        line="l",
        camera="c",
        frame_id="f",
        capture_time=datetime.now(UTC),
        content_type=content_type,
    )


@pytest.mark.parametrize("kind", list(_images()))
def test_kafka_and_onboarding_paths_decode_identically(kind: str, tmp_path: Path) -> None:
    data = _png(_images()[kind])
    path = tmp_path / f"{kind}.png"
    path.write_bytes(data)
    limits = FrameLimits(claim_check_roots=[tmp_path])

    kafka = decode_kafka_frame(data, _headers(), limits)
    claim = decode_kafka_frame(path.as_uri().encode(), _headers("text/uri-list"), limits)
    onboarding = load_frame(path)
    pretraining = load_image(path)

    assert kafka.dtype == np.uint8 and kafka.shape == (40, 56, 3)
    for other in (claim, onboarding, pretraining):
        assert np.array_equal(kafka, other)
    # the onboarding loader proper (resized to the model's input) sees the same pixels
    assert np.array_equal(load_images([path], 32)[0], resize_uint8(kafka, 32))


def test_16_bit_frames_are_rescaled_not_clipped() -> None:
    out = decode_frame(_png(Image.fromarray(GREY16)))
    assert out.min() == 0 and out.max() == 255  # the 30000..31023 band spans 0..255
    lo, hi = int(GREY16.min()), int(GREY16.max())
    expected = np.round((GREY16.astype(np.float64) - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    assert np.array_equal(out[..., 0], expected)
    assert np.array_equal(out[..., 0], out[..., 2])


def test_alpha_is_composited_on_black() -> None:
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[:10, :, 3] = 255  # top half opaque, bottom half transparent
    out = decode_frame(_png(Image.fromarray(rgba, mode="RGBA")))
    assert (out[:10] == 200).all() and (out[10:] == 0).all()


def test_file_errors_name_the_file_and_carry_a_reason(tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(FrameError, match="bad.png") as err:
        load_frame(bad)
    assert err.value.reason == DlqReason.UNDECODABLE_IMAGE
    assert isinstance(err.value, ImageLoadError)  # onboarding and the demo catch this
    with pytest.raises(FrameError, match="not found"):
        load_frame(tmp_path / "absent.png")
    big = tmp_path / "big.png"
    big.write_bytes(_png(Image.fromarray(RGB)))
    with pytest.raises(FrameError, match="max_side|sides") as err:
        load_frame(big, FrameLimits(max_side=32))
    assert err.value.reason == DlqReason.WRONG_SIZE
    with pytest.raises(MessageError) as kafka_err:
        decode_kafka_frame(big.read_bytes(), _headers(), FrameLimits(max_side=32))
    assert kafka_err.value.reason is DlqReason.WRONG_SIZE


def test_files_may_be_bmp_or_tiff_but_frames_only_jpeg_or_png(tmp_path: Path) -> None:
    path = tmp_path / "ref.bmp"
    Image.fromarray(RGB).save(path)
    assert np.array_equal(load_frame(path), RGB)
    with pytest.raises(FrameError, match="BMP"):
        decode_frame(path.read_bytes())
