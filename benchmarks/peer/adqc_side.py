"""adqc's detectors on the arrays the peer scores (``exchange.Inputs``), group by group.

Backbone features are computed once per class and shared by every (features, method) row; the
residual / projected features once per features kind. Per group the first K references are the
reference pool and the detector's memory, exactly as ``adqc eval`` does
(``evaluation.runner``: leave-one-out residuals of the pool images, the same
detectors and post-processing). A row's seconds are what scoring that class alone costs: the
backbone on the references and test images, the residual/projector step, the detector's fit
and scoring (image decoding excluded, as on the peer side).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from benchmarks.peer.exchange import Inputs
from evaluation.datasets import Category
from evaluation.runner import (
    EvalConfig,
    FeatureSet,
    LoadedModel,
    RawFeatures,
    feature_set,
    load_model,
)
from inference.calibration import DEFAULT_TARGET_FAR, CalibrationError, calibrate
from pretrain.detectors import check_supported, image_scores, leave_one_out_maps, make_detector
from pretrain.detectors.ensemble import s8_patchcore_config

BATCH = 16
#: the default's PatchCore member at the peer's 224 px (anomalib 2.x's embedding on taps
#: 6 + 13, border padding counted, blocked coreset above 10k patches); the preset runs it at
#: ``S8_INPUT_SIZE`` (``sized_member``)
S8_MEMBER = s8_patchcore_config().model_dump(exclude={"method"})
#: row name -> (detector, constructor arguments); plain names are the detectors' defaults
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "patchcore_n1": ("patchcore", {"neighbourhood": 1}),  # no 3x3 aggregation (side check)
    "patchcore_concat": ("patchcore", S8_MEMBER),
    # position-aware matching (issue 11, section 3): bank patches within 2 cells (of 28)
    "patchcore_concat_local": ("patchcore", {**S8_MEMBER, "position_window": 2}),
    # the same with anomalib's 10 % global coreset at any bank size (speed, issue 12)
    "patchcore_concat_coreset": (
        "patchcore",
        {**S8_MEMBER, "coreset_threshold": 1, "coreset_block": 0},
    ),
}


def sized_member(size: int) -> dict[str, Any]:
    """The default's member for ``size`` px input, as the preset configures it."""
    return s8_patchcore_config(size).model_dump(exclude={"method"})


# the default's input-size candidates (issue 11, section 2; docs/BACKBONES.md)
for _size in (256, 320):
    VARIANTS[f"patchcore_concat_{_size}"] = ("patchcore", sized_member(_size))


@dataclass
class AdqcOutput:
    features: str
    method: str
    scores: np.ndarray  # [N] over all groups
    maps: np.ndarray | None  # [N,S,S] when the class has masks
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Scored:
    scores: np.ndarray
    maps: np.ndarray
    fit_seconds: float
    score_seconds: float
    info: dict[str, Any]
    loo_maps: torch.Tensor | None = None  # [K,S,S] of the references, leave-one-out


def score_features(
    fs: FeatureSet,
    row_method: str,
    calibrate_threshold: bool = True,
    loo_images: list[int] | None = None,
) -> Scored:
    """Fit the row's detector on the references' features and score the test features;
    ``loo_images``: the references scored leave-one-out (default all, as for one detector)."""
    method, kwargs = VARIANTS.get(row_method, (row_method, {}))
    det = make_detector(method, **kwargs)
    t0 = time.perf_counter()
    if method != "featurenorm":
        det.fit(fs.train)
    t1 = time.perf_counter()
    n = len(fs.samples)
    maps = np.empty((n, fs.image_size, fs.image_size), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, n, BATCH):
            sl = slice(start, min(n, start + BATCH))
            maps[sl] = det.anomaly_maps([f[sl] for f in fs.test], fs.image_size).numpy()
    scores = image_scores(torch.from_numpy(maps)).numpy().astype(np.float64)
    t2 = time.perf_counter()
    info: dict[str, Any] = dict(det.info())
    loo_maps = None
    if calibrate_threshold and fs.train is not None and fs.train[0].shape[0] >= 2:
        # exactly what `adqc product add` does without calibration images
        # (inference/onboarding.py): leave-one-out scores of the K references, then the rule
        loo_maps = leave_one_out_maps(
            det.config, fs.train, fs.image_size, fitted=det, images=loo_images
        )
        normal = image_scores(loo_maps)
        try:
            cal = calibrate(normal.numpy().astype(np.float64).tolist(), DEFAULT_TARGET_FAR)
            info["threshold"] = cal.threshold
            info["threshold_rule"] = cal.rule
        except CalibrationError as exc:
            info["threshold_error"] = str(exc)
    info["calibration_s"] = time.perf_counter() - t2
    return Scored(scores, maps, t1 - t0, t2 - t1, info, loo_maps)


