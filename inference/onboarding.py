"""Onboarding a product: K good images -> reference pool, detector memory, calibrated threshold.

``onboard(engine, store, name, images, shots=K, ...)`` takes the first K images (sorted by
path) as the shots, builds the record and publishes it as the product's next version:

1. raw backbone features of the K shots -> the reference pool (every patch, every level);
2. each shot's projected residual against the pool of the *other* K-1 shots (a shot would match
   itself in the full pool and get a zero residual; leave-one-out gives it what a new frame
   sees: a pool of other good parts). PatchCore's memory bank is fitted on these features,
   as in ``adqc eval`` (pretrain/evaluation/runner.py); FeatureNorm needs no memory;
3. normal scores for the threshold: with ``calibration_images`` ("held-out"), those images
   scored exactly as the scorer will score frames (full pool, full memory); otherwise
   ("leave-one-out") each shot scored against the other K-1 (FeatureNorm: its leave-one-out
   features; PatchCore: a bank fitted on the other K-1 shots' features);
4. threshold from those normal scores (inference/calibration.py; docs/ONBOARDING.md).
"""

from __future__ import annotations

import copy
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
from inference.records import Detector as DetectorName
from inference.records import ProductRecord, check_product_name
from inference.scorer import detector_fields, maps_and_scores
from inference.store import ReferenceStore
from pretrain.evaluation.detectors import Detector, FeatureNorm, PatchCore
from pretrain.preprocess import resize_uint8
from pretrain.residual import ReferencePool, pool_residuals

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
DEFAULT_SHOTS = 8
MIN_SHOTS = 2


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


def load_images(paths: Sequence[Path], size: int) -> np.ndarray:
    """uint8 [N,S,S,3], each file through the frame decoder (:func:`inference.frames.load_frame`,
    as serve decodes frames); an unreadable file raises ImageLoadError naming it."""
    return np.stack([resize_uint8(load_frame(p), size) for p in paths])


#: shots whose leave-one-out residuals go through the projector together
PROJECTOR_BATCH = 32


def _residual_excluding(f: torch.Tensor, pool: torch.Tensor, normed: torch.Tensor, rows: slice):
    """f [1,C,h,w] -> its residual against ``pool`` [M,C] with the pool ``rows`` (the image's
    own patches) left out: the same 1-NN as a pool built without them (ties: lowest index)."""
    _, c, h, w = f.shape
    flat = f.permute(0, 2, 3, 1).reshape(-1, c)
    sim = torch.nn.functional.normalize(flat, dim=1) @ normed.T
    sim[:, rows] = float("-inf")
    idx = sim.argmax(dim=1)
    return (flat - pool.index_select(0, idx)).reshape(1, h, w, c).permute(0, 3, 1, 2)


