"""Scores of normal images that were not seen by the detector that scores them.

Used to calibrate a threshold from the K shots alone (inference/onboarding.py): each shot is
scored by a detector fitted on the other K-1. The features given should already be
leave-one-out features (``pretrain.residual.leave_one_out_residuals``), so that no shot was
matched against itself in the residual step either.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from pretrain.detectors.base import DetectorConfig
from pretrain.detectors.components import DEFAULT_SIGMA, image_scores
from pretrain.detectors.registry import make_detector


def leave_one_out_scores(
    config: DetectorConfig,
    features: Sequence[Tensor],
    image_size: int | Sequence[int],
    sigma: float = DEFAULT_SIGMA,
) -> Tensor:
    """Image scores [K] of K normal images (features per level [K,C,h,w]), each image scored
    by a detector of ``config`` fitted on the other K-1 (a detector without fitted state
    scores all K in one batch)."""
    k = int(features[0].shape[0])
    if k < 2:
        raise ValueError(f"leave-one-out scoring needs at least 2 images, got {k}")
    with torch.inference_mode():
        probe = make_detector(config)
        if not list(probe.buffers()):  # nothing to fit: the others change nothing
            probe.fit(features)
            return image_scores(probe.anomaly_maps(features, image_size, sigma))
        scores = torch.empty(k, dtype=torch.float32)
        for i in range(k):
            detector = make_detector(config)
            detector.fit([torch.cat([f[:i], f[i + 1 :]]) for f in features])
            held_out = [f[i : i + 1] for f in features]
            scores[i] = image_scores(detector.anomaly_maps(held_out, image_size, sigma))[0]
    return scores
