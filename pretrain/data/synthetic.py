"""Synthetic anomalies with exact pixel masks.

Generators (each ``f(image, rng, ...) -> (image, mask)``, uint8 HxWx3 in, uint8 HxWx3 and
uint8 HxW in {0,1} out; the mask is exactly the set of pixels the generator rewrote):

* ``perlin``: a thresholded Perlin-noise region blended with a foreign texture (another image,
  randomly flipped/rotated/inverted, or a procedural pattern: stripes, checkerboard, smooth
  colour noise, coloured Perlin noise), as in DRAEM.
* ``scar``: CutPaste-scar: a thin rectangle cut from the image, colour-jittered, rotated and
  pasted elsewhere.
* ``patch``: CutPaste: a larger rotated rectangle cut, jittered and pasted elsewhere.

:class:`SyntheticAnomalies` picks one generator per call.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

GENERATORS = ("perlin", "scar", "patch")

__all__ = [
    "GENERATORS",
    "SyntheticAnomalies",
    "cutpaste",
    "perlin_mask",
    "perlin_noise",
    "perlin_texture_anomaly",
    "procedural_texture",
]


def _fade(t: np.ndarray) -> np.ndarray:
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def perlin_noise(
    shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator
) -> np.ndarray:
    """2-D gradient (Perlin) noise of ``shape`` with ``res`` lattice cells per axis, in ~[-1, 1]."""
    h, w = shape
    ys = np.arange(h) * (res[0] / h)
    xs = np.arange(w) * (res[1] / w)
    gy, gx = ys.astype(int)[:, None], xs.astype(int)[None, :]
    fy, fx = (ys - ys.astype(int))[:, None], (xs - xs.astype(int))[None, :]
    angles = 2 * math.pi * rng.random((res[0] + 1, res[1] + 1))
    grad = np.stack([np.cos(angles), np.sin(angles)], axis=-1)

    def corner(dy: int, dx: int) -> np.ndarray:
        g = grad[gy + dy, gx + dx]
        return g[..., 0] * (fy - dy) + g[..., 1] * (fx - dx)

    ty, tx = _fade(fy), _fade(fx)
    top = corner(0, 0) * (1 - tx) + corner(0, 1) * tx
    bottom = corner(1, 0) * (1 - tx) + corner(1, 1) * tx
    return math.sqrt(2) * (top * (1 - ty) + bottom * ty)


def perlin_mask(
    size: int,
    rng: np.random.Generator,
    threshold: float = 0.5,
    max_scale_exp: int = 5,
    min_fraction: float = 0.002,
    max_fraction: float = 0.5,
    tries: int = 20,
) -> np.ndarray:
    """Boolean SxS mask: Perlin noise (random lattice 2^0..2^max per axis) above ``threshold``.

    Redrawn until its area is within [min_fraction, max_fraction] of the image; falls back to an
    ellipse after ``tries`` draws so a mask is never empty.
    """
    for _ in range(tries):
        res = (
            2 ** int(rng.integers(0, max_scale_exp + 1)),
            2 ** int(rng.integers(0, max_scale_exp + 1)),
        )
        mask = perlin_noise((size, size), res, rng) > threshold
        if min_fraction <= mask.mean() <= max_fraction:
            return mask
    yy, xx = np.mgrid[0:size, 0:size]
    cy, cx = rng.uniform(0.2, 0.8, 2) * size
    ry, rx = rng.uniform(0.05, 0.2, 2) * size
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def procedural_texture(size: int, rng: np.random.Generator) -> np.ndarray:
    """A random procedural pattern, uint8 SxSx3: stripes, checkerboard, smooth or Perlin colour."""
    kind = int(rng.integers(0, 4))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    c1, c2 = rng.integers(0, 256, (2, 3)).astype(np.float32)
    if kind == 0:  # stripes
        theta = rng.uniform(0, math.pi)
        period = rng.uniform(3, size / 4)
        t = (np.sin(2 * math.pi * (xx * math.cos(theta) + yy * math.sin(theta)) / period) + 1) / 2
    elif kind == 1:  # checkerboard
        cell = int(rng.integers(3, max(4, size // 6)))
        t = ((yy // cell + xx // cell) % 2).astype(np.float32)
    elif kind == 2:  # smooth colour noise: bilinear upsampling of a coarse random grid
        coarse = rng.integers(0, 256, (int(rng.integers(2, 16)),) * 2 + (3,), dtype=np.uint8)
        return np.asarray(Image.fromarray(coarse).resize((size, size), Image.BILINEAR))
    else:  # coloured Perlin noise
        res = 2 ** int(rng.integers(1, 5))
        t = (np.clip(perlin_noise((size, size), (res, res), rng), -1, 1) + 1) / 2
    out = c1[None, None] * (1 - t[..., None]) + c2[None, None] * t[..., None]
    return out.clip(0, 255).astype(np.uint8)


def _foreign(texture: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Resize a foreign image to SxS and randomly rotate/flip/invert it."""
    if texture.shape[:2] != (size, size):
        texture = np.asarray(Image.fromarray(texture).resize((size, size), Image.BILINEAR))
    texture = np.rot90(texture, int(rng.integers(0, 4)))
    if rng.random() < 0.5:
        texture = texture[:, ::-1]
    if rng.random() < 0.3:
        texture = 255 - texture
    return np.ascontiguousarray(texture)


