"""What every detector shares: the typed config, the ``nn.Module`` base, input checks.

A detector is an ``nn.Module`` whose fitted state lives in registered buffers, so
``state_dict()`` is all there is to store, and ``load_state_dict()`` on a detector built from
the same config gives the same scores::

    det = PatchCore(PatchCoreConfig())
    det.fit(features)                  # features: list over levels of [N,C,h,w] normal images
    level_maps = det(features)         # list of [B,h',w'] raw token score maps (= det.score)
    maps = det.anomaly_maps(features, image_size)  # [B,S,S]: components.anomaly_map
    again = PatchCore(det.config)      # the config as resolved by fit (e.g. embed_dim)
    again.load_state_dict(det.state_dict())        # same scores as det

Buffers start empty (shape [0]) and take the stored shape on load. Everything is plain torch,
batched and deterministic (fixed seeds for random projections and channel subsets).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

from pretrain.detectors.components import DEFAULT_SIGMA, anomaly_map


class DetectorConfig(BaseModel):
    """Settings of one detector; subclasses add ``method`` (the discriminator) and fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")


ConfigT = TypeVar("ConfigT", bound=DetectorConfig)


class NotFittedError(RuntimeError):
    """A detector with state was asked to score before ``fit`` or ``load_state_dict``."""


def check_levels(features: Sequence[Tensor], what: str) -> list[Tensor]:
    """Feature levels as float tensors [N,C,h,w] with one batch size, else ``ValueError``."""
    if len(features) == 0:
        raise ValueError(f"{what}: no feature levels given")
    out = []
    for f in features:
        if not isinstance(f, Tensor):
            f = torch.as_tensor(np.asarray(f))
        if f.ndim != 4:
            raise ValueError(f"{what}: each level must be [N,C,h,w], got {tuple(f.shape)}")
        out.append(f.float())
    n = out[0].shape[0]
    if any(f.shape[0] != n for f in out):
        raise ValueError(f"{what}: levels disagree on the batch size")
    return out


def finest_grid(levels: Sequence[Tensor]) -> tuple[int, int]:
    """The (h, w) of the level with the most positions."""
    return max((tuple(f.shape[-2:]) for f in levels), key=lambda s: s[0] * s[1])


class Detector(nn.Module, Generic[ConfigT]):
    """Base of the detectors: ``fit`` on normal features, ``forward`` / ``score`` token maps."""

    name: ClassVar[str] = ""
    config_class: ClassVar[type[DetectorConfig]]

    def __init__(self, config: ConfigT | None = None, **options: Any) -> None:
        """From a config, or from its settings as keywords (``PatchCore(n_levels=2)``)."""
        super().__init__()
        if config is not None and options:
            raise TypeError("give a config or keyword settings, not both")
        if config is None:
            config = self.config_class(**options)  # type: ignore[assignment]
        self.config: ConfigT = config  # type: ignore[assignment]
        if not isinstance(self.config, self.config_class):
            want, got = self.config_class.__name__, type(self.config).__name__
            raise TypeError(f"{type(self).__name__} needs a {want}, got {got}")

    # ------------------------------------------------------------------ the detector API

    def fit(self, features: Sequence[Tensor]) -> None:  # pragma: no cover - interface
        """Learn the normal state from features of normal images (list over levels)."""
        raise NotImplementedError

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:  # pragma: no cover
        """Raw token score maps, one [B,h,w] per output level."""
        raise NotImplementedError

    @property
    def fitted(self) -> bool:
        """True when every buffer holds fitted state (stateless detectors: always)."""
        return all(b.numel() > 0 for b in self.buffers())

    def score(self, features: Sequence[Tensor]) -> list[Tensor]:
        """Raw token score maps (the same as calling the module)."""
        return self(features)

    def anomaly_maps(
        self,
        features: Sequence[Tensor],
        image_size: int | Sequence[int],
        sigma: float = DEFAULT_SIGMA,
    ) -> Tensor:
        """Final smoothed maps [B,S,S] (bilinear upsampling, level mean, Gaussian)."""
        return anomaly_map(self(features), image_size, sigma)

    def info(self) -> dict[str, Any]:
        """Facts about the fitted state worth reporting (bank size, ...); none by default."""
        return {}

    def _require_fitted(self) -> None:
        if not self.fitted:
            raise NotFittedError(
                f"{type(self).__name__}.score called before fit (or load_state_dict)"
            )

    # ------------------------------------------------------------------------- loading

    def _empty_buffer(
        self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
    ) -> Tensor:
        """Storage for buffer ``name`` about to be loaded (row-major unless overridden)."""
        return torch.empty(shape, dtype=dtype, device=device)

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # Fitted buffers have data-dependent shapes: take the stored shape (keeping the
        # buffer's dtype) so that loading into a fresh, empty detector works.
        for name, buffer in self._buffers.items():
            stored = state_dict.get(prefix + name)
            if buffer is not None and stored is not None and buffer.shape != stored.shape:
                self._buffers[name] = self._empty_buffer(
                    name, tuple(stored.shape), buffer.dtype, buffer.device
                )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
