"""Self-contained HTML evaluation report (every image base64-embedded, no external files).

Contents: the headline metrics and configuration, image- and pixel-level ROC curves,
normal-vs-defective image-score histograms, and heatmap overlays of the worst misses
(defective images with the lowest scores) and the worst false alarms (normal images with the
highest scores), with the F1-max threshold as the decision line.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from evaluation import metrics as M

N_EXAMPLES = 4


def _figure():
    from pretrain.extras import require

    matplotlib = require("matplotlib", "eval", why="evaluation reports draw figures")
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    _figure().close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def roc_png(
    scores: np.ndarray,
    labels: np.ndarray,
    maps=None,
    masks=None,
    *,
    curves: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
    title: str = "ROC",
) -> str:
    """Image ROC (and pixel ROC given maps and masks); ``curves``: more image-level curves,
    {label: (scores, labels)}, e.g. a subset of the images."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    for name, (s, y) in {"image": (scores, labels), **(curves or {})}.items():
        curve = M.binary_curve(s, y)
        if curve.n_pos and curve.n_neg:
            fpr, tpr = M.roc_points(curve)
            ax.plot(fpr, tpr, label=f"{name} (AUROC {M.auroc_from_curve(curve):.3f})")
    if maps is not None and masks is not None:
        stride = M.subsample_stride(maps.size, 1 << 22)  # a plot needs far fewer points
        pc = M.binary_curve(maps[:, ::stride, ::stride], masks[:, ::stride, ::stride])
        if pc.n_pos and pc.n_neg:
            fpr, tpr = M.roc_points(pc)
            ax.plot(fpr, tpr, label=f"pixel (AUROC {M.auroc_from_curve(pc):.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig)


def histogram_png(
    scores: np.ndarray,
    labels: np.ndarray,
    threshold: float | None,
    *,
    threshold_label: str = "F1-max threshold",
    calibrated: float | None = None,
) -> str:
    """Score histogram of normal and defective images with the F1-max threshold dashed and,
    when given, the threshold onboarding calibrated (from normal images only) solid red."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(5.0, 3.6))
    edges = scores if calibrated is None else np.r_[scores, calibrated]
    bins = np.histogram_bin_edges(edges, bins=30)
    ax.hist(scores[labels == 0], bins=bins, alpha=0.6, label=f"normal ({(labels == 0).sum()})")
    ax.hist(scores[labels == 1], bins=bins, alpha=0.6, label=f"defective ({(labels == 1).sum()})")
    if threshold is not None:
        ax.axvline(threshold, color="k", ls="--", lw=1, label=f"{threshold_label} {threshold:.3g}")
    if calibrated is not None:
        ax.axvline(
            calibrated, color="tab:red", lw=1.5, label=f"calibrated threshold {calibrated:.3g}"
        )
    ax.set_xlabel("image score (max of the anomaly map)")
    ax.set_ylabel("images")
    ax.legend(fontsize=8)
    return _png(fig)


def overlay_png(
    image: np.ndarray, amap: np.ndarray, mask: np.ndarray | None, vmin: float, vmax: float
) -> str:
    plt = _figure()
    fig, axes = plt.subplots(1, 2, figsize=(5.0, 2.6))
    axes[0].imshow(image)
    axes[0].set_title("image", fontsize=8)
    axes[1].imshow(image)
    axes[1].imshow(amap, cmap="jet", alpha=0.45, vmin=vmin, vmax=vmax)
    title = "anomaly map"
    if mask is not None and mask.any():
        axes[1].contour(mask.astype(float), levels=[0.5], colors="white", linewidths=0.8)
        title += " (white: ground truth)"
    axes[1].set_title(title, fontsize=8)
    for a in axes:
        a.axis("off")
    return _png(fig)


def _img(b64: str, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4f}"
    return html.escape(str(v))


def write_report(out_dir: Path | str, result: dict[str, Any], fs, out) -> Path:
    """Write ``index.html`` into ``out_dir`` and return its path.

    ``fs`` is the runner's FeatureSet (samples, masks, image size), ``out`` its MethodOutput.
    """
    from pretrain.preprocess import load_batch

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = fs.labels
    scores = out.scores
    threshold = out.metrics.get("image_f1_threshold")
    vmin = float(np.percentile(out.maps, 1))
    vmax = float(out.maps.max())

    def examples(idx: list[int], title: str) -> str:
        if not idx:
            return f"<h3>{title}</h3><p>none</p>"
        images = load_batch([fs.samples[i].path for i in idx], fs.image_size)
        cells = []
        for j, i in enumerate(idx):
            mask = fs.masks[i] if fs.masks is not None else None
            png = overlay_png(images[j], out.maps[i], mask, vmin, vmax)
            s = fs.samples[i]
            cap = f"{s.defect}/{s.path.name} score {scores[i]:.4f}"
            cells.append(
                f"<figure>{_img(png, cap)}<figcaption>{html.escape(cap)}</figcaption></figure>"
            )
        return f"<h3>{title}</h3><div class='row'>{''.join(cells)}</div>"

    defective = np.flatnonzero(labels == 1)
    normal = np.flatnonzero(labels == 0)
    misses = defective[np.argsort(scores[defective], kind="stable")][:N_EXAMPLES].tolist()
    alarms = normal[np.argsort(-scores[normal], kind="stable")][:N_EXAMPLES].tolist()

    from evaluation.runner import METRIC_KEYS

    headline = [k for k in METRIC_KEYS if k != "pixel_f1_max"] + ["n_train", "n_test", "seconds"]
    rows = "".join(f"<tr><th>{k}</th><td>{_fmt(result.get(k))}</td></tr>" for k in headline)
    point = result.get("operating_point")
    calibrated = point["threshold"] if point else None
    if point:
        for name, what in (("false_alarm", "normals"), ("detection", "defectives")):
            low_high = point[f"{name}_rate_95"]
            interval = f" (95 %: {low_high[0]:.1%} to {low_high[1]:.1%})" if low_high else ""
            value = point[f"{name}_rate"]
            shown = "n/a" if value is None else f"{value:.1%}{interval}"
            rows += (
                f"<tr><th>{name.replace('_', '-')} rate at the calibrated threshold</th>"
                f"<td>{point[name + 's']} of {point[what]} = {html.escape(shown)}</td></tr>"
            )
        rows += f"<tr><th>calibrated threshold</th><td>{_fmt(calibrated)}</td></tr>"
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in result.get("notes", []))
    title = (
        f"{result['category']}: {result['features']} features, {result['method']}, "
        f"{result['shots']} shots"
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; }} th, td {{ border: 1px solid #ccc; padding: 3px 8px; }}
th {{ text-align: left; background: #f4f4f4; }}
.row {{ display: flex; flex-wrap: wrap; gap: 12px; }}
figure {{ margin: 0; }} figcaption {{ font-size: 12px; }}
pre {{ background: #f7f7f7; padding: 8px; font-size: 12px; overflow-x: auto; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<table>{rows}</table>
<ul>{notes}</ul>
<h2>Curves</h2>
<div class="row">
{_img(roc_png(scores, labels, out.maps, fs.masks), "ROC curves")}
{_img(histogram_png(scores, labels, threshold, calibrated=calibrated), "score histogram")}
</div>
<h2>Examples</h2>
{examples(misses, "Worst misses (defective images with the lowest scores)")}
{examples(alarms, "Worst false alarms (normal images with the highest scores)")}
<h2>Configuration</h2>
<pre>{html.escape(json.dumps(result, indent=2, default=str))}</pre>
</body></html>
"""
    path = out_dir / "index.html"
    path.write_text(page)
    return path