def perlin_texture_anomaly(
    image: np.ndarray,
    rng: np.random.Generator,
    texture: np.ndarray | None = None,
    opacity: tuple[float, float] = (0.3, 1.0),
) -> tuple[np.ndarray, np.ndarray]:
    """Blend a foreign ``texture`` (or a procedural one) into a Perlin-noise region.

    out = image * (1 - w m) + texture * w m, with w ~ U(opacity); the mask is m.
    """
    h, w = image.shape[:2]
    if h != w:
        raise ValueError(f"synthetic anomalies expect a square image, got {h}x{w}")
    mask = perlin_mask(h, rng)
    tex = _foreign(texture, h, rng) if texture is not None else procedural_texture(h, rng)
    weight = rng.uniform(*opacity)
    m = mask[..., None].astype(np.float32) * weight
    out = image.astype(np.float32) * (1 - m) + tex.astype(np.float32) * m
    return out.round().clip(0, 255).astype(np.uint8), mask.astype(np.uint8)


def _jitter(patch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random per-channel gain and offset (a strong colour jitter)."""
    gain = rng.uniform(0.6, 1.4, 3)
    offset = rng.uniform(-60, 60, 3)
    return (patch.astype(np.float32) * gain + offset).clip(0, 255).astype(np.uint8)


def cutpaste(
    image: np.ndarray,
    rng: np.random.Generator,
    scar: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """CutPaste: cut a rectangle, jitter, rotate and paste it elsewhere in the image.

    ``scar=True``: thin (2-16 px wide, 10-25 % long at 256 px, scaled), rotated by +-45 deg;
    otherwise a patch of 2-15 % of the area with aspect 0.3-3.3, rotated by any angle.
    The mask is exactly the pasted (rotated) rectangle.
    """
    size = image.shape[0]
    scale = size / 256.0
    if scar:
        pw = max(2, round(rng.uniform(2, 16) * scale))
        ph = max(4, round(rng.uniform(0.10, 0.25) * size))
        angle = rng.uniform(-45, 45)
    else:
        area = rng.uniform(0.02, 0.15) * size * size
        aspect = math.exp(rng.uniform(math.log(0.3), math.log(1 / 0.3)))
        pw = int(min(size - 2, max(4, round(math.sqrt(area * aspect)))))
        ph = int(min(size - 2, max(4, round(math.sqrt(area / aspect)))))
        angle = rng.uniform(0, 360)
    y0 = int(rng.integers(0, size - ph + 1))
    x0 = int(rng.integers(0, size - pw + 1))
    patch = _jitter(image[y0 : y0 + ph, x0 : x0 + pw], rng)
    rgba = np.dstack([patch, np.full(patch.shape[:2], 255, np.uint8)])
    rotated = np.asarray(Image.fromarray(rgba, "RGBA").rotate(angle, Image.NEAREST, expand=True))
    rh, rw = min(rotated.shape[0], size), min(rotated.shape[1], size)
    rotated = rotated[:rh, :rw]
    alpha = rotated[..., 3] > 0
    ty = int(rng.integers(0, size - rh + 1))
    tx = int(rng.integers(0, size - rw + 1))
    out = image.copy()
    region = out[ty : ty + rh, tx : tx + rw]
    region[alpha] = rotated[..., :3][alpha]
    mask = np.zeros((size, size), np.uint8)
    mask[ty : ty + rh, tx : tx + rw] = alpha
    return out, mask


class SyntheticAnomalies:
    """Draw one synthetic anomaly per call from the chosen generators (uniformly).

    ``generators`` is a subset of :data:`GENERATORS`; ``foreign_texture_p`` is the probability
    that the Perlin generator uses the supplied foreign image instead of a procedural pattern.
    """

    def __init__(self, generators: Sequence[str] = GENERATORS, foreign_texture_p: float = 0.5):
        unknown = set(generators) - set(GENERATORS)
        if unknown or not generators:
            raise ValueError(
                f"unknown synthetic generators {sorted(unknown)}; choose from {GENERATORS}"
            )
        self.generators = tuple(generators)
        self.foreign_texture_p = foreign_texture_p

    def __call__(
        self,
        image: np.ndarray,
        rng: np.random.Generator,
        texture: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        kind = self.generators[int(rng.integers(0, len(self.generators)))]
        if kind == "perlin":
            use_foreign = texture is not None and rng.random() < self.foreign_texture_p
            return perlin_texture_anomaly(image, rng, texture if use_foreign else None)
        return cutpaste(image, rng, scar=kind == "scar")