def supported(kind: str, method: str) -> bool:
    method = VARIANTS.get(method, (method, {}))[0]
    try:
        check_supported(method, kind)
    except ValueError:
        return False
    return True


def load(
    backbone: str, checkpoint: str | None, kinds: list[str], weights: str | None = None
) -> LoadedModel:
    """The backbone, plus the projector when ``adpretrain`` rows are asked for."""
    features = "adpretrain" if "adpretrain" in kinds else "raw"
    cfg = EvalConfig(category="-", features=features, backbone=backbone, checkpoint=checkpoint)
    cfg.weights = weights
    return load_model(cfg)


def _backbone(lm: LoadedModel, images: np.ndarray) -> list[torch.Tensor]:
    model = lm.model
    parts = []
    with torch.inference_mode():
        for start in range(0, len(images), BATCH):
            batch = torch.from_numpy(images[start : start + BATCH])
            parts.append([f.float().cpu() for f in model.raw(model.preprocess(batch))])
    return [torch.cat([p[level] for p in parts]) for level in range(len(parts[0]))]


def run(
    lm: LoadedModel,
    inputs: Inputs,
    kinds: list[str],
    methods: list[str],
    only: set[tuple[str, str]] | None = None,
    calibrate_threshold: bool = True,
) -> list[AdqcOutput]:
    """Every supported (kind, method) row on ``inputs`` (or those in ``only``), in group order."""
    bc = inputs.bench_class
    rows = [(k, m) for k in kinds for m in methods if supported(k, m)]
    if only is not None:
        rows = [r for r in rows if r in only]
    scores: dict[tuple[str, str], list[np.ndarray]] = {r: [] for r in rows}
    maps: dict[tuple[str, str], list[np.ndarray]] = {r: [] for r in rows}
    seconds = dict.fromkeys(rows, 0.0)
    info: dict[tuple[str, str], dict[str, Any]] = {r: {} for r in rows}
    thresholds: dict[tuple[str, str], list[float]] = {r: [] for r in rows}
    for g, group in enumerate(bc.groups):
        t0 = time.perf_counter()
        train = _backbone(lm, inputs.refs[g])
        test = _backbone(lm, inputs.test[g])
        backbone_s = time.perf_counter() - t0
        refs = group.references(inputs.shots)
        raw = RawFeatures(
            category=Category(bc.name, bc.spec, refs, group.test),
            image_size=inputs.image_size,
            train_paths=refs,
            train=train,
            test=test,
            samples=group.test,
            masks=None,  # metrics are pooled over groups by the caller
            seconds=backbone_s,
        )
        for kind in kinds:
            if not any(k == kind for k, _ in rows):
                continue
            fs = feature_set(lm, raw, kind, inputs.shots or None, show_progress=False)
            for k, method in rows:
                if k != kind:
                    continue
                out = score_features(fs, method, calibrate_threshold)
                scores[(k, method)].append(out.scores)
                if inputs.masks is not None:
                    maps[(k, method)].append(out.maps)
                seconds[(k, method)] += backbone_s + fs.seconds + out.fit_seconds
                seconds[(k, method)] += out.score_seconds
                info[(k, method)] = out.info
                thresholds[(k, method)].append(out.info.get("threshold", float("nan")))
    return [
        AdqcOutput(
            k,
            m,
            np.concatenate(scores[(k, m)]),
            np.concatenate(maps[(k, m)]) if maps[(k, m)] else None,
            seconds[(k, m)],
            {**info[(k, m)], "group_thresholds": thresholds[(k, m)]},
        )
        for k, m in rows
    ]
