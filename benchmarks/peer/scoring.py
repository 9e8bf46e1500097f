"""Rows of the side-by-side benchmark: metrics from raw scores/maps with adqc's metric code.

Both columns go through ``evaluation.metrics`` (image AUROC on raw image scores, pixel
AUROC and AUPRO on raw maps at S x S), pooled over every test image of the class (for grouped
classes, such as the AITEX fabrics, each image scored against its own group's references). The
mean of the per-group image AUROCs is reported beside the pooled one for grouped classes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from evaluation import metrics as M
from evaluation.runner import write_json

KEY_FIELDS = ("class", "shots", "source", "features", "method")


def row_key(row: dict[str, Any]) -> tuple:
    return tuple(str(row[k]) for k in KEY_FIELDS)


def metrics_of(
    scores: np.ndarray,
    labels: np.ndarray,
    maps: np.ndarray | None,
    masks: np.ndarray | None,
    group_sizes: list[int],
) -> dict[str, Any]:
    """Image AUROC/AP (pooled and per-group mean), pixel AUROC and AUPRO when masks exist."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != labels.shape:
        raise ValueError(f"{scores.shape[0]} scores for {labels.shape[0]} test images")
    if not np.isfinite(scores).all():
        raise ValueError("non-finite image scores")
    im = M.image_metrics(scores, labels)
    out: dict[str, Any] = {
        "image_auroc": im["image_auroc"],
        "image_ap": im["image_ap"],
        "pixel_auroc": None,
        "aupro": None,
    }
    if len(group_sizes) > 1:
        per, start = [], 0
        for n in group_sizes:
            a = M.auroc(scores[start : start + n], labels[start : start + n])
            per.append(a)
            start += n
        defined = [a for a in per if a is not None]
        out["group_image_auroc"] = per
        out["mean_group_image_auroc"] = float(np.mean(defined)) if defined else None
    if maps is not None and masks is not None:
        px = M.pixel_metrics(maps, masks)
        out["pixel_auroc"] = px["pixel_auroc"]
        out["aupro"] = px["aupro"]
        out["pixel_stride"] = px["pixel_stride"]
    return out


def make_row(
    *,
    class_name: str,
    shots: int,
    source: str,
    features: str,
    method: str,
    metrics: dict[str, Any],
    labels: np.ndarray,
    seconds: float,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    n = int(labels.size)
    return {
        "class": class_name,
        "shots": shots,
        "source": source,
        "features": features,
        "method": method,
        **metrics,
        "n_test": n,
        "n_test_normal": int((labels == 0).sum()),
        "n_test_defective": int((labels == 1).sum()),
        "seconds": round(float(seconds), 3),
        "images_per_s": round(n / seconds, 2) if seconds > 0 else None,
        **(extra or {}),
    }


def load_doc(path: Path) -> dict[str, Any]:
    if path.is_file():
        return json.loads(path.read_text())
    return {"rows": [], "runs": []}


def merge_rows(doc: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Replace rows with the same (class, shots, source, features, method); keep the rest."""
    new = {row_key(r) for r in rows}
    doc["rows"] = [r for r in doc.get("rows", []) if row_key(r) not in new] + rows
    return doc


def write_doc(path: Path, doc: dict[str, Any]) -> None:
    """Write the peer JSON atomically (NaN -> null), as every evaluation result is written."""
    write_json(path, doc)


def operating_point(
    scores: np.ndarray, labels: np.ndarray, group_thresholds: list[float], group_sizes: list[int]
) -> dict[str, Any] | None:
    """Observed false-alarm and detection rates at each group's calibrated threshold, with
    their counts and exact 95 % intervals (``evaluation.product_eval.alarm_rates``)."""
    from evaluation.product_eval import alarm_rates

    if len(group_thresholds) != len(group_sizes) or not np.isfinite(group_thresholds).all():
        return None
    thr = np.repeat(np.asarray(group_thresholds, dtype=np.float64), group_sizes)
    rates = alarm_rates(np.asarray(scores) > thr, labels)
    return {"thresholds": [float(t) for t in group_thresholds], **rates}
