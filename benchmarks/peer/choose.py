"""The rule that picks the default detector (docs/BACKBONES.md, "Choosing the default
detector"), applied to the candidate rows of ``adqc bench anomalib --features candidate``.

Points: image AUROC of every class, pixel AUROC and AUPRO where masks exist. (1) Most points
>= anomalib PatchCore (same run) wins; (2) ties go to the higher mean of (candidate -
anomalib) over the points; (3) within ``TIE`` of that mean, fewer members win, then the
smaller input (``s8-patchcore@320`` reads 320 px images; a plain name the peer's 224).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

METRICS = ("image_auroc", "pixel_auroc", "aupro")
TIE = 0.005
PEER_SIZE = 224


def input_size(name: str, default: int = PEER_SIZE) -> int:
    """The input size a candidate's or feature source's name says (``name@320`` -> 320),
    else ``default`` (the peer's)."""
    return int(name.rsplit("@", 1)[1]) if "@" in name else default


@dataclass(frozen=True)
class Standing:
    candidate: str
    members: int
    wins: int
    points: int
    mean_diff: float
    diffs: dict[str, float]  # "class metric" -> candidate - anomalib


def standings(rows: list[dict[str, Any]], shots: int = 8) -> list[Standing]:
    """Every candidate's standing, best first by the rule."""
    at_k = [r for r in rows if str(r["shots"]) == str(shots)]
    peer = {r["class"]: r for r in at_k if r["source"] == "anomalib" and r["method"] == "patchcore"}
    by_candidate: dict[str, list[dict[str, Any]]] = {}
    for r in at_k:
        if r["source"] == "adqc" and r["features"] == "candidate" and r["class"] in peer:
            by_candidate.setdefault(r["method"], []).append(r)
    out = []
    for name, cand_rows in by_candidate.items():
        diffs = {}
        for r in cand_rows:
            for metric in METRICS:
                a, b = peer[r["class"]].get(metric), r.get(metric)
                if a is not None and b is not None:
                    diffs[f"{r['class']} {metric}"] = float(b) - float(a)
        wins = sum(d >= 0 for d in diffs.values())
        mean = sum(diffs.values()) / len(diffs) if diffs else float("nan")
        out.append(Standing(name, name.count("+") + 1, wins, len(diffs), mean, diffs))
    out.sort(key=lambda s: (-s.wins, -s.mean_diff))
    # (3): within TIE of the best mean among those with the most wins, fewer members first,
    # then the smaller input
    if out:
        top = [s for s in out if s.wins == out[0].wins]
        close = [s for s in top if out[0].mean_diff - s.mean_diff <= TIE]
        close.sort(key=lambda s: (s.members, input_size(s.candidate), -s.mean_diff))
        rest = [s for s in out if s not in close]
        out = close + rest
    return out


def markdown(rows: list[dict[str, Any]], shots: int = 8) -> str:
    """The standings as a table, the winner first."""
    table = standings(rows, shots)
    lines = [
        "| candidate | points >= anomalib PatchCore | mean (candidate - anomalib) | misses |",
        "|---|---|---|---|",
    ]
    for s in table:
        misses = ", ".join(f"{k} {v:+.4f}" for k, v in s.diffs.items() if v < 0) or "none"
        lines.append(f"| {s.candidate} | {s.wins} / {s.points} | {s.mean_diff:+.4f} | {misses} |")
    return "\n".join(lines)
