"""PaDiM (Defard et al., ICPR 2021): a Gaussian per grid position, Mahalanobis distance."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from pretrain.detectors.base import Detector, DetectorConfig, check_levels, finest_grid
from pretrain.detectors.components import ledoit_wolf


def _column_major(matrices: Tensor) -> Tensor:
    """[P,d,d] with each matrix stored column-major (a no-op copy-free view if it is)."""
    return matrices.mT.contiguous().mT


class PaDiMConfig(DetectorConfig):
    """PaDiM settings: channels kept (random subset), covariance regulariser, subset seed."""

    method: Literal["padim"] = "padim"
    n_channels: int = Field(100, ge=1)
    eps: float = Field(0.01, ge=0.0)
    seed: int = 0


class PaDiM(Detector[PaDiMConfig]):
    """PaDiM with Ledoit-Wolf covariances.

    Levels are nearest-upsampled to the finest grid and concatenated; a fixed random subset of
    ``n_channels`` channels is kept (seeded, as in the paper's random dimensionality reduction).
    Per position the covariance is the Ledoit-Wolf shrunk estimate plus ``eps * I`` (the
    paper's 0.01 I). The shrinkage intensity is estimated from the K normal images alone; it is
    exactly 0 for K = 2 (two samples are symmetric about their mean, so the estimator sees no
    sampling variance), where ``eps * I`` alone keeps the rank-1 covariance invertible; from
    K = 3 on it pulls the few-sample covariance towards a scaled identity. Token score:
    Mahalanobis distance to the position's Gaussian.

    Buffers: ``channel_idx`` [d], ``mean`` [P,d], ``precision`` [P,d,d], ``grid`` (h, w),
    ``shrinkage`` [P] (P = h*w positions).
    """

    name = "padim"
    config_class = PaDiMConfig

    def __init__(self, config: PaDiMConfig | None = None, **options: Any) -> None:
        super().__init__(config, **options)
        self.register_buffer("channel_idx", torch.empty(0, dtype=torch.int64))
        self.register_buffer("mean", torch.empty(0, dtype=torch.float32))
        self.register_buffer("precision", torch.empty(0, dtype=torch.float32))
        self.register_buffer("grid", torch.empty(0, dtype=torch.int64))
        self.register_buffer("shrinkage", torch.empty(0, dtype=torch.float32))

    def embed(self, features: Sequence[Tensor]) -> Tensor:
        """[B, d, h, w] at the finest grid, channel subset applied."""
        levels = check_levels(features, "PaDiM")
        grid = finest_grid(levels)
        ups = [
            f if tuple(f.shape[-2:]) == grid else F.interpolate(f, size=grid, mode="nearest")
            for f in levels
        ]
        x = torch.cat(ups, dim=1)
        if self.channel_idx.numel() == 0:
            total = x.shape[1]
            g = torch.Generator().manual_seed(self.config.seed)
            k = min(self.config.n_channels, total)
            self.channel_idx = torch.randperm(total, generator=g)[:k].sort().values
        if int(self.channel_idx.max()) >= x.shape[1]:
            raise ValueError(
                f"PaDiM: features have {x.shape[1]} channels, fitted on more "
                f"(max index {int(self.channel_idx.max())})"
            )
        return x[:, self.channel_idx.to(x.device)]

    def fit(self, features: Sequence[Tensor]) -> None:
        x = self.embed(features)  # [N,d,h,w]
        n, d, h, w = x.shape
        samples = x.permute(2, 3, 0, 1).reshape(h * w, n, d)
        mean, cov, shrink = ledoit_wolf(samples)
        cov = cov + self.config.eps * torch.eye(d, dtype=cov.dtype)
        self.grid = torch.tensor([h, w], dtype=torch.int64)
        self.mean = mean.float()
        # column-major matrices (LAPACK's layout, what linalg.inv returns on the CPU), fixed
        # here and on load: einsum sums in a layout-dependent order, and a loaded detector
        # must score bit-identically to the fitted one
        self.precision = _column_major(torch.linalg.inv(cov).float())
        self.shrinkage = shrink.float()

    def forward(self, features: Sequence[Tensor], batch: int = 16) -> list[Tensor]:
        self._require_fitted()
        x = self.embed(features)
        b, d, h, w = x.shape
        fitted_grid = tuple(int(v) for v in self.grid)
        if (h, w) != fitted_grid:
            raise ValueError(f"PaDiM: feature grid {(h, w)} differs from the fitted {fitted_grid}")
        mean, precision = self.mean.to(x.device), self.precision.to(x.device)
        out = []
        for start in range(0, b, batch):
            diff = x[start : start + batch].permute(0, 2, 3, 1).reshape(-1, h * w, d) - mean
            m = torch.einsum("bpd,pde,bpe->bp", diff, precision, diff)
            out.append(m.clamp(min=0.0).sqrt().reshape(-1, h, w))
        return [torch.cat(out, dim=0)]

    def _empty_buffer(
        self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
    ) -> Tensor:
        empty = super()._empty_buffer(name, shape, dtype, device)
        return _column_major(empty) if name == "precision" and len(shape) == 3 else empty

    def info(self) -> dict[str, Any]:
        return {
            "channels": int(self.channel_idx.numel()),
            "mean_shrinkage": float(self.shrinkage.mean()),
        }
