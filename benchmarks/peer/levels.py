"""``adqc bench levels``: the MobileNetV2 level candidates of docs/BACKBONES.md on the detectors.

For each candidate (taps, input size) and class: raw PatchCore, raw PaDiM and residual
FeatureNorm at K shots (adqc's detectors unchanged), on each class's test set capped at
``max_test`` images (stratified, seed 0: the same images for every candidate). Then the rule
written in docs/BACKBONES.md before the runs: per class, rank the candidates on every
(detector, metric) point (ties share the mean rank), average per class, then over classes;
lowest wins; within ``TIE`` of the best, fewer tokens per image wins, then input 224, then A.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import rankdata

from benchmarks.peer import adqc_side, exchange, scoring
from benchmarks.peer.cases import capped, load_bench_class
from evaluation.runner import LoadedModel
from pretrain.backbones.cnn import MOBILENET_V2_BLOCKS

TIE = 0.10
ROWS = (("raw", "patchcore"), ("raw", "padim"), ("residual", "featurenorm"))


@dataclass(frozen=True)
class Candidate:
    id: str
    taps: tuple[int, ...]
    image_size: int

    def tokens(self) -> int:
        """Tokens per image over all levels (what the projector and residual search pay)."""
        return sum((self.image_size // MOBILENET_V2_BLOCKS[t][1]) ** 2 for t in self.taps)


CANDIDATES = (
    Candidate("A", (10, 13, 17), 224),
    Candidate("B", (6, 13), 224),
    Candidate("C", (3, 6, 13), 224),
    Candidate("D", (6, 10, 13), 224),
    Candidate("E", (6, 13, 17), 224),
    Candidate("F", (6, 13), 256),
    Candidate("G", (10, 13, 17), 256),
)


def candidate_model(c: Candidate) -> LoadedModel:
    from pretrain.backbones.mobilenet_variants import tapped_mobilenet_v2
    from pretrain.model import FeatureModel

    return LoadedModel(FeatureModel(tapped_mobilenet_v2(c.taps), None), {})


def measure(
    specs: list[str],
    candidates: tuple[Candidate, ...] = CANDIDATES,
    shots: int = 8,
    max_test: int | None = 60,
    neighbourhood_check: tuple[str, ...] = ("A", "B"),
    log=print,
) -> list[dict[str, Any]]:
    """Rows (candidate, class, features, method, metrics, images/s) for every candidate."""
    rows: list[dict[str, Any]] = []
    classes = [capped(load_bench_class(s, shots), max_test) for s in specs]
    for c in candidates:
        lm = candidate_model(c)
        for bc in classes:
            t0 = time.perf_counter()
            inputs = exchange.prepare(bc, shots, c.image_size)
            sizes = [len(g.test) for g in bc.groups]
            methods = ["featurenorm", "patchcore", "padim"]
            if c.id in neighbourhood_check:
                methods.append("patchcore_n1")
            keep = {*ROWS, ("raw", "patchcore_n1")}
            outs = adqc_side.run(
                lm, inputs, ["raw", "residual"], methods, only=keep, calibrate_threshold=False
            )
            for o in outs:
                m = scoring.metrics_of(o.scores, inputs.labels, o.maps, inputs.masks, sizes)
                row = scoring.make_row(
                    class_name=bc.name,
                    shots=shots,
                    source="adqc",
                    features=o.features,
                    method=o.method,
                    metrics=m,
                    labels=inputs.labels,
                    seconds=o.seconds,
                    extra={"candidate": c.id, "taps": list(c.taps), "image_size": c.image_size},
                )
                rows.append(row)
                log(
                    f"{c.id} {bc.name} {o.features} {o.method}: I {m['image_auroc']} "
                    f"P {m['pixel_auroc']} AUPRO {m['aupro']}"
                )
            log(f"{c.id} {bc.name}: {time.perf_counter() - t0:.0f} s")
    return rows


def decide(rows: list[dict[str, Any]], candidates=CANDIDATES) -> dict[str, Any]:
    """Apply the rule of docs/BACKBONES.md; returns scores per candidate and the winner."""
    ids = [c.id for c in candidates]
    ranked = [r for r in rows if (r["features"], r["method"]) in ROWS and r["candidate"] in ids]
    class_scores: dict[str, dict[str, float]] = {}
    for cls in sorted({r["class"] for r in ranked}):
        points = []
        for feat, method in ROWS:
            for metric in ("image_auroc", "pixel_auroc", "aupro"):
                vals = {
                    r["candidate"]: r.get(metric)
                    for r in ranked
                    if r["class"] == cls and r["features"] == feat and r["method"] == method
                }
                if len(vals) != len(ids) or any(v is None for v in vals.values()):
                    continue
                ranks = rankdata([-vals[i] for i in ids], method="average")
                points.append(ranks)
        if points:
            mean = np.mean(points, axis=0)
            class_scores[cls] = {i: float(m) for i, m in zip(ids, mean, strict=True)}
    score = {i: float(np.mean([cs[i] for cs in class_scores.values()])) for i in ids}
    best = min(score.values())
    tied = [c for c in candidates if score[c.id] <= best + TIE]
    tied.sort(key=lambda c: (c.tokens(), c.image_size != 224, c.id != "A", score[c.id]))
    return {
        "class_scores": class_scores,
        "score": score,
        "tied": [c.id for c in tied],
        "winner": tied[0].id,
        "tokens": {c.id: c.tokens() for c in candidates},
    }


def markdown(doc: dict[str, Any]) -> str:
    """The decision (scores per candidate) and every measured point."""
    from benchmarks.peer.table import _fmt

    rows, d = doc["rows"], doc["decision"]
    classes = sorted(d["class_scores"])
    cands = {c.id: c for c in CANDIDATES}
    lines = [
        f"Command: `{doc['command']}` ({doc['created_at']}, {doc['seconds']:.0f} s on 2 shared "
        "CPU cores)",
        "",
        "Mean rank (1 = best) per class over raw PatchCore, raw PaDiM and residual "
        "FeatureNorm x (image AUROC, pixel AUROC, AUPRO where defined):",
        "",
        "| id | taps | input | tokens/image | " + " | ".join(classes) + " | score |",
        "|---|---|---|---|" + "---|" * len(classes) + "---|",
    ]
    for cid, score in sorted(d["score"].items(), key=lambda t: t[1]):
        c = cands[cid]
        per = " | ".join(f"{d['class_scores'][k][cid]:.2f}" for k in classes)
        lines.append(
            f"| {cid} | {','.join(map(str, c.taps))} | {c.image_size} | {c.tokens()} | {per} "
            f"| **{score:.2f}** |"
        )
    lines += [
        "",
        f"Tied within {TIE} of the best: {', '.join(d['tied'])}; winner by the rule: "
        f"**{d['winner']}**.",
        "",
        "Every point (image AUROC / pixel AUROC / AUPRO; `patchcore_n1` = no 3x3 aggregation, "
        "side check, not ranked):",
        "",
        "| id | detector | " + " | ".join(classes) + " |",
        "|---|---|" + "---|" * len(classes),
    ]
    by = {(r["candidate"], r["features"], r["method"], r["class"]): r for r in rows}
    keys = sorted({(r["candidate"], r["features"], r["method"]) for r in rows})
    for cid, feat, method in keys:
        cells = []
        for k in classes:
            r = by.get((cid, feat, method, k))
            if r is None:
                cells.append("–")
                continue
            parts = [_fmt(r["image_auroc"])]
            if r.get("pixel_auroc") is not None:
                parts += [_fmt(r["pixel_auroc"]), _fmt(r["aupro"])]
            cells.append(" / ".join(parts))
        lines.append(f"| {cid} | {feat} {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
