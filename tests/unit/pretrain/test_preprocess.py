"""Image loading (formats, modes, clear errors), square resize, and model-input normalisation."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from pretrain.backbones import get_spec
from pretrain.preprocess import (
    ImageLoadError,
    decode_image,
    load_batch,
    load_image,
    resize_uint8,
    to_model_input,
)


def _rgb(h=20, w=30, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_png_and_jpeg_rgb(tmp_path):
    img = _rgb()
    Image.fromarray(img).save(tmp_path / "a.png")
    Image.fromarray(img).save(tmp_path / "a.jpg", quality=95)
    png = load_image(tmp_path / "a.png")
    assert png.dtype == np.uint8 and png.shape == (20, 30, 3)
    np.testing.assert_array_equal(png, img)
    jpg = load_image(str(tmp_path / "a.jpg"))
    assert jpg.shape == (20, 30, 3) and jpg.dtype == np.uint8


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "I;16"])
def test_other_modes_become_rgb(tmp_path, mode):
    gray = np.tile(np.arange(30, dtype=np.uint8) * 8, (20, 1))
    if mode == "I;16":
        img = Image.fromarray(gray.astype(np.uint16) * 256)
    elif mode == "P":
        img = Image.fromarray(_rgb()).convert("P")
    else:
        img = Image.fromarray(gray).convert(mode)
    img.save(tmp_path / "x.png")
    out = load_image(tmp_path / "x.png")
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    if mode in ("L", "LA", "RGBA"):
        np.testing.assert_array_equal(out[..., 0], gray)
        np.testing.assert_array_equal(out[..., 0], out[..., 2])
    if mode == "I;16":  # 16-bit range scaled to 8 bits, not clipped to white
        assert out.min() == 0 and out.max() == 255


def test_truncated_unreadable_and_missing_files_name_the_file(tmp_path):
    Image.fromarray(_rgb(64, 64)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match="cut.png"):
        load_image(tmp_path / "cut.png")
    Image.fromarray(_rgb(64, 64)).save(tmp_path / "full.jpg")
    jdata = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(jdata[: len(jdata) // 3])
    with pytest.raises(ImageLoadError, match="cut.jpg"):
        load_image(tmp_path / "cut.jpg")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ImageLoadError, match="text.png"):
        load_image(tmp_path / "text.png")
    with pytest.raises(ImageLoadError, match="absent.png"):
        load_image(tmp_path / "absent.png")
    assert issubclass(ImageLoadError, ValueError)


def test_decode_image_bytes():
    buf = io.BytesIO()
    Image.fromarray(_rgb()).save(buf, format="PNG")
    np.testing.assert_array_equal(decode_image(buf.getvalue()), _rgb())
    with pytest.raises(ImageLoadError, match="frame-7"):
        decode_image(b"garbage", name="frame-7")


def test_resize_is_square_without_crop():
    img = np.zeros((40, 100, 3), dtype=np.uint8)
    img[:, :10] = 255  # a stripe at the left edge survives (no centre crop)
    out = resize_uint8(img, 32)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert out[:, 0].min() == 255 and out[:, -1].max() == 0
    same = _rgb(32, 32)
    assert resize_uint8(same, 32) is same
    expect = np.asarray(Image.fromarray(img).resize((32, 32), Image.BILINEAR))
    np.testing.assert_array_equal(out, expect)
    with pytest.raises(ValueError):
        resize_uint8(img.astype(np.float32), 32)


def test_to_model_input_matches_the_formula():
    spec = get_spec("mobilenet_v2")
    imgs = np.stack([_rgb(8, 8, s) for s in range(3)])
    x = to_model_input(torch.from_numpy(imgs), spec)
    assert x.shape == (3, 3, 8, 8) and x.dtype == torch.float32 and x.is_contiguous()
    mean = np.array(spec.mean).reshape(1, 3, 1, 1)
    std = np.array(spec.std).reshape(1, 3, 1, 1)
    expect = (imgs.transpose(0, 3, 1, 2) / 255.0 - mean) / std
    np.testing.assert_allclose(x.numpy(), expect, atol=1e-5)
    np.testing.assert_allclose(to_model_input(imgs, spec).numpy(), x.numpy())  # numpy in
    with pytest.raises(ValueError):
        to_model_input(torch.zeros(1, 8, 8, 3), spec)  # float input
    with pytest.raises(ValueError):
        to_model_input(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), spec)  # CHW input


def test_real_dataset_images_load(datasets_dir):
    paths = sorted((datasets_dir / "magnetic_tile" / "tile" / "train" / "good").iterdir())[:2]
    paths += sorted((datasets_dir / "mvtec_ad" / "bottle" / "train" / "good").iterdir())[:1]
    batch = load_batch(paths, 224)
    assert batch.shape == (3, 224, 224, 3) and batch.dtype == np.uint8
