"""Onboarding a product: K good images -> reference pool, detector memory, calibrated threshold.

``onboard(engine, store, name, images, shots=K, ...)`` takes the first K images (sorted by
path) as the shots, builds the record and publishes it as the product's next version:

1. raw backbone features of the K shots -> the reference pool (every patch, every level);
2. each shot's projected residual against the pool of the *other* K-1 shots
   (``pretrain.residual.leave_one_out_residuals``: a shot would match itself in the full pool
   and get a zero residual; leave-one-out gives it what a new frame sees, a pool of other good
   parts). The detector (``pretrain.detectors``: PatchCore's memory bank, PaDiM's Gaussians)
   is fitted on these features, as in ``adqc eval`` (evaluation/runner.py); FeatureNorm fits
   nothing;
3. normal scores for the threshold: with ``calibration_images`` ("held-out"), those images
   scored exactly as the scorer will score frames (full pool, fitted detector); otherwise
   ("leave-one-out", ``pretrain.detectors.leave_one_out_scores``) each shot scored by a
   detector fitted on the other K-1 shots' features;
4. threshold from those normal scores (inference/calibration.py; docs/ONBOARDING.md).
"""

from __future__ import annotations

import glob
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from inference.calibration import DEFAULT_TARGET_FAR, calibrate
from inference.engines.local import LocalEngine
from inference.frames import load_frame
from inference.records import DetectorName, ProductRecord, check_product_name
from inference.scorer import maps_and_scores
from inference.store import ReferenceStore
from inference.stride8 import Stride8Source, any_size_stride8
from pretrain.detectors import (
    Ensemble,
    fit_ensemble,
    flat_features,
    leave_one_out_scores,
    make_detector,
    preset_config,
)
from pretrain.detectors.ensemble import PRESETS, check_s8_input_size
from pretrain.preprocess import resize_uint8
from pretrain.residual import ReferencePool, leave_one_out_residuals, pool_residuals

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
DEFAULT_SHOTS = 8
MIN_SHOTS = 2
#: detectors a product can be onboarded with
DETECTOR_CHOICES: tuple[DetectorName, ...] = (
    "s8-patchcore",
    "ensemble",
    "featurenorm",
    "patchcore",
    "padim",
)
#: the default, chosen against anomalib by the rule in docs/BACKBONES.md
DEFAULT_DETECTOR: DetectorName = "s8-patchcore"


class OnboardingError(ValueError):
    """Onboarding cannot proceed with what it was given; the message says what to change."""


@dataclass
class OnboardingResult:
    record: ProductRecord  # as published (version set)
    shots: list[Path]
    calibration_images: list[Path] = field(default_factory=list)
    ignored: int = 0  # images found beyond the first K
    seconds: float = 0.0


