"""The side-by-side markdown: anomalib's PatchCore/PaDiM next to adqc's rows, per class and K."""

from __future__ import annotations

from typing import Any

SOURCES_ORDER = ("anomalib", "adqc")
FEATURES_ORDER = ("-", "raw", "residual", "adpretrain")
METHODS_ORDER = ("featurenorm", "patchcore", "padim")
METHOD_NAMES = {"featurenorm": "FeatureNorm", "patchcore": "PatchCore", "padim": "PaDiM"}
METRICS = ("image_auroc", "pixel_auroc", "aupro")


def row_label(row: dict[str, Any]) -> str:
    name = METHOD_NAMES.get(row["method"], row["method"])
    if row["source"] == "anomalib":
        return f"anomalib {name}"
    return f"adqc {row['features']} {name}"


def _order(row: dict[str, Any]) -> tuple:
    def idx(seq: tuple, v: str) -> int:
        return seq.index(v) if v in seq else len(seq)

    return (
        idx(SOURCES_ORDER, row["source"]),
        idx(FEATURES_ORDER, row["features"]),
        idx(METHODS_ORDER, row["method"]),
    )


def _shots_order(k: Any) -> int:
    return 10**9 if str(k) == "all" else int(k)


def _fmt(v: Any) -> str:
    return "–" if v is None else f"{v:.3f}"


def _cell(row: dict[str, Any] | None, has_masks: bool, best: dict[str, float]) -> str:
    if row is None:
        return "not run"
    parts = []
    for m in METRICS if has_masks else METRICS[:1]:
        text = _fmt(row.get(m))
        if row.get(m) is not None and best.get(m) is not None and row[m] >= best[m] - 1e-12:
            text = f"**{text}**"
        parts.append(text)
    return " / ".join(parts)


def class_has_masks(rows: list[dict[str, Any]]) -> bool:
    return any(r.get("pixel_auroc") is not None for r in rows)


