"""``adqc bench accuracy``: features x methods x shots over several categories.

Backbone features of a category are computed once and shared by every (features kind, K,
method); residual/projected features once per (kind, K) and shared by the methods. Rows are
written to the JSON file as they finish (an interrupted run keeps what it measured), and the
markdown table goes between generated-section markers in the target file, so hand-written text
around it (docs/RESULTS.md) is kept.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from evaluation.datasets import load_category
from evaluation.runner import (
    DEFAULT_BACKBONE,
    DEFAULT_POOL_CAP,
    EvalConfig,
    LoadedModel,
    feature_set,
    load_model,
    raw_features,
    result_dict,
    run_method,
    shots_label,
    untrained_warning,
    write_json,
)
from pretrain.detectors import UnsupportedCombinationError, check_supported

BEGIN = "<!-- adqc bench accuracy {section}: generated, do not edit by hand -->"
END = "<!-- adqc bench accuracy {section}: end -->"
METRICS = (("image_auroc", "I-AUROC"), ("pixel_auroc", "P-AUROC"), ("aupro", "AUPRO"))
HEAVY_KEYS = ("config", "versions")
STATUS_CELLS = {"unsupported": "—", "skipped": "skipped"}
CHECKPOINT_FREE_KINDS = ("raw", "residual")  # rows that only depend on the backbone
REUSE_MUST_MATCH = ("backbone", "image_size", "max_test", "pool_cap")


def reusable_rows(previous: dict[str, Any], config: dict[str, Any]) -> dict[tuple, dict]:
    """Rows of an earlier run that no checkpoint influences (raw and residual features), keyed
    by (category, features, method, shots), for re-evaluating a new checkpoint without
    recomputing the baseline.

    Raises:
        ValueError: the earlier run used another backbone, image size, test subset or pool cap.
    """
    before = previous.get("config", {})
    differs = [k for k in REUSE_MUST_MATCH if before.get(k) != config.get(k)]
    if differs:
        detail = ", ".join(f"{k} {before.get(k)!r} vs {config.get(k)!r}" for k in differs)
        raise ValueError(f"--reuse: the earlier run is not comparable ({detail})")
    return {
        (r["category"], r["features"], r["method"], r["shots"]): r
        for r in previous.get("rows", [])
        if r.get("features") in CHECKPOINT_FREE_KINDS and r.get("status") == "ok"
    }


def run_accuracy(
    data: Sequence[str],
    features: Sequence[str] = ("raw", "adpretrain"),
    methods: Sequence[str] = ("featurenorm", "patchcore", "padim"),
    shots: Sequence[int | None] = (2, 4, 8, None),
    backbone: str = DEFAULT_BACKBONE,
    checkpoint: str | None = None,
    weights: str | None = None,
    image_size: int | None = None,
    max_test: int | None = None,
    pool_cap: int = DEFAULT_POOL_CAP,
    batch_size: int = 16,
    skip: Sequence[tuple[str, int | None]] = (),
    json_path: Path | str | None = None,
    show_progress: bool = True,
    on_row: Callable[[dict[str, Any]], None] | None = None,
    reuse: Path | str | None = None,
) -> dict[str, Any]:
    """Run the grid; returns {"rows": [...], "config": {...}, "checkpoint": ..., "seconds"}.

    With ``reuse`` (an earlier run's JSON), its raw and residual rows are copied (marked
    ``reused_from``) instead of recomputed: they do not depend on the checkpoint.
    """
    t0 = time.perf_counter()
    kinds = list(dict.fromkeys(features))
    # One model serves every kind: raw and residual features only use its backbone.
    model_kind = "adpretrain" if "adpretrain" in kinds else "raw"
    base = EvalConfig(
        category="",
        features=model_kind,
        method="patchcore",
        backbone=backbone,
        checkpoint=checkpoint,
        weights=weights,
        image_size=image_size,
        pool_cap=pool_cap,
        max_test=max_test,
        batch_size=batch_size,
    )
    lm: LoadedModel = load_model(base)
    size = image_size or lm.spec.image_size
    doc: dict[str, Any] = {
        "command": " ".join(shlex.quote(a) for a in ["adqc", *sys.argv[1:]]),
        "config": {
            "data": list(data),
            "features": kinds,
            "methods": list(methods),
            "shots": [shots_label(k) for k in shots],
            "backbone": backbone,
            "image_size": size,
            "max_test": max_test,
            "pool_cap": pool_cap,
            "skip": [f"{m}:{shots_label(k)}" for m, k in skip],
            "cpus": os.cpu_count(),
        },
        "checkpoint": lm.checkpoint or None,
        "rows": [],
        "seconds": 0.0,
    }
    reused: dict[tuple, dict] = {}
    if reuse is not None:
        doc["config"]["reuse"] = str(reuse)
        reused = reusable_rows(json.loads(Path(reuse).read_text()), doc["config"])
    warning = untrained_warning(lm.checkpoint)
    if warning:
        doc["warning"] = warning

    def emit(row: dict[str, Any]) -> None:
        doc["rows"].append(row)
        doc["seconds"] = round(time.perf_counter() - t0, 1)
        if json_path:
            write_json(json_path, doc)
        if on_row:
            on_row(row)

    skip_set = {(m, k) for m, k in skip}
    for spec in data:
        category = load_category(spec)
        n_max = None if None in shots else max(shots)
        raw = raw_features(
            lm, category, size, n_max, max_test, batch_size, show_progress=show_progress
        )
        for k in shots:
            for kind in kinds:
                todo = []
                for method in methods:
                    row_base = {
                        "category": category.name,
                        "features": kind,
                        "method": method,
                        "shots": shots_label(k),
                    }
                    try:
                        check_supported(method, kind)
                    except UnsupportedCombinationError:
                        emit({**row_base, "status": "unsupported"})
                        continue
                    if (method, k) in skip_set:
                        emit({**row_base, "status": "skipped"})
                        continue
                    earlier = reused.get((category.name, kind, method, shots_label(k)))
                    if earlier is not None:
                        emit({**earlier, "reused_from": str(reuse)})
                        continue
                    todo.append(method)
                if not todo:
                    continue
                need_train = any(m != "featurenorm" for m in todo)
                fs = feature_set(lm, raw, kind, k, pool_cap, need_train, batch_size, show_progress)
                for method in todo:
                    cfg = EvalConfig(
                        category=str(spec),
                        features=kind,
                        method=method,
                        shots=k,
                        backbone=backbone,
                        checkpoint=checkpoint,
                        weights=weights,
                        image_size=size,
                        pool_cap=pool_cap,
                        max_test=max_test,
                        batch_size=batch_size,
                    )
                    out = run_method(fs, method, batch_size, show_progress)
                    seconds = raw.seconds + fs.seconds + out.fit_seconds + out.score_seconds
                    row = result_dict(cfg, category, fs, out, lm.checkpoint, seconds)
                    row["timing"]["features_s"] = round(raw.seconds + fs.seconds, 3)
                    row["status"] = "ok"
                    for key in HEAVY_KEYS:
                        row.pop(key, None)
                    row.pop("checkpoint", None)
                    emit(row)
                del fs
        del raw
    doc["seconds"] = round(time.perf_counter() - t0, 1)
    if json_path:
        write_json(json_path, doc)
    return doc


def _fmt(v: Any) -> str:
    return "–" if v is None else f"{v:.3f}"


def markdown_table(doc: dict[str, Any]) -> str:
    """One table per category: rows (method, K), columns metric x features kind."""
    rows = doc["rows"]
    kinds = doc["config"]["features"]
    lines: list[str] = []
    ck = doc.get("checkpoint") or {}
    lines.append(f"Command: `{doc['command']}`")
    lines.append("")
    meta = [
        f"backbone {doc['config']['backbone']}",
        f"image size {doc['config']['image_size']} (resize, no crop)",
        f"reference pool cap {doc['config']['pool_cap']}",
    ]
    if ck:
        meta.append(f"checkpoint `{ck.get('model_id')}` (trained: {ck.get('trained')})")
    if doc["config"].get("max_test"):
        meta.append(f"test images capped at {doc['config']['max_test']} per category")
    meta.append(f"{doc['seconds']:.0f} s on {doc['config']['cpus']} CPU cores")
    lines.append("; ".join(meta) + ".")
    if doc.get("warning"):
        lines += ["", f"**WARNING: {doc['warning']}**"]
    categories = list(dict.fromkeys(r["category"] for r in rows))
    for cat in categories:
        cat_rows = [r for r in rows if r["category"] == cat]
        ok = [r for r in cat_rows if r.get("status") == "ok"]
        counts = ok[0] if ok else {}
        lines += ["", f"### {cat}"]
        if counts:
            lines.append(
                f"test images: {counts['n_test_normal']} normal + "
                f"{counts['n_test_defective']} defective"
            )
        if ok and all(r.get("pixel_auroc") is None for r in ok):
            lines.append("no pixel masks: image-level metrics only")
        # metrics that no row of this category has (pixel metrics without masks) are left out
        metrics = [(m, label) for m, label in METRICS if any(r.get(m) is not None for r in ok)]
        lines.append("")
        header = ["method", "K"]
        for _, label in metrics:
            header += [f"{label} {kind}" for kind in kinds]
        if "raw" in kinds and "adpretrain" in kinds:
            header.append("adpretrain >= raw (I-AUROC)")
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        keys = list(dict.fromkeys((r["method"], r["shots"]) for r in cat_rows))
        for method, k in keys:
            by_kind = {
                r["features"]: r for r in cat_rows if (r["method"], r["shots"]) == (method, k)
            }
            cells = [method, k]
            for metric, _ in metrics:
                for kind in kinds:
                    r = by_kind.get(kind)
                    if r is None:
                        cells.append("")
                    elif r.get("status") == "ok":
                        cells.append(_fmt(r.get(metric)))
                    else:
                        cells.append(STATUS_CELLS.get(r.get("status", ""), r.get("status", "")))
            if "raw" in kinds and "adpretrain" in kinds:
                a, b = by_kind.get("adpretrain"), by_kind.get("raw")
                ok_pair = a and b and a.get("status") == b.get("status") == "ok"
                if ok_pair and a["image_auroc"] is not None and b["image_auroc"] is not None:
                    diff = a["image_auroc"] - b["image_auroc"]
                    cells.append(("yes" if diff >= 0 else "NO") + f" ({diff:+.3f})")
                else:
                    cells.append("n/a")
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    if any(r.get("status") == "unsupported" for r in rows):
        lines += [
            "",
            "—: not applicable: FeatureNorm on raw backbone features is refused (the norm of an "
            "ImageNet feature is not an anomaly score; docs/EVALUATION.md).",
        ]
    return "\n".join(lines) + "\n"


def write_markdown(path: Path | str, table: str, section: str = "main") -> None:
    """Replace the generated section ``section`` of ``path`` (append it when absent)."""
    path = Path(path)
    begin, end = BEGIN.format(section=section), END.format(section=section)
    block = f"{begin}\n{table}{end}\n"
    text = path.read_text() if path.is_file() else ""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail.lstrip("\n")
    else:
        text = (text.rstrip("\n") + "\n\n" if text else "") + block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