def find_images(spec: str | Path) -> list[Path]:
    """Image files named by a directory (its image files), a glob pattern, or one file; sorted."""
    text = str(spec)
    path = Path(text).expanduser()
    if path.is_dir():
        found = [p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    elif path.is_file():
        found = [path]
    elif glob.has_magic(text):
        found = [Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file()]
    else:
        raise OnboardingError(f"no such directory, file or pattern: {text}")
    found = sorted(found)
    if not found:
        raise OnboardingError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {text}")
    return found


def check_input_size(detector: str, image_size: int) -> None:
    """Raise OnboardingError when ``detector`` cannot take its own input size ``image_size``
    (cheap: no model is loaded)."""
    if detector != "s8-patchcore":
        raise OnboardingError(
            f"--image-size is a setting of the s8-patchcore detector; {detector} runs at the "
            "size its features were trained at"
        )
    try:
        check_s8_input_size(image_size)
    except ValueError as exc:
        raise OnboardingError(str(exc)) from None


def input_size(engine: LocalEngine, detector: DetectorName, image_size: int | None = None) -> int:
    """The size (px) a product onboarded with ``detector`` is scored at: ``image_size`` when
    given (``s8-patchcore`` only), else its preset's own (``s8-patchcore``:
    ``S8_INPUT_SIZE``) or the engine's. Raises OnboardingError for a size the detector
    cannot take."""
    if image_size is not None:
        check_input_size(detector, image_size)
    if detector in PRESETS:
        return preset_config(detector, image_size=image_size).image_size or engine.image_size
    return engine.image_size


def at_size(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 [N,S,S,3] resized to ``size`` (as they are when already that size)."""
    if images.shape[1:3] == (size, size):
        return images
    return np.stack([resize_uint8(image, size) for image in images])


def load_images(paths: Sequence[Path], size: int) -> np.ndarray:
    """uint8 [N,S,S,3], each file through the frame decoder (:func:`inference.frames.load_frame`,
    as serve decodes frames); an unreadable file raises ImageLoadError naming it."""
    return np.stack([resize_uint8(load_frame(p), size) for p in paths])


def build_record(
    engine: LocalEngine,
    product: str,
    shots: np.ndarray,
    *,
    detector: DetectorName = DEFAULT_DETECTOR,
    target_far: float = DEFAULT_TARGET_FAR,
    calibration: np.ndarray | None = None,
    stride8: Stride8Source | None = None,
    image_size: int | None = None,
) -> ProductRecord:
    """An unpublished record (version 0) from uint8 [K,S,S,3] shots, best decoded at the
    detector's :func:`input_size` (other sizes are resized to it); ``image_size``: the
    product's own input size (``s8-patchcore`` only; default its preset's)."""
    check_product_name(product)
    if detector not in DETECTOR_CHOICES:
        choices = ", ".join(DETECTOR_CHOICES)
        raise OnboardingError(f"unknown detector {detector!r}: use one of {choices}")
    k = int(shots.shape[0])
    if k < MIN_SHOTS:
        raise OnboardingError(f"need at least {MIN_SHOTS} shots (good images), got {k}")
    model, size = engine.model, input_size(engine, detector, image_size)
    shots = at_size(shots, size)
    with torch.inference_mode():
        raw = engine.raw(model.preprocess(torch.from_numpy(at_size(shots, engine.image_size))))
    pool = ReferencePool.from_features(raw)
    stride8 = stride8 or any_size_stride8
    config = preset_config(detector, len(raw), image_size) if detector in PRESETS else None
    reads = config.sources() if config is not None else ("adpretrain",)
    loo = None
    if "adpretrain" in reads:
        loo = leave_one_out_residuals(raw, engine.project, model.chunk)
    if config is not None:
        fitted = Ensemble(config)
        s8 = stride8(shots) if "stride8" in reads else None
        loo_scores = fit_ensemble(fitted, flat_features(config, loo, s8), size)
    else:
        fitted = make_detector(detector)
        fitted.fit(loo)
        loo_scores = leave_one_out_scores(fitted.config, loo, size, fitted=fitted)
    if calibration is not None and len(calibration):
        projected = s8 = None
        calibration = at_size(calibration, size)
        if "adpretrain" in reads:  # such detectors run at the engine's size
            with torch.inference_mode():
                x = model.preprocess(torch.from_numpy(calibration))
                projected = engine.project(pool_residuals(engine.raw(x), pool, model.chunk))
        if "stride8" in reads:
            s8 = stride8(calibration)
        features = flat_features(config, projected, s8) if config is not None else projected
        _, scores = maps_and_scores(fitted, features, size)
        method = "held-out"
    else:
        scores = loo_scores.numpy().astype(np.float64)
        method = "leave-one-out"
    return ProductRecord(
        product=product,
        model_id=engine.model_id,
        backbone=engine.backbone,
        image_size=size,
        shots=k,
        pool=pool.numpy(),
        detector_config=fitted.config,
        detector_state=fitted.state_dict(),
        calibration=calibrate(scores.tolist(), target_far, method),
    )


@dataclass
class OnboardingInputs:
    shots: list[Path]
    calibration_images: list[Path]
    ignored: int  # images found beyond the first K


def resolve_inputs(
    images: str | Path | Sequence[Path],
    shots: int = DEFAULT_SHOTS,
    calibration_images: str | Path | Sequence[Path] | None = None,
) -> OnboardingInputs:
    """Check the onboarding inputs (cheap: no image is decoded, no model loaded)."""
    if shots < MIN_SHOTS:
        raise OnboardingError(f"--shots must be at least {MIN_SHOTS}, got {shots}")
    found = [Path(p) for p in images] if isinstance(images, list | tuple) else find_images(images)
    if len(found) < shots:
        raise OnboardingError(
            f"found {len(found)} image(s) in {images}, fewer than --shots {shots}: add good "
            f"images or lower --shots (at least {MIN_SHOTS})"
        )
    chosen = found[:shots]
    held_out: list[Path] = []
    if isinstance(calibration_images, list | tuple):
        held_out = [Path(p) for p in calibration_images]
    elif calibration_images is not None:
        held_out = find_images(calibration_images)
    overlap = sorted({p.resolve() for p in held_out} & {p.resolve() for p in chosen})
    if overlap:
        raise OnboardingError(
            f"calibration images must be other images than the shots; {overlap[0]} is both"
        )
    return OnboardingInputs(chosen, held_out, len(found) - shots)


def onboard(
    engine: LocalEngine,
    store: ReferenceStore,
    product: str,
    images: str | Path | Sequence[Path],
    *,
    shots: int = DEFAULT_SHOTS,
    calibration_images: str | Path | Sequence[Path] | None = None,
    target_far: float = DEFAULT_TARGET_FAR,
    detector: DetectorName = DEFAULT_DETECTOR,
    image_size: int | None = None,
) -> OnboardingResult:
    """Build the product's record from the first ``shots`` images and publish it
    (``image_size``: the product's input size, ``s8-patchcore`` only)."""
    started = time.perf_counter()
    check_product_name(product)
    inputs = resolve_inputs(images, shots, calibration_images)
    size = input_size(engine, detector, image_size)
    record = build_record(
        engine,
        product,
        load_images(inputs.shots, size),
        detector=detector,
        target_far=target_far,
        calibration=load_images(inputs.calibration_images, size)
        if inputs.calibration_images
        else None,
        image_size=image_size,
    )
    version = store.publish(record)
    return OnboardingResult(
        record=record.model_copy(update={"version": version}),
        shots=inputs.shots,
        calibration_images=inputs.calibration_images,
        ignored=inputs.ignored,
        seconds=time.perf_counter() - started,
    )
