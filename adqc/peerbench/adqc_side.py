"""adqc's detectors on the arrays the peer scores (``exchange.Inputs``), group by group.

Backbone features are computed once per class and shared by every (features, method) row; the
residual / projected features once per features kind. Per group the first K references are the
reference pool and the detector's memory, exactly as ``adqc eval`` does
(``pretrain.evaluation.runner``: leave-one-out residuals of the pool images, the same
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

from adqc.peerbench.exchange import Inputs
from pretrain.evaluation.datasets import Category
from pretrain.evaluation.detectors import check_supported
from pretrain.evaluation.runner import (
    EvalConfig,
    LoadedModel,
    RawFeatures,
    feature_set,
    load_model,
    run_method,
)

BATCH = 16


@dataclass
class AdqcOutput:
    features: str
    method: str
    scores: np.ndarray  # [N] over all groups
    maps: np.ndarray | None  # [N,S,S] when the class has masks
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)


def supported(kind: str, method: str) -> bool:
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
    lm: LoadedModel, inputs: Inputs, kinds: list[str], methods: list[str]
) -> list[AdqcOutput]:
    """Every supported (kind, method) row on ``inputs``; scores/maps in group order."""
    bc = inputs.bench_class
    rows = [(k, m) for k in kinds for m in methods if supported(k, m)]
    scores: dict[tuple[str, str], list[np.ndarray]] = {r: [] for r in rows}
    maps: dict[tuple[str, str], list[np.ndarray]] = {r: [] for r in rows}
    seconds = dict.fromkeys(rows, 0.0)
    info: dict[tuple[str, str], dict[str, Any]] = {r: {} for r in rows}
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
            fs = feature_set(lm, raw, kind, inputs.shots, show_progress=False)
            for k, method in rows:
                if k != kind:
                    continue
                out = run_method(fs, method, BATCH, show_progress=False)
                scores[(k, method)].append(out.scores)
                if inputs.masks is not None:
                    maps[(k, method)].append(out.maps)
                seconds[(k, method)] += backbone_s + fs.seconds + out.fit_seconds
                seconds[(k, method)] += out.score_seconds
                info[(k, method)] = out.detector_info
    return [
        AdqcOutput(
            k,
            m,
            np.concatenate(scores[(k, m)]),
            np.concatenate(maps[(k, m)]) if maps[(k, m)] else None,
            seconds[(k, m)],
            info[(k, m)],
        )
        for k, m in rows
    ]
