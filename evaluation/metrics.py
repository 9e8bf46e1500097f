"""Anomaly-detection metrics: image/pixel AUROC and AP, F1-max, AUPRO (MVTec definition).

Everything is computed exactly from sorted scores (ties handled as in scikit-learn: one curve
point per distinct score), in numpy, with memory linear in the number of scored pixels.
Pixel metrics use every pixel of the maps while that is at most ``max_pixels``; beyond it the
maps and masks are subsampled on a regular spatial grid (every s-th row and column of every
image, the same for all images), which keeps the computation exact on that sample and bounded.

AUPRO follows the MVTec AD evaluation code: connected components of the ground truth with
8-connectivity, per threshold the false-positive rate over all normal pixels of all test images
and the mean overlap over all components; the PRO curve is integrated up to FPR 0.3 (with linear
interpolation at 0.3) and divided by 0.3 -- never renormalised by the range of FPRs kept.

Metrics that are undefined (a single class present) are returned as ``None``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

DEFAULT_MAX_FPR = 0.3
DEFAULT_MAX_PIXELS = 1 << 25  # ~33.5 M pixels: ~1 GB of temporaries at most


@dataclass(frozen=True)
class BinaryCurve:
    """Cumulative counts at each distinct score, highest score first."""

    thresholds: np.ndarray  # descending distinct scores
    tps: np.ndarray  # positives with score >= threshold
    fps: np.ndarray  # negatives with score >= threshold
    n_pos: int
    n_neg: int


def _as_1d(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores).reshape(-1)
    y = np.asarray(labels).reshape(-1).astype(bool)
    if s.shape != y.shape:
        raise ValueError(f"scores and labels differ in size: {s.size} vs {y.size}")
    if s.size and not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or infinity")
    return s, y


def binary_curve(scores, labels) -> BinaryCurve:
    """Exact cumulative TP/FP counts per distinct threshold (descending)."""
    s, y = _as_1d(scores, labels)
    order = np.argsort(-s, kind="stable")
    s_sorted = s[order]
    y_sorted = y[order]
    last = np.flatnonzero(np.diff(s_sorted)) if s.size > 1 else np.empty(0, dtype=np.int64)
    idx = np.r_[last, s.size - 1] if s.size else np.empty(0, dtype=np.int64)
    tps = np.cumsum(y_sorted, dtype=np.int64)[idx]
    fps = (idx + 1) - tps
    n_pos = int(y.sum())
    return BinaryCurve(s_sorted[idx], tps, fps, n_pos, int(y.size) - n_pos)


def roc_points(curve: BinaryCurve) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr), starting at (0, 0)."""
    fpr = np.r_[0.0, curve.fps / max(curve.n_neg, 1)]
    tpr = np.r_[0.0, curve.tps / max(curve.n_pos, 1)]
    return fpr, tpr


def auroc_from_curve(curve: BinaryCurve) -> float | None:
    if curve.n_pos == 0 or curve.n_neg == 0:
        return None
    fpr, tpr = roc_points(curve)
    return float(np.trapz(tpr, fpr))


def ap_from_curve(curve: BinaryCurve) -> float | None:
    """Average precision = sum_k (R_k - R_{k-1}) P_k (scikit-learn's definition)."""
    if curve.n_pos == 0:
        return None
    precision = curve.tps / (curve.tps + curve.fps)
    recall = curve.tps / curve.n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def f1_max_from_curve(curve: BinaryCurve) -> tuple[float | None, float | None]:
    """(best F1 over thresholds, the threshold that reaches it)."""
    if curve.n_pos == 0:
        return None, None
    precision = curve.tps / (curve.tps + curve.fps)
    recall = curve.tps / curve.n_pos
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    i = int(np.argmax(f1))
    return float(f1[i]), float(curve.thresholds[i])


def auroc(scores, labels) -> float | None:
    return auroc_from_curve(binary_curve(scores, labels))


def average_precision(scores, labels) -> float | None:
    return ap_from_curve(binary_curve(scores, labels))


def f1_max(scores, labels) -> float | None:
    return f1_max_from_curve(binary_curve(scores, labels))[0]


