"""One frame contract: the Kafka decode path and the onboarding path give identical arrays."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from frame_testkit import frame_headers
from PIL import Image

from inference.frames import FrameError, decode_frame, load_frame
from inference.onboarding import load_images
from ingest.decode import decode_frame as decode_kafka_frame
from ingest.schemas import DlqReason, MessageError
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


@pytest.mark.parametrize("kind", list(_images()))
def test_kafka_and_onboarding_paths_decode_identically(kind: str, tmp_path: Path) -> None:
    data = _png(_images()[kind])
    path = tmp_path / f"{kind}.png"
    path.write_bytes(data)
    limits = FrameLimits(claim_check_roots=[tmp_path])

    kafka = decode_kafka_frame(data, frame_headers(), limits)
    claim = decode_kafka_frame(path.as_uri().encode(), frame_headers("text/uri-list"), limits)
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
        decode_kafka_frame(big.read_bytes(), frame_headers(), FrameLimits(max_side=32))
    assert kafka_err.value.reason is DlqReason.WRONG_SIZE


def test_files_may_be_bmp_or_tiff_but_frames_only_jpeg_or_png(tmp_path: Path) -> None:
    path = tmp_path / "ref.bmp"
    Image.fromarray(RGB).save(path)
    assert np.array_equal(load_frame(path), RGB)
    with pytest.raises(FrameError, match="BMP"):
        decode_frame(path.read_bytes())


# --- claim checks: roots required, regular files only, bounded, no escape -------------------


def _claim(path: Path | str) -> bytes:
    return Path(path).as_uri().encode() if Path(path).is_absolute() else str(path).encode()


def _claim_error(uri: bytes, limits: FrameLimits) -> MessageError:
    with pytest.raises(MessageError) as err:
        decode_kafka_frame(uri, frame_headers("text/uri-list"), limits)
    return err.value


def test_claim_checks_are_off_without_roots(tmp_path: Path) -> None:
    path = tmp_path / "f.png"
    path.write_bytes(_png(Image.fromarray(RGB)))
    error = _claim_error(_claim(path), FrameLimits())
    assert error.reason is DlqReason.CLAIM_CHECK_UNREADABLE
    assert "claim checks are off" in error.detail
    # the same file is accepted once its directory is a root
    ok = decode_kafka_frame(
        _claim(path), frame_headers("text/uri-list"), FrameLimits(claim_check_roots=[tmp_path])
    )
    assert ok.shape == (40, 56, 3)


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    import os
    import threading

    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    out: list[MessageError] = []
    worker = threading.Thread(
        target=lambda: out.append(
            _claim_error(_claim(fifo), FrameLimits(claim_check_roots=[tmp_path]))
        ),
        daemon=True,
    )
    worker.start()
    worker.join(5)
    assert not worker.is_alive(), "reading a FIFO claim check blocked"
    assert out[0].reason is DlqReason.CLAIM_CHECK_UNREADABLE and "a FIFO" in out[0].detail


def test_devices_directories_and_files_outside_the_roots_are_refused(tmp_path: Path) -> None:
    zero = _claim_error(_claim("/dev/zero"), FrameLimits(claim_check_roots=[Path("/dev")]))
    assert "character device" in zero.detail
    folder = tmp_path / "dir"
    folder.mkdir()
    assert (
        "a directory"
        in _claim_error(_claim(folder), FrameLimits(claim_check_roots=[tmp_path])).detail
    )
    passwd = _claim_error(_claim("/etc/passwd"), FrameLimits(claim_check_roots=[tmp_path]))
    assert "outside the allowed roots" in passwd.detail


def test_a_symlink_out_of_the_roots_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "frames"
    root.mkdir()
    outside = tmp_path / "secret.png"
    outside.write_bytes(_png(Image.fromarray(RGB)))
    (root / "link.png").symlink_to(outside)
    (root / "passwd").symlink_to("/etc/passwd")
    limits = FrameLimits(claim_check_roots=[root])
    for name in ("link.png", "passwd"):
        error = _claim_error(_claim(root / name), limits)
        assert error.reason is DlqReason.CLAIM_CHECK_UNREADABLE
        assert "outside the allowed roots" in error.detail
    # a symlink that stays inside the root is fine
    (root / "real.png").write_bytes(outside.read_bytes())
    (root / "inside.png").symlink_to(root / "real.png")
    assert decode_kafka_frame(
        _claim(root / "inside.png"), frame_headers("text/uri-list"), limits
    ).shape


def test_claim_check_reads_are_bounded_by_max_bytes(tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG" + b"\0" * 5000)
    error = _claim_error(_claim(big), FrameLimits(max_bytes=4096, claim_check_roots=[tmp_path]))
    assert error.reason is DlqReason.WRONG_SIZE and "4096" in error.detail


# --- decoded-pixel budget -----------------------------------------------------------------------


def test_frames_are_downscaled_at_decode_and_keep_their_full_size() -> None:
    from inference.frames import decode_scaled

    big = Image.fromarray(np.tile(RGB, (40, 40, 1)))  # 2240 x 1600
    for fmt in ("PNG", "JPEG"):
        buffer = io.BytesIO()
        big.save(buffer, format=fmt)
        image, size = decode_scaled(buffer.getvalue(), max_side=512)
        assert size == (1600, 2240)
        assert max(image.shape[:2]) <= 512 and image.shape[2] == 3
        assert abs(image.shape[1] / image.shape[0] - 2240 / 1600) < 0.02
    small, size = decode_scaled(_png(Image.fromarray(RGB)), max_side=512)
    assert size == (40, 56) and np.array_equal(small, RGB)  # small frames are untouched


def test_16_bit_and_palette_frames_downscale_too() -> None:
    from inference.frames import decode_scaled

    grey16 = Image.fromarray(np.tile(GREY16, (30, 30)))
    palette = Image.fromarray(np.tile(RGB, (30, 30, 1))).quantize(colors=16)
    for img in (grey16, palette):
        image, size = decode_scaled(_png(img), max_side=256)
        assert size == (1200, 1680) and max(image.shape[:2]) == 256
    assert decode_scaled(_png(grey16), max_side=256)[0].max() > 200  # still rescaled


def test_a_pixel_limit_refuses_a_frame_before_decoding_it() -> None:
    data = _png(Image.new("L", (600, 600)))
    with pytest.raises(FrameError) as err:
        decode_frame(data, limits=FrameLimits(max_pixels=100_000))
    assert err.value.reason == "wrong_size" and "360000 pixels" in err.value.detail


def test_a_long_thin_frame_keeps_its_minimum_side() -> None:
    from inference.frames import scaled_size

    assert scaled_size(8192, 16, 1024, 16) == (8192, 16)
    assert scaled_size(4000, 100, 1000, 16) == (1000, 25)
    assert scaled_size(900, 900, 1024, 16) == (900, 900)
