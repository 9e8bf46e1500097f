"""PatchCore (Roth et al., CVPR 2022): nearest-neighbour distance to a memory bank of patches."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from pretrain.detectors.base import Detector, DetectorConfig, check_levels, finest_grid
from pretrain.detectors.components import blocked_coreset, greedy_coreset, nearest_distances


class PatchCoreConfig(DetectorConfig):
    """PatchCore settings; ``embed_dim`` / ``target_dim`` None = resolved from the features by
    ``fit`` (the widest level), after which the detector's config carries the numbers."""

    method: Literal["patchcore"] = "patchcore"
    n_levels: int = Field(3, ge=1)
    neighbourhood: int = Field(3, ge=1)
    embed_dim: int | None = Field(None, ge=1)
    target_dim: int | None = Field(None, ge=1)
    coreset_ratio: float = Field(0.1, gt=0.0, le=1.0)
    coreset_threshold: int = Field(10_000, ge=1)
    project_dim: int = Field(128, ge=0)
    seed: int = 0
    #: "pool": channels pooled to a common width per level, then together (reference
    #: implementation); "concat": levels concatenated as they are (anomalib 2.x)
    aggregation: Literal["pool", "concat"] = "pool"
    #: the 3x3 average counts the zero padding at the border (torch's AvgPool2d default, as
    #: anomalib): border patches shrink toward zero in references and frames alike
    pool_include_pad: bool = False
    #: 0: a patch matches any bank patch; r > 0: only bank patches within r grid cells of its
    #: own position (Chebyshev), as PaDiM's per-position statistics (aligned products; the
    #: whole bank is kept, so the bank must stay below ``coreset_threshold``)
    position_window: int = Field(0, ge=0)
    #: 0: one greedy coreset over every patch (reference PatchCore); n > 0: greedy coresets
    #: within consecutive blocks of whole images of about n patches each, ``coreset_ratio``
    #: of each block (full-shot onboarding in seconds, ``components.blocked_coreset``)
    coreset_block: int = Field(0, ge=0)


