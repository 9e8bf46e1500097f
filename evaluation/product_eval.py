"""`adqc eval` for the product's presets: onboarded and scored exactly as a line runs them.

A preset (``s8-patchcore``, the default of `adqc product add`, or ``ensemble``) is fitted by
:func:`inference.onboarding.build_record` from the first K ``train/good`` images, with the
threshold onboarding calibrates (from the references' leave-one-out scores, or from the next
N ``train/good`` images with ``calibration_images``), and every test image is scored by
:class:`inference.scorer.Scorer`. Besides the metrics of every `adqc eval`, the result holds
the operating point a line lives with: that threshold, the observed false-alarm rate on the
good test images and the detection rate on the defective ones, each with its exact
(Clopper-Pearson) 95 % interval.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from evaluation.datasets import Category, load_category
from evaluation.runner import (
    METRIC_KEYS,
    FeatureSet,
    MethodOutput,
    chosen_test_samples,
    counts,
    detection_metrics,
    per_defect_auroc,
    progress_bar,
)
from pretrain.data.folders import DatasetError, load_sample

__all__ = [
    "PresetEvalConfig",
    "alarm_rates",
    "binomial_interval",
    "evaluate_preset",
    "operating_point",
]


@dataclass(frozen=True)
class PresetEvalConfig:
    """One preset evaluation: the category, the preset, K and the onboarding options."""

    category: str
    detector: str
    shots: int
    calibration_images: int = 0
    checkpoint: str | None = None
    max_test: int | None = None
    seed: int = 0
    batch_size: int = 16
    image_size: int | None = None  # the product's input size (s8-patchcore); None: the preset's


def binomial_interval(hits: int, n: int, level: float = 0.95) -> tuple[float, float] | None:
    """Exact (Clopper-Pearson) interval of a rate observed as ``hits`` of ``n``."""
    if n <= 0:
        return None
    from scipy.stats import beta

    tail = (1.0 - level) / 2.0
    low = 0.0 if hits == 0 else float(beta.ppf(tail, hits, n - hits + 1))
    high = 1.0 if hits == n else float(beta.ppf(1.0 - tail, hits + 1, n - hits))
    return low, high


def alarm_rates(alarm: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """False alarms among the normal images and detections among the defective ones, given
    which images alarmed; each rate with its exact 95 % interval."""
    alarm = np.asarray(alarm, dtype=bool)
    normal, defective = np.asarray(labels) == 0, np.asarray(labels) == 1
    out: dict[str, Any] = {}
    for name, subset, what in (
        ("false_alarm", normal, "normals"),
        ("detection", defective, "defectives"),
    ):
        hits, n = int(alarm[subset].sum()), int(subset.sum())
        out[f"{name}s"] = hits
        out[what] = n
        out[f"{name}_rate"] = hits / n if n else None
        interval = binomial_interval(hits, n)
        out[f"{name}_rate_95"] = list(interval) if interval else None
    return out


def operating_point(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, Any]:
    """:func:`alarm_rates` at ``threshold`` (a score above it alarms, as the scorer decides)."""
    return {"threshold": float(threshold), **alarm_rates(np.asarray(scores) > threshold, labels)}


def _references(category: Category, cfg: PresetEvalConfig) -> tuple[list, list]:
    """The first K train/good images, then the next N for calibration (named errors)."""
    good = list(category.train_good)
    wanted = cfg.shots + cfg.calibration_images
    if wanted > len(good):
        extra = (
            f" + --calibration-images {cfg.calibration_images}" if cfg.calibration_images else ""
        )
        raise DatasetError(
            f"--shots {cfg.shots}{extra} needs {wanted} train/good images, "
            f"but {category.name} has {len(good)}"
        )
    return good[: cfg.shots], good[cfg.shots : wanted]


def evaluate_preset(
    cfg: PresetEvalConfig, show_progress: bool = True
) -> tuple[dict[str, Any], FeatureSet, MethodOutput]:
    """Onboard the preset from the category's references and score its test set; returns
    (OUT.json dict, a FeatureSet of the test samples for the report, scores and maps)."""
    from inference.engines.local import LocalEngine
    from inference.onboarding import build_record, input_size, load_images
    from inference.scorer import Scorer
    from inference.store.embedded import MemoryStore

    t0 = time.perf_counter()
    category = load_category(cfg.category)
    refs, held_out = _references(category, cfg)
    engine = LocalEngine(checkpoint=cfg.checkpoint)
    size = input_size(engine, cfg.detector, cfg.image_size)  # type: ignore[arg-type]
    record = build_record(
        engine,
        "eval",
        load_images(refs, size),
        detector=cfg.detector,  # type: ignore[arg-type]
        calibration=load_images(held_out, size) if held_out else None,
        image_size=cfg.image_size,
    )
    t1 = time.perf_counter()
    samples, notes = chosen_test_samples(category, cfg.max_test, cfg.seed)
    scorer = Scorer(engine, MemoryStore(), batch_size=cfg.batch_size)
    scores = np.empty(len(samples), np.float64)
    maps = np.empty((len(samples), size, size), np.float32)
    masks = np.zeros((len(samples), size, size), bool) if category.has_masks else None
    with progress_bar(show_progress) as prog:
        task = prog.add_task(f"{category.name}: scoring ({cfg.detector})", total=len(samples))
        for start in range(0, len(samples), cfg.batch_size):
            chunk = samples[start : start + cfg.batch_size]
            loaded = [load_sample(s.path, s.mask, size) for s in chunk]
            results = scorer.score_with([image for image, _ in loaded], record)
            for i, (result, (_, mask)) in enumerate(zip(results, loaded, strict=True)):
                scores[start + i] = result.score
                maps[start + i] = result.anomaly_map
                if masks is not None:
                    masks[start + i] = mask.astype(bool)
            prog.advance(task, len(chunk))
    t2 = time.perf_counter()
    fs = FeatureSet(
        kind="preset",
        shots=cfg.shots,
        image_size=size,
        train=None,
        test=[],
        samples=samples,
        masks=masks,
        n_train=len(refs),
        n_pool=len(refs),
        seconds=0.0,
        notes=notes,
    )
    metrics = detection_metrics(scores, fs.labels, maps, masks)
    calibration = record.calibration
    info = {
        "detector": record.detector,
        "image_size": record.image_size,
        "calibration": {
            "method": calibration.method,
            "rule": calibration.rule,
            "target_far": calibration.target_far,
            "n_normals": calibration.n_normals,
        },
    }
    out = MethodOutput(cfg.detector, scores, maps, metrics, t1 - t0, t2 - t1, info)
    return _result(cfg, category, fs, out, calibration.threshold, time.perf_counter() - t0), fs, out


def _result(
    cfg: PresetEvalConfig,
    category: Category,
    fs: FeatureSet,
    out: MethodOutput,
    threshold: float,
    seconds: float,
) -> dict[str, Any]:
    m = out.metrics
    point = operating_point(out.scores, fs.labels, threshold)
    point |= {k: out.detector_info["calibration"][k] for k in ("method", "rule", "target_far")}
    point["calibration_images"] = cfg.calibration_images
    return {
        "category": category.name,
        "features": "preset",
        "method": cfg.detector,
        "shots": cfg.shots,
        **{k: m[k] for k in METRIC_KEYS},
        "operating_point": point,
        **counts(fs),
        "seconds": round(seconds, 3),
        "timing": {
            "onboarding_s": round(out.fit_seconds, 3),
            "score_s": round(out.score_seconds, 3),
        },
        "pixel_stride": m.get("pixel_stride"),
        "per_defect": per_defect_auroc(fs.samples, out.scores),
        "detector": out.detector_info,
        "notes": list(fs.notes),
        "config": {**cfg.__dict__, "category": category.root, "image_size": fs.image_size},
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
