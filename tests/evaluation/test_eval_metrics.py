"""Metrics against scikit-learn and brute-force implementations on constructed maps."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from evaluation import metrics


def _rng(seed=0):
    return np.random.default_rng(seed)


@pytest.mark.parametrize("ties", [False, True])
def test_auroc_ap_f1_match_sklearn(ties):
    rng = _rng(1)
    y = rng.random(500) < 0.3
    s = rng.normal(size=500) + 1.2 * y
    if ties:
        s = np.round(s, 1)  # many tied scores
    assert metrics.auroc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert metrics.average_precision(s, y) == pytest.approx(
        average_precision_score(y, s), abs=1e-12
    )
    p, r, _ = precision_recall_curve(y, s)
    f1 = np.max(np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-300), 0))
    assert metrics.f1_max(s, y) == pytest.approx(f1, abs=1e-12)


def test_degenerate_and_perfect():
    assert metrics.auroc([0.1, 0.2], [0, 0]) is None
    assert metrics.average_precision([0.1, 0.2], [0, 0]) is None
    assert metrics.auroc([0.1, 0.9], [0, 1]) == 1.0
    assert metrics.auroc([0.9, 0.1], [0, 1]) == 0.0
    assert metrics.auroc([0.5, 0.5], [0, 1]) == 0.5  # a tie is half a win, never a collapse
    with pytest.raises(ValueError, match="NaN"):
        metrics.auroc([np.nan, 1.0], [0, 1])


def _brute_aupro(maps, masks, max_fpr):
    """Direct definition: for every distinct threshold, FPR over normal pixels and the mean
    per-component overlap; trapezoid up to max_fpr with linear interpolation; / max_fpr."""
    comps = []
    for i in range(masks.shape[0]):
        lab, n = ndimage.label(masks[i], structure=np.ones((3, 3)))
        comps += [(i, lab == k) for k in range(1, n + 1)]
    ok = ~masks
    pts = [(0.0, 0.0)]
    for t in np.unique(maps)[::-1]:
        pred = maps >= t
        fpr = (pred & ok).sum() / ok.sum()
        pro = np.mean([pred[i][c].mean() for i, c in comps])
        pts.append((fpr, pro))
    x = np.array([p[0] for p in pts])
    y = np.array([p[1] for p in pts])
    area = 0.0
    for j in range(1, len(x)):
        x0, x1, y0, y1 = x[j - 1], x[j], y[j - 1], y[j]
        if x0 >= max_fpr:
            break
        if x1 <= max_fpr:
            area += 0.5 * (y0 + y1) * (x1 - x0)
        else:
            y_at = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
            area += 0.5 * (y0 + y_at) * (max_fpr - x0)
    return area / max_fpr


def _constructed(seed=0, n=4, size=16):
    rng = _rng(seed)
    masks = np.zeros((n, size, size), dtype=bool)
    masks[0, 2:6, 2:6] = True  # two components of very different size in one image
    masks[0, 10:11, 12:13] = True
    masks[1, 5:12, 3:9] = True
    # images 2.. stay normal: they only contribute false positives
    maps = rng.normal(size=masks.shape) + 1.5 * masks
    return np.round(maps, 2).astype(np.float32), masks


@pytest.mark.parametrize("max_fpr", [0.3, 0.05, 1.0])
def test_aupro_matches_brute_force(max_fpr):
    maps, masks = _constructed()
    assert metrics.aupro(maps, masks, max_fpr) == pytest.approx(
        _brute_aupro(maps, masks, max_fpr), abs=1e-9
    )


def test_aupro_perfect_and_not_renormalised():
    maps, masks = _constructed()
    perfect = masks.astype(np.float32) + 0.01 * _rng(3).random(masks.shape).astype(np.float32)
    assert metrics.aupro(perfect, masks) == pytest.approx(1.0)
    # A random map's PRO curve follows the diagonal: its AUPRO up to 0.3 is ~0.15 (area 0.045
    # divided by 0.3). Renormalising by the kept FPR range would not give that value.
    rng = _rng(4)
    big = np.zeros((8, 64, 64), dtype=bool)
    big[:, 20:40, 20:40] = True
    rand = rng.random(big.shape).astype(np.float32)
    assert metrics.aupro(rand, big) == pytest.approx(0.15, abs=0.02)
    assert metrics.aupro(rand, np.zeros_like(big)) is None


def test_pixel_metrics_exact_and_subsampled():
    maps, masks = _constructed(size=32)
    full = metrics.pixel_metrics(maps, masks)
    assert full["pixel_stride"] == 1
    assert full["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()))
    assert full["pixel_ap"] == pytest.approx(average_precision_score(masks.ravel(), maps.ravel()))
    assert full["aupro"] == pytest.approx(_brute_aupro(maps, masks, 0.3), abs=1e-9)
    sub = metrics.pixel_metrics(maps, masks, max_pixels=maps.size // 4)
    assert sub["pixel_stride"] == 2
    s_maps, s_masks = maps[:, ::2, ::2], masks[:, ::2, ::2]
    assert sub["pixel_auroc"] == pytest.approx(roc_auc_score(s_masks.ravel(), s_maps.ravel()))


def test_image_metrics_keys():
    out = metrics.image_metrics([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    assert out["image_auroc"] == pytest.approx(0.75)
    assert set(out) == {"image_auroc", "image_ap", "image_f1_max", "image_f1_threshold"}
