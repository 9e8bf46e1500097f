"""Photometric augmentation: two views of one batch that share its geometry (and so its masks).

ColorJitter(brightness 0.4, contrast 0.4, saturation 0.4, hue 0.1) with p=0.8 (the four
adjustments in a random order per image), RandomGrayscale p=0.2, GaussianBlur sigma 0.1-2 with
p=0.5 (docs/METHOD.md section 5). No crop, flip or rotation: the pixel masks stay valid.

Everything runs batched on the training device with per-image random parameters (a per-image
torchvision pipeline cost more than the model on 2 CPU cores). Brightness, contrast, saturation
and grayscale follow torchvision's definitions; the hue shift is a rotation of the chroma plane
in YIQ space by 2*pi*h (the classic linear approximation of the HSV hue shift); the blur is a
separable Gaussian whose kernel is about 10 % of the image side (23 px at 224).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["PhotometricAugment", "blur_kernel_size"]

_GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights
_RGB2YIQ = torch.tensor(
    [[0.299, 0.587, 0.114], [0.5959, -0.2746, -0.3213], [0.2115, -0.5227, 0.3112]]
)
_YIQ2RGB = torch.linalg.inv(_RGB2YIQ)


def blur_kernel_size(image_size: int) -> int:
    """Odd Gaussian kernel of about 10 % of the image side (23 px at 224), at least 3."""
    k = max(3, int(round(image_size * 0.1)))
    return k if k % 2 else k + 1


def _gray(x: Tensor) -> Tensor:
    r, g, b = x.unbind(1)
    return (_GRAY[0] * r + _GRAY[1] * g + _GRAY[2] * b).unsqueeze(1)


def _per_image(v: Tensor) -> Tensor:
    return v.view(-1, 1, 1, 1)


def _brightness(x: Tensor, f: Tensor) -> Tensor:
    return (x * _per_image(f)).clamp(0, 1)


def _contrast(x: Tensor, f: Tensor) -> Tensor:
    mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
    return (_per_image(f) * x + (1 - _per_image(f)) * mean).clamp(0, 1)


def _saturation(x: Tensor, f: Tensor) -> Tensor:
    return (_per_image(f) * x + (1 - _per_image(f)) * _gray(x)).clamp(0, 1)


def _hue(x: Tensor, h: Tensor) -> Tensor:
    """Rotate chroma (I, Q) by 2*pi*h per image."""
    cos, sin = torch.cos(2 * math.pi * h), torch.sin(2 * math.pi * h)
    one, zero = torch.ones_like(h), torch.zeros_like(h)
    rot = torch.stack(
        [torch.stack([one, zero, zero], -1), torch.stack([zero, cos, -sin], -1),
         torch.stack([zero, sin, cos], -1)], 1,
    )  # fmt: skip  # [B, 3, 3]
    m = _YIQ2RGB.to(x) @ rot @ _RGB2YIQ.to(x)
    return torch.einsum("bij,bjhw->bihw", m, x).clamp(0, 1)


_JITTER_OPS = (_brightness, _contrast, _saturation, _hue)


def _blur(x: Tensor, sigma: Tensor, k: int) -> Tensor:
    """Separable Gaussian blur with a per-image sigma (reflect padding)."""
    b, c, h, w = x.shape
    r = torch.arange(k, device=x.device, dtype=x.dtype) - k // 2
    kern = torch.exp(-(r[None] ** 2) / (2 * sigma[:, None] ** 2))
    kern = (kern / kern.sum(1, keepdim=True)).repeat_interleave(c, 0)  # [B*C, k]
    y = x.reshape(1, b * c, h, w)
    y = F.pad(y, (k // 2, k // 2, k // 2, k // 2), mode="reflect")
    y = F.conv2d(y, kern.view(b * c, 1, k, 1), groups=b * c)
    y = F.conv2d(y, kern.view(b * c, 1, 1, k), groups=b * c)
    return y.view(b, c, h, w)


class PhotometricAugment:
    """Callable: uint8 [B,S,S,3] (tensor) -> augmented uint8 [B,S,S,3], per-image parameters.

    Pass a ``torch.Generator`` for reproducible draws (parameters are drawn on the CPU).
    """

    def __init__(
        self,
        image_size: int,
        jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1),
        jitter_p: float = 0.8,
        grayscale_p: float = 0.2,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        blur_p: float = 0.5,
    ):
        self.kernel = blur_kernel_size(image_size)
        self.jitter = jitter
        self.jitter_p = jitter_p
        self.grayscale_p = grayscale_p
        self.blur_sigma = blur_sigma
        self.blur_p = blur_p

    def _uniform(self, n: int, lo: float, hi: float, g: torch.Generator | None) -> Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=g)

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[-1] != 3:
            raise ValueError(
                f"expected a uint8 [B,H,W,3] batch, got {images.dtype} {tuple(images.shape)}"
            )
        g = generator
        n = images.shape[0]
        dev = images.device
        bri, con, sat, hue = self.jitter
        apply = torch.rand(n, generator=g) < self.jitter_p
        params = [
            self._uniform(n, max(0.0, 1 - bri), 1 + bri, g),
            self._uniform(n, max(0.0, 1 - con), 1 + con, g),
            self._uniform(n, max(0.0, 1 - sat), 1 + sat, g),
            self._uniform(n, -hue, hue, g),
        ]
        neutral = (1.0, 1.0, 1.0, 0.0)
        params = [
            torch.where(apply, p, torch.full_like(p, v))
            for p, v in zip(params, neutral, strict=True)
        ]
        order = torch.argsort(torch.rand(n, 4, generator=g), dim=1)  # random op order per image
        gray = torch.rand(n, generator=g) < self.grayscale_p
        blur = torch.rand(n, generator=g) < self.blur_p
        sigma = self._uniform(n, *self.blur_sigma, g)

        x = images.permute(0, 3, 1, 2).float().div(255)
        for step in range(4):
            for op_index, op in enumerate(_JITTER_OPS):
                sel = (order[:, step] == op_index) & apply
                if sel.any():
                    idx = sel.nonzero().squeeze(1).to(dev)
                    x[idx] = op(x[idx], params[op_index][sel].to(x))
        if gray.any():
            idx = gray.nonzero().squeeze(1).to(dev)
            x[idx] = _gray(x[idx]).expand(-1, 3, -1, -1)
        if blur.any():
            idx = blur.nonzero().squeeze(1).to(dev)
            x[idx] = _blur(x[idx], sigma[blur].to(x), self.kernel)
        return x.mul(255).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()

    def views(
        self, images: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Two independent photometric views of the same batch."""
        return self(images, generator), self(images, generator)
