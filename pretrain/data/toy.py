"""Tiny generated MVTec-layout categories, for tests and smoke runs (no real data needed)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["write_toy_category"]


def _background(rng: np.random.Generator, height: int, width: int, style: int) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(60, 190, 3).astype(np.float32)
    period = 6.0 + 3.0 * style
    pattern = 25.0 * np.sin(2 * np.pi * (xx + (style % 2) * yy) / period)
    noise = rng.normal(0, 6, (height, width, 3))
    return (base + pattern[..., None] + noise).clip(0, 255).astype(np.uint8)


def write_toy_category(
    root: Path | str,
    n_train: int = 12,
    n_test_good: int = 3,
    defects: Mapping[str, int] | None = None,
    size: tuple[int, int] = (48, 40),
    fmt: str = "png",
    masks: bool = True,
    style: int = 0,
    seed: int = 0,
) -> Path:
    """Write ``root/{train/good,test/good,test/<defect>,ground_truth/<defect>}`` and return it.

    Images are ``size`` = (width, height) RGB with a striped texture (``style`` changes it);
    defects are dark or bright rectangles whose masks are exact (``<stem>_mask.png``, 255).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    width, height = size
    ext = {"png": ".png", "jpg": ".jpg", "jpeg": ".jpg"}[fmt]
    defects = {"blob": 3} if defects is None else dict(defects)

    def save(path: Path, arr: np.ndarray) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(path)

    for i in range(n_train):
        save(root / "train" / "good" / f"{i:03d}{ext}", _background(rng, height, width, style))
    for i in range(n_test_good):
        save(root / "test" / "good" / f"{i:03d}{ext}", _background(rng, height, width, style))
    for defect, count in defects.items():
        for i in range(count):
            img = _background(rng, height, width, style)
            mask = np.zeros((height, width), np.uint8)
            h = int(rng.integers(height // 5, height // 2))
            w = int(rng.integers(width // 5, width // 2))
            y = int(rng.integers(0, height - h))
            x = int(rng.integers(0, width - w))
            img[y : y + h, x : x + w] = 255 if i % 2 else 0
            mask[y : y + h, x : x + w] = 255
            save(root / "test" / defect / f"{i:03d}{ext}", img)
            if masks:
                save(root / "ground_truth" / defect / f"{i:03d}_mask.png", mask)
    return root
