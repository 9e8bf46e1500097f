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

from pretrain.detectors.base import Detector, DetectorConfig, finest_grid
from pretrain.detectors.components import DEFAULT_SIGMA, image_scores
from pretrain.detectors.ensemble import Ensemble, combine_maps, member_scales
from pretrain.detectors.patchcore import PatchCore
from pretrain.detectors.registry import make_detector

#: at full shot, ensembles calibrate on this many evenly spaced references: the t bound hardly
#: moves beyond it (t(0.99): 2.39 at 63 degrees of freedom, 2.35 at 208), the cost grows as K^2
CALIBRATION_MAX_IMAGES = 64


def calibration_subset(k: int, limit: int | None = None) -> list[int]:
    """Indices of the references scored leave-one-out: all K, or ``limit`` evenly spaced
    (default ``CALIBRATION_MAX_IMAGES``)."""
    limit = CALIBRATION_MAX_IMAGES if limit is None else limit
    if k <= limit:
        return list(range(k))
    return sorted({round(i * (k - 1) / (limit - 1)) for i in range(limit)})


def leave_one_out_scores(
    config: DetectorConfig,
    features: Sequence[Tensor],
    image_size: int | Sequence[int],
    sigma: float = DEFAULT_SIGMA,
    fitted: Detector | None = None,
) -> Tensor:
    """Image scores [K] of K normal images (features per level [K,C,h,w]), each image scored
    by a detector of ``config`` fitted on the other K-1 (see :func:`leave_one_out_maps`)."""
    return image_scores(leave_one_out_maps(config, features, image_size, sigma, fitted))


def leave_one_out_maps(
    config: DetectorConfig,
    features: Sequence[Tensor],
    image_size: int | Sequence[int],
    sigma: float = DEFAULT_SIGMA,
    fitted: Detector | None = None,
    images: Sequence[int] | None = None,
) -> Tensor:
    """Anomaly maps [K,S,S] of K normal images, each image scored by a detector of ``config``
    fitted on the other K-1 (a detector without fitted state scores all K in one batch);
    ``images``: only these of the K are scored (each still against all the others).

    PatchCore above its coreset threshold is the exception: refitting would run K greedy
    coresets (minutes each at full shot), so one bank fitted on all K images (``fitted``, or
    fitted here) is reused with the rows that came from image i removed: the leave-one-out of
    the coreset, not the coreset of the leave-one-out (docs/ONBOARDING.md). Below the
    threshold no coreset is involved and the refit is exact.
    """
    k = int(features[0].shape[0])
    if k < 2:
        raise ValueError(f"leave-one-out scoring needs at least 2 images, got {k}")
    chosen = list(range(k)) if images is None else list(images)
    with torch.inference_mode():
        probe = make_detector(config)
        if isinstance(probe, Ensemble):
            raise ValueError("leave-one-out maps of an ensemble: use fit_ensemble")
        if not list(probe.buffers()):  # nothing to fit: the others change nothing
            probe.fit(features)
            return probe.anomaly_maps([f[chosen] for f in features], image_size, sigma)
        if isinstance(probe, PatchCore):
            grid = finest_grid(features[-probe.config.n_levels :])
            per_image = grid[0] * grid[1]
            if (k - 1) * per_image > probe.config.coreset_threshold:
                return _patchcore_shared_bank(
                    fitted, probe, features, image_size, sigma, per_image, chosen
                )
        maps = []
        for i in chosen:
            detector = make_detector(config)
            detector.fit([torch.cat([f[:i], f[i + 1 :]]) for f in features])
            held_out = [f[i : i + 1] for f in features]
            maps.append(detector.anomaly_maps(held_out, image_size, sigma))
    return torch.cat(maps)


def _patchcore_shared_bank(
    fitted: Detector | None,
    probe: PatchCore,
    features: Sequence[Tensor],
    image_size: int | Sequence[int],
    sigma: float,
    per_image: int,
    chosen: Sequence[int],
) -> Tensor:
    if not isinstance(fitted, PatchCore) or getattr(fitted, "selected", None) is None:
        fitted = probe
        fitted.fit(features)
    selected = fitted.selected if fitted.selected is not None else torch.arange(len(fitted.memory))
    source = selected // per_image
    maps = []
    for i in chosen:
        rest = PatchCore(fitted.config)
        rest.memory = fitted.memory[source != i]
        rest.n_patches_seen = fitted.n_patches_seen
        held_out = [f[i : i + 1] for f in features]
        maps.append(rest.anomaly_maps(held_out, image_size, sigma))
    return torch.cat(maps)


def fit_ensemble(
    ensemble: Ensemble,
    features: Sequence[Tensor],
    image_size: int | Sequence[int],
    sigma: float = DEFAULT_SIGMA,
) -> Tensor:
    """Fit the members on the K references' flat feature list (leave-one-out features, as
    for one detector), set each member's scale from its leave-one-out image scores, and return
    the ensemble's own leave-one-out image scores [K] (what the threshold is calibrated on);
    above ``CALIBRATION_MAX_IMAGES`` references, of that many evenly spaced ones."""
    ensemble.fit(features)
    chosen = calibration_subset(int(features[0].shape[0]))
    member_maps = [
        leave_one_out_maps(
            spec.detector, ensemble.member_features(features, i), image_size, sigma, member, chosen
        )
        for i, (spec, member) in enumerate(
            zip(ensemble.config.members, ensemble.members, strict=True)
        )
    ]
    scales = member_scales(member_maps)
    ensemble.set_scales(scales)
    return image_scores(combine_maps(member_maps, scales))