class PatchCore(Detector[PatchCoreConfig]):
    """PatchCore on the last ``n_levels`` feature levels.

    Embedding: 3x3 neighbourhood average per level; levels bilinearly upsampled to the finest
    grid among them; each level's channels adaptive-average-pooled to a common width
    ``embed_dim`` (default: the widest level), then the levels pooled together to
    ``target_dim`` (default: embed_dim), as in the reference implementation's aggregator.
    With ``aggregation="concat"`` the upsampled levels are concatenated channel-wise instead
    (anomalib 2.x's ``generate_embedding``: every channel weighs the same, no pooling).
    Memory bank (buffer ``memory`` [M, target_dim]): every patch of the fitted images while
    there are at most ``coreset_threshold`` of them (few-shot: all K images' patches), else a
    greedy coreset of ``coreset_ratio`` (random projection to ``project_dim`` for selection).
    Token score: L2 distance to the nearest bank patch.
    """

    name = "patchcore"
    config_class = PatchCoreConfig

    def __init__(self, config: PatchCoreConfig | None = None, **options: Any) -> None:
        super().__init__(config, **options)
        self.register_buffer("memory", torch.empty(0, dtype=torch.float32))
        self.register_buffer("n_patches_seen", torch.tensor(0, dtype=torch.int64))

    def embed(self, features: Sequence[Tensor]) -> tuple[Tensor, tuple[int, int]]:
        """Patch embeddings [B*h*w, target_dim] and the grid (h, w)."""
        cfg = self.config
        levels = check_levels(features, "PatchCore")[-cfg.n_levels :]
        if cfg.aggregation == "concat" and (cfg.embed_dim is None or cfg.target_dim is None):
            width = sum(f.shape[1] for f in levels)
            cfg = self.config = cfg.model_copy(update={"embed_dim": width, "target_dim": width})
        if cfg.embed_dim is None or cfg.target_dim is None:
            embed_dim = cfg.embed_dim or max(f.shape[1] for f in levels)
            cfg = self.config = cfg.model_copy(
                update={"embed_dim": embed_dim, "target_dim": cfg.target_dim or embed_dim}
            )
        grid = finest_grid(levels)
        p = cfg.neighbourhood
        b = levels[0].shape[0]
        parts = []
        for f in levels:
            if p > 1:
                f = F.avg_pool2d(
                    f, p, stride=1, padding=p // 2, count_include_pad=cfg.pool_include_pad
                )
            if tuple(f.shape[-2:]) != grid:
                f = F.interpolate(f, size=grid, mode="bilinear", align_corners=False)
            tokens = f.permute(0, 2, 3, 1).reshape(-1, 1, f.shape[1])
            if cfg.aggregation == "concat":
                parts.append(tokens)
                continue
            parts.append(F.adaptive_avg_pool1d(tokens, cfg.embed_dim))  # [BHW,1,D]
        if cfg.aggregation == "concat":
            width = sum(t.shape[-1] for t in parts)
            if width != cfg.target_dim:
                raise ValueError(f"PatchCore: concatenated width {width} != {cfg.target_dim}")
            return torch.cat(parts, dim=2).reshape(-1, cfg.target_dim).contiguous(), grid
        stacked = torch.cat(parts, dim=1).reshape(b * grid[0] * grid[1], 1, -1)
        emb = F.adaptive_avg_pool1d(stacked, cfg.target_dim).squeeze(1)
        return emb.contiguous(), grid

    def fit(self, features: Sequence[Tensor]) -> None:
        emb, grid = self.embed(features)
        seen = emb.shape[0]
        # rows of the fitted embedding the bank keeps (None: all); not part of the state
        self.selected: Tensor | None = None
        if seen > self.config.coreset_threshold:
            if self.config.position_window:
                raise ValueError(
                    f"PatchCore: position-aware matching needs the whole bank, but {seen} "
                    f"patches exceed coreset_threshold {self.config.coreset_threshold}"
                )
            cfg = self.config
            if cfg.coreset_block:
                per_image = grid[0] * grid[1]
                block = math.ceil(cfg.coreset_block / per_image) * per_image
                idx = blocked_coreset(emb, cfg.coreset_ratio, block, cfg.project_dim, cfg.seed)
            else:
                n_select = max(1, int(math.ceil(cfg.coreset_ratio * seen)))
                idx = greedy_coreset(emb, n_select, cfg.project_dim, cfg.seed)
            self.selected = idx
            emb = emb[idx]
        self.memory = emb.contiguous()
        self.n_patches_seen = torch.tensor(seen, dtype=torch.int64)

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        self._require_fitted()
        if self.config.target_dim is not None and self.memory.shape[-1] != self.config.target_dim:
            raise ValueError(
                f"PatchCore: memory width {self.memory.shape[-1]} != target_dim "
                f"{self.config.target_dim}"
            )
        emb, grid = self.embed(features)
        if self.config.position_window:
            d = self._local_distances(emb, grid)
        else:
            d = nearest_distances(emb, self.memory.to(emb.device))
        return [d.reshape(-1, grid[0], grid[1])]

    def _local_distances(self, emb: Tensor, grid: tuple[int, int]) -> Tensor:
        """Nearest distance of each patch to bank patches within the position window."""
        hw = grid[0] * grid[1]
        bank = self.memory.to(emb.device).float()
        if bank.shape[0] % hw:
            raise ValueError(f"PatchCore: bank of {bank.shape[0]} rows is not on a {grid} grid")
        k = bank.shape[0] // hw
        ys, xs = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
        ys, xs = ys.flatten(), xs.flatten()
        r = self.config.position_window
        near = ((ys[:, None] - ys[None]).abs() <= r) & ((xs[:, None] - xs[None]).abs() <= r)
        far = (~near).to(emb.device)  # [hw query, hw bank]
        b_sq = (bank * bank).sum(1).view(k, hw)
        out = []
        for q in emb.float().view(-1, hw, emb.shape[1]):
            d2 = (q * q).sum(1)[:, None, None] - 2.0 * (q @ bank.t()).view(hw, k, hw) + b_sq
            d2.masked_fill_(far[:, None, :], float("inf"))
            out.append(d2.flatten(1).amin(1))
        return torch.cat(out).clamp_(min=0.0).sqrt_()

    def info(self) -> dict[str, Any]:
        return {"bank_size": int(self.memory.shape[0]), "patches_seen": int(self.n_patches_seen)}
