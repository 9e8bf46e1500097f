"""The engine interface: projected features for a batch of images of one product.

An engine turns uint8 images that are already resized to ``image_size`` into the projected
residual features per level (backbone -> residual against the record's K-shot pool ->
projector). Engines: :class:`inference.engines.local.LocalEngine` (in-process torch) and
``inference.engines.triton.TritonEngine`` (a Triton server over gRPC).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from inference.records import ProductRecord


class InvalidImageError(ValueError):
    """An image (or batch) of the wrong type, shape or size; the message says which one."""


@runtime_checkable
class Engine(Protocol):
    model_id: str
    image_size: int

    def features(self, images: np.ndarray, record: ProductRecord) -> list[np.ndarray]:
        """uint8 [B,S,S,3] (S = image_size) -> projected features per level [B,C,h,w]."""
        ...


def check_batch(images: np.ndarray, image_size: int) -> np.ndarray:
    """Return ``images`` if it is a uint8 [B,S,S,3] batch with S = image_size, else raise."""
    if not isinstance(images, np.ndarray):
        raise InvalidImageError(f"expected a numpy uint8 batch, got {type(images).__name__}")
    if images.dtype != np.uint8:
        raise InvalidImageError(f"expected uint8 images, got {images.dtype}")
    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[0] == 0:
        raise InvalidImageError(f"expected a [B,S,S,3] batch, got shape {images.shape}")
    if images.shape[1:3] != (image_size, image_size):
        raise InvalidImageError(
            f"images are {images.shape[2]}x{images.shape[1]}, this engine takes "
            f"{image_size}x{image_size} (resize first; the Scorer does)"
        )
    return images
