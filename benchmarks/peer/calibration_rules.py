"""Normal-only threshold rules for the default detector, measured on real classes
(issue 11, section 5; the rules and the choice are in docs/ONBOARDING.md).

For each class and reference group at K shots: the default member (``s8-patchcore``) is fitted
on the K references, the test images are scored, and each reference plus its horizontal flip,
vertical flip and 180-degree rotation is scored leave-one-out against the other K-1. Each rule
turns those normal scores into a threshold with ``inference.calibration.threshold_rule``; the
observed false-alarm rate on good test images and the detection rate on defective ones follow.

    python -m benchmarks.peer.calibration_rules --data ../shared/datasets/mvtec_ad/bottle ...
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from inference.calibration import DEFAULT_TARGET_FAR, threshold_rule

VIEWS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "hflip": lambda a: a[:, :, ::-1],
    "vflip": lambda a: a[:, ::-1],
    "rot180": lambda a: a[:, ::-1, ::-1],
}


#: the rules of docs/ONBOARDING.md ("Can the leave-one-out rule be improved?", "R3")
RULES = ("R0", "R1", "R2", "R3")


def rule_scores(rule: str, loo: np.ndarray, views: np.ndarray) -> np.ndarray:
    """The normal scores a rule feeds to the threshold rule.

    loo: [K] leave-one-out scores; views: [V,K] the same for each flipped/rotated view."""
    if rule in ("R0", "R3"):  # R3: the same scores, bounded on the log scale
        return loo
    if rule == "R1":
        return np.concatenate([loo, views.ravel()])
    if rule == "R2":
        return np.vstack([loo[None], views]).max(axis=0)
    raise ValueError(f"unknown rule {rule!r}")


def operating_point(
    groups: list[dict[str, np.ndarray]], rule: str, target: float = DEFAULT_TARGET_FAR
) -> dict[str, float | int | None]:
    """False-alarm and detection rates of ``rule`` pooled over a class's groups."""
    fa = normals = hits = defects = 0
    scale = "log" if rule == "R3" else "linear"
    for g in groups:
        normal = rule_scores(rule, g["loo"], g["views"]).tolist()
        threshold, _ = threshold_rule(normal, target, scale=scale)
        scores, labels = g["test"], g["labels"]
        fa += int((scores[labels == 0] > threshold).sum())
        hits += int((scores[labels == 1] > threshold).sum())
        normals += int((labels == 0).sum())
        defects += int((labels == 1).sum())
    return {
        "false_alarm_rate": fa / normals if normals else None,
        "detection_rate": hits / defects if defects else None,
        "n_normal": normals,
        "n_defective": defects,
    }


def group_shift(groups: list[dict[str, np.ndarray]], target: float = DEFAULT_TARGET_FAR) -> list:
    """Per group, how the good test images sit against the references: the R0 threshold, the
    references' leave-one-out scores (mean, max), the good test images' median and max score,
    their median over the LOO mean (``shift``: 1 = the references predict the good test images)
    and the false alarms at the threshold. A large shift is a change between the references and
    the good test images that no rule over the references' own scores can see."""
    out = []
    for g in groups:
        threshold, _ = threshold_rule(g["loo"].tolist(), target)
        good = g["test"][g["labels"] == 0]
        loo_mean = float(np.mean(g["loo"]))
        out.append(
            {
                "threshold": round(threshold, 4),
                "loo_mean": round(loo_mean, 4),
                "loo_max": round(float(np.max(g["loo"])), 4),
                "n_good": int(good.size),
                "good_median": round(float(np.median(good)), 4) if good.size else None,
                "good_max": round(float(np.max(good)), 4) if good.size else None,
                "shift": round(float(np.median(good)) / loo_mean, 3) if good.size else None,
                "false_alarms": int((good > threshold).sum()),
            }
        )
    return out


def measure_class(spec: str, shots: int, size: int = 224) -> list[dict[str, np.ndarray]]:
    """Per group: test scores and labels, references' leave-one-out scores, plain and viewed."""
    from benchmarks.peer import exchange
    from benchmarks.peer.adqc_side import BATCH
    from benchmarks.peer.cases import load_bench_class
    from inference.stride8 import in_batches, shared_stride8
    from pretrain.detectors import image_scores, make_detector
    from pretrain.detectors.ensemble import s8_patchcore_config

    member = s8_patchcore_config(size)
    extractor = shared_stride8(size)
    bc = load_bench_class(spec, shots)
    inputs = exchange.prepare(bc, shots, size)
    labels = np.asarray(inputs.labels)
    out, offset = [], 0
    for g in range(len(bc.groups)):
        refs, test = inputs.refs[g], inputs.test[g]
        train = in_batches(extractor, refs, BATCH)
        det = make_detector(member)
        det.fit(train)
        k = len(refs)
        loo, views = np.empty(k), np.empty((len(VIEWS), k))
        with torch.inference_mode():
            scores = image_scores(
                det.anomaly_maps(in_batches(extractor, test, BATCH), size)
            ).numpy()
            for i in range(k):
                rest = make_detector(member)
                rest.fit([level[[j for j in range(k) if j != i]] for level in train])
                loo[i] = float(image_scores(rest.anomaly_maps([t[i : i + 1] for t in train], size)))
                for v, view in enumerate(VIEWS.values()):
                    viewed = in_batches(
                        extractor, np.ascontiguousarray(view(refs[i : i + 1])), BATCH
                    )
                    views[v, i] = float(image_scores(rest.anomaly_maps(viewed, size)))
        out.append(
            {
                "test": scores,
                "labels": labels[offset : offset + len(test)],
                "loo": loo,
                "views": views,
            }
        )
        offset += len(test)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", action="append", required=True)
    parser.add_argument("--shots", type=int, default=8)
    parser.add_argument(
        "--image-size", type=int, default=224, help="input px (the default detector: 256)"
    )
    parser.add_argument("--json", type=Path, default=Path("docs/results/calibration_rules.json"))
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t0 = time.perf_counter()
    rows = {}
    for spec in args.data:
        groups = measure_class(spec, args.shots, args.image_size)
        rows[spec] = {rule: operating_point(groups, rule) for rule in RULES}
        rows[spec]["groups"] = group_shift(groups)
        print(spec, json.dumps(rows[spec]), flush=True)
    doc = {
        "command": "python -m benchmarks.peer.calibration_rules "
        + " ".join(f"--data {d}" for d in args.data)
        + f" --image-size {args.image_size} --json {args.json}",
        "shots": args.shots,
        "image_size": args.image_size,
        "target_far": DEFAULT_TARGET_FAR,
        "seconds": round(time.perf_counter() - t0, 1),
        "classes": rows,
    }
    args.json.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
