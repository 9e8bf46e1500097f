"""Image loading and the uint8 -> normalised-tensor step shared by training, the in-process engine
and the Triton preprocess model (`to_model_input` is pure torch for that reason)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor


class ImageLoadError(ValueError):
    """An image file could not be read; the message names the file."""


class _HasNorm(Protocol):
    mean: Sequence[float]
    std: Sequence[float]


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB: the one pixel conversion of frames, references and training
    images. 16-bit and float greyscale are RESCALED from their actual range to 0..255 (not
    clipped); alpha (RGBA, LA, palette with transparency) is composited onto black; grey and
    palette images are expanded to RGB."""
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # 16-bit / float grayscale: scale the actual range to 8 bits instead of clipping.
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(scaled.round().astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("RGB")


def load_image(path: Path | str) -> np.ndarray:
    """Read a PNG/JPEG (any mode: grayscale, palette, 16-bit, alpha) as uint8 HxWx3 RGB.

    Raises ImageLoadError naming the file when it is missing, truncated or not an image.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()  # decodes fully: truncated files fail here, not later
            rgb = to_rgb(img)
    except FileNotFoundError as e:
        raise ImageLoadError(f"image file not found: {path}") from e
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise ImageLoadError(f"cannot read image {path}: {e}") from e
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))


def decode_image(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Like `load_image` for encoded bytes (e.g. a Kafka frame); `name` goes in the error."""
    import io

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            rgb = to_rgb(img)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise ImageLoadError(f"cannot decode image {name}: {e}") from e
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))


def resize_uint8(image: np.ndarray, size: int) -> np.ndarray:
    """Square resize to size x size without cropping (PIL bilinear); uint8 HxWx3 -> SxSx3."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected uint8 HxWx3, got {image.dtype} {image.shape}")
    if image.shape[0] == size and image.shape[1] == size:
        return image
    out = Image.fromarray(image).resize((size, size), Image.BILINEAR)
    return np.asarray(out, dtype=np.uint8)


def check_frames(images: Tensor | np.ndarray) -> None:
    """Raise ValueError unless ``images`` (numpy or torch) is a uint8 [B,S,S,3] batch."""
    uint8 = images.dtype == torch.uint8 if isinstance(images, Tensor) else images.dtype == np.uint8
    if not uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 [B,S,S,3], got {images.dtype} {tuple(images.shape)}")


def to_model_input(images: Tensor | np.ndarray, spec: _HasNorm) -> Tensor:
    """uint8 [B,S,S,3] -> float32 [B,3,S,S], scaled to 0..1 and normalised with spec.mean/std.

    Pure torch (runs unchanged in the Triton preprocess model); keeps the input's device.
    """
    x = torch.as_tensor(images)
    check_frames(x)
    mean = torch.tensor(spec.mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    x = x.permute(0, 3, 1, 2).to(torch.float32).div_(255.0)
    return ((x - mean) / std).contiguous()


def load_batch(paths: Sequence[Path | str], size: int) -> np.ndarray:
    """Load and resize images into one uint8 [B,S,S,3] array."""
    return np.stack([resize_uint8(load_image(p), size) for p in paths])
