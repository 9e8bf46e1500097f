"""Photometric augmentation: two views of one image that share its geometry (and so its mask).

ColorJitter(0.4, 0.4, 0.4, 0.1) with p=0.8, RandomGrayscale p=0.2, GaussianBlur sigma 0.1-2
with p=0.5 (method spec section 5). No crop, flip or rotation: the pixel mask stays valid.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torchvision.transforms import v2

__all__ = ["PhotometricAugment", "blur_kernel_size"]


def blur_kernel_size(image_size: int) -> int:
    """Odd Gaussian kernel of about 10 % of the image side (23 px at 224), at least 3."""
    k = max(3, int(round(image_size * 0.1)))
    return k if k % 2 else k + 1


class PhotometricAugment:
    """Callable: uint8 HxWx3 numpy (or [H,W,3] tensor) -> augmented uint8 [H,W,3] tensor."""

    def __init__(
        self,
        image_size: int,
        jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1),
        jitter_p: float = 0.8,
        grayscale_p: float = 0.2,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        blur_p: float = 0.5,
    ):
        self.transform = v2.Compose(
            [
                v2.RandomApply([v2.ColorJitter(*jitter)], p=jitter_p),
                v2.RandomGrayscale(p=grayscale_p),
                v2.RandomApply(
                    [v2.GaussianBlur(blur_kernel_size(image_size), sigma=blur_sigma)], p=blur_p
                ),
            ]
        )

    def __call__(self, image: np.ndarray | Tensor) -> Tensor:
        if isinstance(image, np.ndarray):
            if not (image.flags.writeable and image.flags.c_contiguous):
                image = np.array(image, copy=True, order="C")
            image = torch.from_numpy(image)
        x = image
        if x.dtype != torch.uint8 or x.dim() != 3 or x.shape[-1] != 3:
            raise ValueError(f"expected a uint8 HxWx3 image, got {x.dtype} {tuple(x.shape)}")
        return self.transform(x.permute(2, 0, 1)).permute(1, 2, 0).contiguous()

    def views(self, image: np.ndarray | Tensor) -> tuple[Tensor, Tensor]:
        """Two independent photometric views of the same image."""
        return self(image), self(image)