def _leave_one_out_features(engine: LocalEngine, raw: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per level [K,C,h,w]: each shot's projected residual against the other K-1 shots.

    The pool of all K shots is built (and normalised) once; each shot's own patches are masked
    out of its search, and the residuals go through the projector in batches: O(K) pool work
    instead of rebuilding a (K-1)-shot pool per shot.
    """
    shots = raw[0].shape[0]
    pool = ReferencePool.from_features(raw)
    hw = [f.shape[2] * f.shape[3] for f in raw]
    out: list[list[torch.Tensor]] = [[] for _ in raw]
    with torch.inference_mode():
        for start in range(0, shots, PROJECTOR_BATCH):
            stop = min(shots, start + PROJECTOR_BATCH)
            residual = [
                torch.cat(
                    [
                        _residual_excluding(f[i : i + 1], p, pn, slice(i * n, (i + 1) * n))
                        for i in range(start, stop)
                    ]
                )
                for f, p, pn, n in zip(raw, pool.levels, pool.normed, hw, strict=True)
            ]
            for level, projected in zip(out, engine.project(residual), strict=True):
                level.append(projected)
    return [torch.cat(level) for level in out]


def _fit(detector: DetectorName, features: list[torch.Tensor]) -> Detector:
    fitted = FeatureNorm() if detector == "featurenorm" else PatchCore()
    fitted.fit(features)
    return fitted


def _patchcore_loo_scores(fitted: PatchCore, loo: list[torch.Tensor], size: int) -> np.ndarray:
    """Each shot's image score against a PatchCore bank without that shot's patches.

    While the other K-1 shots' patches fit under the coreset threshold, the bank is refitted on
    them (exact leave-one-out; no coreset is involved). Above it, refitting would run K greedy
    coresets (minutes each at full shot), so the bank fitted on all K shots is reused with the
    rows that came from shot i removed: the leave-one-out of the coreset, not the coreset of
    the leave-one-out (tested and documented in docs/ONBOARDING.md).
    """
    k = int(loo[0].shape[0])
    per_image = fitted.n_patches_seen // k
    scores = np.empty(k)
    if (k - 1) * per_image <= fitted.coreset_threshold:
        for i in range(k):
            rest = _fit("patchcore", [torch.cat([f[:i], f[i + 1 :]]) for f in loo])
            scores[i] = maps_and_scores(rest, [f[i : i + 1] for f in loo], size)[1][0]
        return scores
    assert fitted.memory is not None
    selected = fitted.selected if fitted.selected is not None else torch.arange(len(fitted.memory))
    source = selected // per_image
    for i in range(k):
        rest = copy.copy(fitted)
        rest.memory = fitted.memory[source != i]
        scores[i] = maps_and_scores(rest, [f[i : i + 1] for f in loo], size)[1][0]
    return scores


def build_record(
    engine: LocalEngine,
    product: str,
    shots: np.ndarray,
    *,
    detector: DetectorName = "featurenorm",
    target_far: float = DEFAULT_TARGET_FAR,
    calibration: np.ndarray | None = None,
) -> ProductRecord:
    """An unpublished record (version 0) from uint8 [K,S,S,3] shots (S = engine.image_size)."""
    check_product_name(product)
    if detector not in ("featurenorm", "patchcore"):
        raise OnboardingError(f"unknown detector {detector!r}: use featurenorm or patchcore")
    k = int(shots.shape[0])
    if k < MIN_SHOTS:
        raise OnboardingError(f"need at least {MIN_SHOTS} shots (good images), got {k}")
    model, size = engine.model, engine.image_size
    with torch.inference_mode():
        raw = engine.raw(model.preprocess(torch.from_numpy(shots)))
    pool = ReferencePool.from_features(raw)
    loo = _leave_one_out_features(engine, raw)
    fitted = _fit(detector, loo)
    if calibration is not None and len(calibration):
        with torch.inference_mode():
            x = model.preprocess(torch.from_numpy(calibration))
            features = engine.project(pool_residuals(engine.raw(x), pool, model.chunk))
        _, scores = maps_and_scores(fitted, features, size)
        method = "held-out"
    elif detector == "featurenorm":
        _, scores = maps_and_scores(fitted, loo, size)
        method = "leave-one-out"
    else:
        assert isinstance(fitted, PatchCore)
        scores = _patchcore_loo_scores(fitted, loo, size)
        method = "leave-one-out"
    return ProductRecord(
        product=product,
        model_id=engine.model_id,
        backbone=engine.backbone,
        image_size=size,
        shots=k,
        pool=pool.numpy(),
        calibration=calibrate(scores.tolist(), target_far, method),
        **detector_fields(fitted),
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
    detector: DetectorName = "featurenorm",
) -> OnboardingResult:
    """Build the product's record from the first ``shots`` images and publish it."""
    started = time.perf_counter()
    check_product_name(product)
    inputs = resolve_inputs(images, shots, calibration_images)
    size = engine.image_size
    record = build_record(
        engine,
        product,
        load_images(inputs.shots, size),
        detector=detector,
        target_far=target_far,
        calibration=load_images(inputs.calibration_images, size)
        if inputs.calibration_images
        else None,
    )
    version = store.publish(record)
    return OnboardingResult(
        record=record.model_copy(update={"version": version}),
        shots=inputs.shots,
        calibration_images=inputs.calibration_images,
        ignored=inputs.ignored,
        seconds=time.perf_counter() - started,
    )
