"""Shared post-processing: token scores -> anomaly maps -> image scores.

One definition for the whole project (evaluation, onboarding, serving): per-level token score
maps are upsampled bilinearly to the input size, averaged over levels, and smoothed with a
separable Gaussian (sigma 4, reflect padding, plain torch conv: deterministic on CPU and GPU).
The image score is the maximum of the smoothed map. Scores stay raw: no per-image min-max
normalisation, so they are comparable across frames and batches.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

DEFAULT_SIGMA = 4.0


def _size2(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        return image_size, image_size
    h, w = image_size
    return int(h), int(w)


def gaussian_kernel1d(sigma: float, dtype: torch.dtype = torch.float32) -> Tensor:
    """Normalised 1-D Gaussian; radius = 4 sigma (33 taps for sigma 4, as anomalib)."""
    radius = int(4.0 * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).to(dtype)


def gaussian_blur(maps: Tensor, sigma: float = DEFAULT_SIGMA) -> Tensor:
    """Separable Gaussian smoothing of [B,H,W] maps (reflect padding; sigma <= 0: identity)."""
    if maps.ndim != 3:
        raise ValueError(f"gaussian_blur expects [B,H,W] maps, got shape {tuple(maps.shape)}")
    if sigma <= 0:
        return maps
    k = gaussian_kernel1d(sigma, maps.dtype).to(maps.device)
    r = (k.numel() - 1) // 2
    x = maps.unsqueeze(1)
    h, w = x.shape[-2:]
    # reflect padding needs pad < size; fall back to replicate for tiny maps
    mode = "reflect" if r < h and r < w else "replicate"
    x = F.pad(x, (r, r, r, r), mode=mode)
    x = F.conv2d(x, k.view(1, 1, -1, 1))
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    return x.squeeze(1)


def upsample(maps: Tensor, image_size: int | Sequence[int]) -> Tensor:
    """Bilinear upsampling of [B,h,w] token maps to the input size (align_corners=False)."""
    size = _size2(image_size)
    if tuple(maps.shape[-2:]) == size:
        return maps
    return F.interpolate(maps.unsqueeze(1), size=size, mode="bilinear", align_corners=False)[:, 0]


def anomaly_map(
    level_scores: Sequence[Tensor],
    image_size: int | Sequence[int],
    sigma: float = DEFAULT_SIGMA,
) -> Tensor:
    """Per-level token scores [B,h_l,w_l] -> smoothed anomaly maps [B,S,S] (float32).

    Bilinear upsampling of every level to ``image_size``, mean over levels, Gaussian sigma 4.
    """
    if len(level_scores) == 0:
        raise ValueError("anomaly_map needs at least one level of scores")
    batch = level_scores[0].shape[0]
    acc = None
    for s in level_scores:
        if s.ndim != 3 or s.shape[0] != batch:
            raise ValueError(
                f"every level must be [B,h,w] with B={batch}, got shape {tuple(s.shape)}"
            )
        up = upsample(s.float(), image_size)
        acc = up if acc is None else acc + up
    return gaussian_blur(acc / len(level_scores), sigma)


def image_scores(maps: Tensor) -> Tensor:
    """Image score = maximum of each anomaly map: [B,H,W] -> [B]."""
    return maps.flatten(1).amax(dim=1)
