"""FeatureNorm: the training-free ADPretrain detector (docs/METHOD.md section 6)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from pretrain.detectors.base import Detector, DetectorConfig, check_levels


class FeatureNormConfig(DetectorConfig):
    """FeatureNorm has no settings."""

    method: Literal["featurenorm"] = "featurenorm"


def feature_norm_score(e: Tensor) -> Tensor:
    """a(e) = sqrt(||e||_2 + 1) - 1 over channels: [B,C,h,w] -> [B,h,w]."""
    return torch.sqrt(torch.linalg.vector_norm(e.float(), dim=1) + 1.0) - 1.0


class FeatureNorm(Detector[FeatureNormConfig]):
    """The token score is the norm-based a(e) of each (projected) feature; nothing is fitted."""

    name = "featurenorm"
    config_class = FeatureNormConfig

    def fit(self, features: Sequence[Tensor]) -> None:
        check_levels(features, "FeatureNorm.fit")  # stateless: nothing to learn

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        return [feature_norm_score(f) for f in check_levels(features, "FeatureNorm.score")]
