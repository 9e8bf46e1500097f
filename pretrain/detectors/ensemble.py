"""Detectors combined after normalising each by its leave-one-out normal scores.

Each member's maps are turned into z-scores with the mean and standard deviation of that
member's leave-one-out image scores on the K references (``leave_one_out_maps``: every
reference scored by the member fitted on the other K-1), so members whose raw scales differ by
orders of magnitude weigh the same; the combined map is the mean of the members' z-maps and the
image score its maximum, as for a single detector. No defective image is involved.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from pretrain.detectors.components import image_scores

#: floor of a member's spread, relative to its mean (K nearly equal LOO scores)
MIN_RELATIVE_STD = 1e-3


@dataclass(frozen=True)
class MemberScale:
    """Location and spread of one member's normal image scores."""

    mean: float
    std: float

    @classmethod
    def from_loo(cls, loo_scores: Tensor) -> MemberScale:
        """From the member's leave-one-out image scores of the K references (K >= 2)."""
        s = loo_scores.double().flatten()
        if s.numel() < 2:
            raise ValueError(f"a member scale needs >= 2 leave-one-out scores, got {s.numel()}")
        mean = float(s.mean())
        std = max(float(s.std(unbiased=True)), MIN_RELATIVE_STD * abs(mean), 1e-12)
        return cls(mean, std)

    def apply(self, maps: Tensor) -> Tensor:
        return (maps - self.mean) / self.std


def combine_maps(member_maps: Sequence[Tensor], scales: Sequence[MemberScale]) -> Tensor:
    """Mean of the members' normalised maps [B,S,S]."""
    if not member_maps or len(member_maps) != len(scales):
        raise ValueError(f"{len(member_maps)} member maps for {len(scales)} scales")
    shape = member_maps[0].shape
    if any(m.shape != shape for m in member_maps):
        raise ValueError(f"member maps disagree in shape: {[tuple(m.shape) for m in member_maps]}")
    acc = torch.zeros(shape, dtype=torch.float32)
    for maps, scale in zip(member_maps, scales, strict=True):
        acc += scale.apply(maps.float())
    return acc / len(member_maps)


def ensemble_scores(
    member_maps: Sequence[Tensor], member_loo_maps: Sequence[Tensor]
) -> tuple[Tensor, Tensor, Tensor]:
    """Combined test maps, their image scores, and the combined references' leave-one-out
    image scores (what calibration uses), each member scaled by its own LOO image scores."""
    scales = [MemberScale.from_loo(image_scores(m)) for m in member_loo_maps]
    maps = combine_maps(member_maps, scales)
    loo = combine_maps(member_loo_maps, scales)
    return maps, image_scores(maps), image_scores(loo)
