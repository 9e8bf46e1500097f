"""Evaluation of anomaly representations: downstream detectors, metrics, reports, eval/bench.

- ``postprocess``: token scores -> anomaly maps (bilinear, level mean, Gaussian sigma 4) -> max.
- ``detectors``: FeatureNorm, PatchCore, PaDiM with one fit/score/state API (used by serving).
- ``metrics``: image/pixel AUROC and AP, F1-max, AUPRO (MVTec definition).
- ``runner``: ``adqc eval``; ``bench``: ``adqc bench accuracy``; ``report``: HTML reports.

Importing this package pulls in torch and numpy only (no model code, no servers).
"""

from pretrain.evaluation.detectors import (
    DETECTORS,
    Detector,
    FeatureNorm,
    PaDiM,
    PatchCore,
    UnsupportedCombinationError,
    check_supported,
    make_detector,
)
from pretrain.evaluation.postprocess import anomaly_map, gaussian_blur, image_scores

__all__ = [
    "DETECTORS",
    "Detector",
    "FeatureNorm",
    "PaDiM",
    "PatchCore",
    "UnsupportedCombinationError",
    "anomaly_map",
    "check_supported",
    "gaussian_blur",
    "image_scores",
    "make_detector",
]
