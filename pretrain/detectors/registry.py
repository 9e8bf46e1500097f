"""Detectors by name and by config: the typed config union, construction, loading."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import numpy as np
import torch
from pydantic import Field, TypeAdapter

from pretrain.detectors.base import Detector, DetectorConfig
from pretrain.detectors.ensemble import Ensemble, EnsembleConfig
from pretrain.detectors.featurenorm import FeatureNorm, FeatureNormConfig
from pretrain.detectors.padim import PaDiM, PaDiMConfig
from pretrain.detectors.patchcore import PatchCore, PatchCoreConfig

METHODS = ("featurenorm", "patchcore", "padim")
FEATURE_KINDS = ("raw", "residual", "adpretrain")

DETECTORS: dict[str, type[Detector]] = {
    FeatureNorm.name: FeatureNorm,
    PatchCore.name: PatchCore,
    PaDiM.name: PaDiM,
    Ensemble.name: Ensemble,
}

#: any detector's config, told apart by its ``method`` field (what a product record stores)
AnyDetectorConfig = Annotated[
    FeatureNormConfig | PatchCoreConfig | PaDiMConfig | EnsembleConfig,
    Field(discriminator="method"),
]
_CONFIG = TypeAdapter(AnyDetectorConfig)


class UnsupportedCombinationError(ValueError):
    """A detector that is meaningless on the given kind of features."""


def _unknown(method: object) -> ValueError:
    return ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")


def check_supported(method: str, features: str) -> None:
    """Refuse FeatureNorm on raw backbone features (the norm of an ImageNet feature is not an
    anomaly score: it measures contrast/texture energy, not deviation from the normal class).
    """
    if method not in METHODS:
        raise _unknown(method)
    if features not in FEATURE_KINDS:
        raise ValueError(f"unknown features {features!r}; choose one of {', '.join(FEATURE_KINDS)}")
    if method == "featurenorm" and features == "raw":
        raise UnsupportedCombinationError(
            "FeatureNorm scores a token by its norm a(e) = sqrt(||e|| + 1) - 1, which is an "
            "anomaly score only for features trained to make normal tokens small (the "
            "ADPretrain projector) or for residuals against normal references. Raw backbone "
            "features carry no such meaning (their norm tracks texture and contrast), so "
            "'--features raw --detector featurenorm' is refused: use --features adpretrain "
            "(or the 'residual' ablation), or a memory-based method (patchcore, padim) for "
            "the raw baseline."
        )


def detector_config(method: str, **options: Any) -> DetectorConfig:
    """The validated config of detector ``method`` with these settings (pydantic errors name
    a wrong setting)."""
    if method not in DETECTORS:
        raise _unknown(method)
    return _CONFIG.validate_python({"method": method, **options})


def parse_config(data: Mapping[str, Any]) -> DetectorConfig:
    """A config from its JSON form (``config.model_dump(mode="json")``)."""
    return _CONFIG.validate_python(dict(data))


def make_detector(method: str | DetectorConfig, **options: Any) -> Detector:
    """An unfitted detector from a name (+ settings) or from a config."""
    config = method if isinstance(method, DetectorConfig) else detector_config(method, **options)
    return DETECTORS[config.method](config)  # type: ignore[attr-defined]


def load_detector(
    config: DetectorConfig, state: Mapping[str, np.ndarray | torch.Tensor]
) -> Detector:
    """A fitted detector from its config and ``state_dict()`` (numpy arrays or tensors);
    a missing or unexpected entry raises ``RuntimeError`` naming it."""
    detector = make_detector(config)
    # copies: stored arrays may be read-only, which torch refuses to wrap
    tensors = {k: torch.as_tensor(np.array(v)) for k, v in state.items()}
    detector.load_state_dict(tensors, strict=True)
    return detector