def _trapezoid_upto(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Area under the piecewise-linear curve (x increasing) from x[0] to x_max."""
    keep = x <= x_max
    xs, ys = x[keep], y[keep]
    area = float(np.trapz(ys, xs)) if xs.size > 1 else 0.0
    if xs.size and xs[-1] < x_max:
        j = int(np.searchsorted(x, x_max, side="right"))
        if j < x.size:  # interpolate the segment that crosses x_max
            x0, x1, y0, y1 = x[j - 1], x[j], y[j - 1], y[j]
            y_at = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0) if x1 > x0 else y1
            area += 0.5 * (y0 + y_at) * (x_max - x0)
    return area


def pro_curve(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(fpr, pro) over all distinct thresholds, starting at (0, 0); None without defects.

    maps: [N,H,W] float scores; masks: [N,H,W] bool ground truth.
    """
    maps = np.asarray(maps)
    masks = np.asarray(masks).astype(bool)
    if maps.shape != masks.shape or maps.ndim != 3:
        raise ValueError(f"maps {maps.shape} and masks {masks.shape} must both be [N,H,W]")
    structure = np.ones((3, 3), dtype=int)  # 8-connectivity, as the MVTec evaluation code
    n_ok = int((~masks).sum())
    pro_w = np.zeros(masks.shape, dtype=np.float64)
    sizes = []
    labelled = []
    for i in range(masks.shape[0]):
        lab, n = ndimage.label(masks[i], structure=structure)
        if n:
            counts = np.bincount(lab.ravel(), minlength=n + 1)[1:]
            sizes.append(counts)
            labelled.append((i, lab, counts))
    n_comp = sum(len(c) for c in sizes)
    if n_comp == 0 or n_ok == 0:
        return None
    for i, lab, counts in labelled:
        w = np.r_[0.0, 1.0 / (n_comp * counts.astype(np.float64))]
        pro_w[i] = w[lab]
    s = maps.reshape(-1)
    if not np.all(np.isfinite(s)):
        raise ValueError("anomaly maps contain NaN or infinity")
    order = np.argsort(-s, kind="stable")
    fp_w = (~masks.reshape(-1)[order]).astype(np.float64) / n_ok
    fpr = np.cumsum(fp_w)
    del fp_w
    pro = np.cumsum(pro_w.reshape(-1)[order])
    del pro_w
    s_sorted = s[order]
    del order
    keep = np.r_[np.diff(s_sorted) != 0, True]
    fpr = np.clip(fpr[keep], 0.0, 1.0)
    pro = np.clip(pro[keep], 0.0, 1.0)
    return np.r_[0.0, fpr], np.r_[0.0, pro]


def aupro(maps, masks, max_fpr: float = DEFAULT_MAX_FPR) -> float | None:
    """Area under the PRO curve up to ``max_fpr``, divided by ``max_fpr`` (MVTec AD)."""
    curve = pro_curve(maps, masks)
    if curve is None:
        return None
    fpr, pro = curve
    return _trapezoid_upto(fpr, pro, max_fpr) / max_fpr


def subsample_stride(n_pixels: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> int:
    """Spatial stride s so that n_pixels / s**2 <= max_pixels (1 when everything fits)."""
    if n_pixels <= max_pixels:
        return 1
    return int(math.ceil(math.sqrt(n_pixels / max_pixels)))


def image_metrics(scores, labels) -> dict[str, float | None]:
    curve = binary_curve(scores, labels)
    f1, thr = f1_max_from_curve(curve)
    return {
        "image_auroc": auroc_from_curve(curve),
        "image_ap": ap_from_curve(curve),
        "image_f1_max": f1,
        "image_f1_threshold": thr,
    }


def pixel_metrics(
    maps,
    masks,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_fpr: float = DEFAULT_MAX_FPR,
) -> dict[str, float | int | None]:
    """Pixel AUROC / AP / F1-max and AUPRO over [N,H,W] maps and boolean masks."""
    maps = np.asarray(maps, dtype=np.float32)
    masks = np.asarray(masks).astype(bool)
    if maps.shape != masks.shape or maps.ndim != 3:
        raise ValueError(f"maps {maps.shape} and masks {masks.shape} must both be [N,H,W]")
    stride = subsample_stride(maps.size, max_pixels)
    if stride > 1:
        maps = np.ascontiguousarray(maps[:, ::stride, ::stride])
        masks = np.ascontiguousarray(masks[:, ::stride, ::stride])
    curve = binary_curve(maps, masks)
    f1, _ = f1_max_from_curve(curve)
    out: dict[str, float | int | None] = {
        "pixel_auroc": auroc_from_curve(curve),
        "pixel_ap": ap_from_curve(curve),
        "pixel_f1_max": f1,
    }
    del curve
    out["aupro"] = aupro(maps, masks, max_fpr)
    out["pixel_stride"] = stride
    return out
