"""Paired bootstrap over test images: is a difference between two feature sets more than noise?

Both feature sets score the same test images, so the images are resampled (with replacement,
normal and defective images separately, so every resample has both) and the metric difference
b - a is recomputed on each resample. The 2.5 / 97.5 % quantiles give a 95 % interval.

    python -m evaluation.significance ../shared/datasets/mvtec_ad/bottle \
        --json docs/results/significance_bottle.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from evaluation import metrics as M

METRICS = ("image_auroc", "pixel_auroc")
PIXEL_STRIDE = 4  # 224 px maps -> 56 x 56 per image: the bootstrap recomputes the curve often


def _metric(name: str, scores, maps, labels, masks, idx: np.ndarray) -> float | None:
    if name == "image_auroc":
        return M.auroc(scores[idx], labels[idx])
    if name == "aupro":
        return M.aupro(maps[idx], masks[idx])
    return M.auroc(maps[idx], masks[idx])


def paired_bootstrap(
    a: dict[str, np.ndarray],
    b: dict[str, np.ndarray],
    labels: np.ndarray,
    masks: np.ndarray | None,
    n_boot: int = 1000,
    seed: int = 0,
    metrics: tuple[str, ...] = METRICS,
) -> dict[str, dict[str, float]]:
    """95 % intervals of metric(b) - metric(a) over image resamples.

    Args:
        a, b: {"scores": [N] image scores, "maps": [N,H,W] anomaly maps} of the same N images.
        labels: [N] 0 normal / 1 defective.
        masks: [N,H,W] boolean ground truth, or None (image metrics only).
        n_boot: resamples.
        seed: generator seed.
        metrics: of ``image_auroc``, ``pixel_auroc``, ``aupro`` (pixel metrics need masks;
            both are computed on maps subsampled by ``PIXEL_STRIDE``, so they approximate the
            full-resolution values).

    Returns:
        {metric: {"diff", "low", "high", "p_below_zero"}}; ``diff`` is on all images.
    """
    labels = np.asarray(labels).astype(int)
    normal, defective = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    if normal.size == 0 or defective.size == 0:
        raise ValueError("the bootstrap needs normal and defective test images")
    unknown = set(metrics) - {"image_auroc", "pixel_auroc", "aupro"}
    if unknown:
        raise ValueError(f"unknown bootstrap metrics {sorted(unknown)}")
    names = [m for m in metrics if m == "image_auroc" or masks is not None]
    s = np.s_[:, ::PIXEL_STRIDE, ::PIXEL_STRIDE]
    ma = None if masks is None else np.ascontiguousarray(a["maps"][s])
    mb = None if masks is None else np.ascontiguousarray(b["maps"][s])
    gt = None if masks is None else np.ascontiguousarray(np.asarray(masks, bool)[s])
    every = np.arange(labels.size)
    rng = np.random.default_rng(seed)
    draws = [
        np.concatenate([rng.choice(normal, normal.size), rng.choice(defective, defective.size)])
        for _ in range(n_boot)
    ]
    out: dict[str, dict[str, float]] = {}
    for name in names:

        def diff(idx: np.ndarray, name: str = name) -> float:
            va = _metric(name, a["scores"], ma, labels, gt, idx)
            vb = _metric(name, b["scores"], mb, labels, gt, idx)
            return float(vb - va)

        boot = np.array([diff(idx) for idx in draws])
        out[name] = {
            "diff": diff(every),
            "low": float(np.quantile(boot, 0.025)),
            "high": float(np.quantile(boot, 0.975)),
            "p_below_zero": float((boot < 0).mean()),
        }
    return out


def compare_features(category_dir: str, kinds, methods, shots, n_boot: int) -> dict[str, Any]:
    """Maps of both feature kinds for each (method, K) of one category, and their bootstrap."""
    from evaluation.datasets import load_category
    from evaluation.runner import (
        EvalConfig,
        feature_set,
        load_model,
        raw_features,
        run_method,
    )

    lm = load_model(EvalConfig(category=category_dir, features="adpretrain"))
    category = load_category(category_dir)
    size = lm.spec.image_size
    raw = raw_features(lm, category, size, max(shots), show_progress=False)
    rows = []
    for k in shots:
        sets = {kind: feature_set(lm, raw, kind, k, show_progress=False) for kind in kinds}
        for method in methods:
            outs = {kind: run_method(fs, method, show_progress=False) for kind, fs in sets.items()}
            a, b = ({"scores": outs[x].scores, "maps": outs[x].maps} for x in kinds)
            labels = sets[kinds[0]].labels
            result = paired_bootstrap(a, b, labels, sets[kinds[0]].masks, n_boot)
            rows.append({"method": method, "shots": k, **result})
            print(method, k, json.dumps(result))
    return {
        "category": category.name,
        "compared": f"{kinds[1]} - {kinds[0]}",
        "checkpoint": lm.checkpoint,
        "n_boot": n_boot,
        "pixel_stride": PIXEL_STRIDE,
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("category", help="MVTec-layout category folder")
    parser.add_argument("--json", required=True, type=Path, help="write the intervals here")
    parser.add_argument("--methods", default="patchcore,padim")
    parser.add_argument("--shots", default="2,4,8")
    parser.add_argument("--n-boot", type=int, default=1000)
    args = parser.parse_args(argv)
    doc = compare_features(
        args.category,
        ("raw", "adpretrain"),
        args.methods.split(","),
        [int(k) for k in args.shots.split(",")],
        args.n_boot,
    )
    args.json.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