def overview(rows: list[dict[str, Any]], shots: int) -> str:
    """One line per detector, one column per class (image AUROC / pixel AUROC / AUPRO)."""
    rows = [r for r in rows if str(r["shots"]) == str(shots)]
    classes = sorted({r["class"] for r in rows})
    labels = sorted({(row_label(r), _order(r)) for r in rows}, key=lambda t: t[1])
    by = {(r["class"], row_label(r)): r for r in rows}
    masks = {c: class_has_masks([r for r in rows if r["class"] == c]) for c in classes}
    best = {
        c: {
            m: max((r[m] for r in rows if r["class"] == c and r.get(m) is not None), default=None)
            for m in METRICS
        }
        for c in classes
    }
    head = [f"{c} ({'I / P / AUPRO' if masks[c] else 'I'})" for c in classes]
    lines = [
        f"| {shots} shots | " + " | ".join(head) + " |",
        "|---|" + "---|" * len(classes),
    ]
    for label, _ in labels:
        cells = [_cell(by.get((c, label)), masks[c], best[c]) for c in classes]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def detail(rows: list[dict[str, Any]], class_name: str) -> str:
    """Every K and row of one class, with images/s and the per-group mean where grouped."""
    rows = sorted(
        (r for r in rows if r["class"] == class_name),
        key=lambda r: (_shots_order(r["shots"]), _order(r)),
    )
    if not rows:
        return ""
    grouped = any("mean_group_image_auroc" in r for r in rows)
    first = rows[0]
    head = ["K", "detector", "I-AUROC"]
    if grouped:
        head.append("I-AUROC mean over groups")
    head += ["P-AUROC", "AUPRO", "images/s"]
    lines = [
        f"#### {class_name}",
        f"test images: {first['n_test_normal']} normal + {first['n_test_defective']} defective",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        cells = [str(r["shots"]), row_label(r), _fmt(r.get("image_auroc"))]
        if grouped:
            cells.append(_fmt(r.get("mean_group_image_auroc")))
        cells += [_fmt(r.get("pixel_auroc")), _fmt(r.get("aupro"))]
        ips = r.get("images_per_s")
        cells.append("–" if ips is None else f"{ips:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def verdict(rows: list[dict[str, Any]], shots: int) -> str:
    """Per adqc row and class: metrics where it is below anomalib PatchCore at this K."""
    rows = [r for r in rows if str(r["shots"]) == str(shots)]
    lines = []
    for c in sorted({r["class"] for r in rows}):
        peer = next(
            (
                r
                for r in rows
                if r["class"] == c and r["source"] == "anomalib" and r["method"] == "patchcore"
            ),
            None,
        )
        if peer is None:
            continue
        wins = []
        for r in sorted((r for r in rows if r["class"] == c and r["source"] == "adqc"), key=_order):
            below = [
                f"{m.replace('_', ' ')} {r[m] - peer[m]:+.3f}"
                for m in METRICS
                if r.get(m) is not None and peer.get(m) is not None and r[m] < peer[m]
            ]
            if not below:
                wins.append(row_label(r))
        text = ", ".join(wins) if wins else "none"
        lines.append(f"- {c}: adqc rows >= anomalib PatchCore on every metric: {text}")
    return "\n".join(lines) + "\n"


def operating(rows: list[dict[str, Any]], shots: int, key: str = "calibrated") -> str:
    """Observed false-alarm / detection rate at the threshold `adqc product add` would set
    (``key`` "calibrated": from the K references alone; "calibrated_held_out": from held-out
    calibration images)."""
    rows = [r for r in rows if str(r["shots"]) == str(shots) and r.get(key)]
    if not rows:
        return ""
    classes = sorted({r["class"] for r in rows})
    labels = sorted({(row_label(r), _order(r)) for r in rows}, key=lambda t: t[1])
    by = {(r["class"], row_label(r)): r[key] for r in rows}
    source = (
        f"the {shots} references' leave-one-out scores, no calibration images"
        if key == "calibrated"
        else "held-out good images (the train/good images after the references, "
        "`--calibration-images`)"
    )
    lines = [
        f"Calibrated operating point, {shots} shots (threshold from {source}, target "
        "false-alarm rate 1 %; observed false-alarm rate on good test images, with its exact "
        "95 % interval where recorded / detection rate on defective ones):",
        "",
        f"| {shots} shots | " + " | ".join(classes) + " |",
        "|---|" + "---|" * len(classes),
    ]
    for label, _ in labels:
        cells = []
        for c in classes:
            op = by.get((c, label))
            if op is None or op.get("false_alarm_rate") is None:
                cells.append("–")
            else:
                dr, low_high = op.get("detection_rate"), op.get("false_alarm_rate_95")
                interval = f" [{low_high[0]:.1%}, {low_high[1]:.1%}]" if low_high else ""
                cells.append(
                    f"{op['false_alarm_rate']:.1%}{interval} / "
                    + ("–" if dr is None else f"{dr:.1%}")
                )
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def intervals(rows: list[dict[str, Any]]) -> str:
    """adqc row - anomalib PatchCore with 95 % paired bootstrap intervals (same images)."""
    lines = [
        "adqc - anomalib PatchCore on the same images, 95 % paired bootstrap interval "
        "(test images resampled, normal and defective separately):\n",
        "| class | K | adqc row | image AUROC diff [95 % CI] | pixel AUROC diff [95 % CI] |",
        "|---|---|---|---|---|",
    ]

    def cell(d: dict[str, float] | None) -> str:
        if not d:
            return "–"
        return f"{d['diff']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"

    for r in sorted(rows, key=lambda r: (r["class"], _shots_order(r["shots"]), _order(r))):
        vs = r.get("vs_anomalib_patchcore")
        if vs:
            lines.append(
                f"| {r['class']} | {r['shots']} | {row_label(r)} | "
                f"{cell(vs.get('image_auroc'))} | {cell(vs.get('pixel_auroc'))} |"
            )
    return "\n".join(lines) + "\n"


def baseline_intervals(rows: list[dict[str, Any]]) -> str:
    """adpretrain - the same detector on raw (FeatureNorm: residual) features, 95 % paired
    bootstrap intervals; the count of points at or above the baseline and every miss."""
    lines = [
        "adpretrain - the same detector on its baseline features (raw; FeatureNorm: residual), "
        "95 % paired bootstrap interval (pixel metrics on maps subsampled 4x):\n",
        "| class | K | detector (baseline) | image AUROC | pixel AUROC | AUPRO |",
        "|---|---|---|---|---|---|",
    ]
    held = total = 0
    misses = []
    for r in sorted(rows, key=lambda r: (r["class"], _shots_order(r["shots"]), r["method"])):
        vs = r.get("vs_baseline")
        if not vs:
            continue
        cells = []
        for metric in ("image_auroc", "pixel_auroc", "aupro"):
            d = vs.get(metric)
            if not d:
                cells.append("–")
                continue
            total += 1
            held += d["diff"] >= 0
            text = f"{d['diff']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"
            if d["diff"] < 0:
                misses.append(d["high"] >= 0)
                text = f"**{text}**"
            cells.append(text)
        lines.append(
            f"| {r['class']} | {r['shots']} | {r['method']} ({vs['baseline']}) | "
            + " | ".join(cells)
            + " |"
        )
    within = sum(misses)
    lines.append(
        f"\nadpretrain >= baseline at {held} of {total} points; {len(misses)} misses (bold), "
        f"{within} of them with a 95 % interval that includes 0.\n"
    )
    return "\n".join(lines)


def markdown(doc: dict[str, Any]) -> str:
    rows = doc.get("rows", [])
    out = []
    for run in doc.get("runs", []):
        out.append(f"Command: `{run['command']}` ({run['created_at']}, {run['seconds']:.0f} s)")
    out.append("")
    for k in sorted({r["shots"] for r in rows}, key=_shots_order):
        out += [overview(rows, k), verdict(rows, k), operating(rows, k)]
        out.append(operating(rows, k, "calibrated_held_out"))
        if any(r["features"] == "candidate" and str(r["shots"]) == str(k) for r in rows):
            from benchmarks.peer import choose

            out += [
                f"Default-detector rule at K = {k} (docs/BACKBONES.md), winner first:\n",
                choose.markdown(rows, k) + "\n",
            ]
    if any("vs_anomalib_patchcore" in r for r in rows):
        out.append(intervals(rows))
    if any("vs_baseline" in r for r in rows):
        out.append(baseline_intervals(rows))
    for c in sorted({r["class"] for r in rows}):
        out.append(detail(rows, c))
    return "\n".join(out)


def write_section(path, text: str, section: str, command: str = "adqc bench anomalib") -> None:
    """Replace the generated section ``section`` of the markdown file (append when absent)."""
    from pathlib import Path

    path = Path(path)
    begin = f"<!-- {command} {section}: generated, do not edit by hand -->"
    end = f"<!-- {command} {section}: end -->"
    block = f"{begin}\n{text}{end}\n"
    old = path.read_text() if path.is_file() else ""
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        _, tail = rest.split(end, 1)
        new = head + block + "\n" + tail.lstrip("\n")
    else:
        new = (old.rstrip("\n") + "\n\n" if old else "") + block
    path.write_text(new)
