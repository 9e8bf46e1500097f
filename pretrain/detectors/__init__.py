"""Downstream anomaly detectors on per-level feature maps: FeatureNorm, PatchCore, PaDiM.

Each is an ``nn.Module`` with a typed config and its fitted state in registered buffers
(``state_dict()`` is what a product record stores); the parts they share are in
``components``. Evaluation and serving both use these, and nothing here knows where the
features came from (raw backbone levels, residuals, or projected residuals).
"""

from pretrain.detectors.base import Detector, DetectorConfig, NotFittedError
from pretrain.detectors.components import anomaly_map, gaussian_blur, image_scores
from pretrain.detectors.ensemble import (
    Ensemble,
    EnsembleConfig,
    EnsembleMember,
    MemberScale,
    flat_features,
    preset_config,
)
from pretrain.detectors.featurenorm import FeatureNorm, FeatureNormConfig
from pretrain.detectors.leave_one_out import (
    fit_ensemble,
    leave_one_out_maps,
    leave_one_out_scores,
)
from pretrain.detectors.padim import PaDiM, PaDiMConfig
from pretrain.detectors.patchcore import PatchCore, PatchCoreConfig
from pretrain.detectors.registry import (
    DETECTORS,
    FEATURE_KINDS,
    METHODS,
    AnyDetectorConfig,
    UnsupportedCombinationError,
    check_supported,
    detector_config,
    load_detector,
    make_detector,
    parse_config,
)

__all__ = [
    "DETECTORS",
    "FEATURE_KINDS",
    "METHODS",
    "AnyDetectorConfig",
    "Ensemble",
    "EnsembleConfig",
    "EnsembleMember",
    "MemberScale",
    "flat_features",
    "preset_config",
    "fit_ensemble",
    "Detector",
    "DetectorConfig",
    "FeatureNorm",
    "FeatureNormConfig",
    "NotFittedError",
    "PaDiM",
    "PaDiMConfig",
    "PatchCore",
    "PatchCoreConfig",
    "UnsupportedCombinationError",
    "anomaly_map",
    "check_supported",
    "detector_config",
    "gaussian_blur",
    "image_scores",
    "leave_one_out_maps",
    "leave_one_out_scores",
    "load_detector",
    "make_detector",
    "parse_config",
]
