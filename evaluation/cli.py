"""The evaluation commands: ``adqc eval`` and ``adqc bench accuracy``."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import typer
from rich.console import Console

from inference.cli import Detector
from inference.cli_conventions import hidden_alias, pick

err = Console(stderr=True)

FEATURES_HELP = (
    "raw = the backbone's levels, no residual, no projector (baseline); adpretrain = projected "
    "residual features against the K-shot pool; residual = residuals without the projector "
    "(ablation)"
)
CATEGORY_HELP = (
    "MVTec-layout category folder (train/good, test/<defect>, ground_truth/<defect>), or "
    "'elpv', 'elpv:mono', 'elpv:poly' for the solar cells of the elpv-dataset package"
)


def _fail(exc: Exception) -> typer.Exit:
    err.print(f"[red]error:[/red] {exc}", highlight=False)
    return typer.Exit(2)


def _shots_list(values: list[str]) -> list[int | None]:
    from evaluation.runner import parse_shots

    out: list[int | None] = []
    for v in values:
        for part in str(v).split(","):
            if part.strip():
                out.append(parse_shots(part.strip()))
    return list(dict.fromkeys(out))


def _names(values: list[str], allowed: tuple[str, ...], what: str) -> list[str]:
    out = [p.strip() for v in values for p in str(v).split(",") if p.strip()]
    bad = [v for v in out if v not in allowed]
    if bad:
        raise typer.BadParameter(f"unknown {what} {', '.join(bad)}; choose from {allowed}")
    return list(dict.fromkeys(out))


def eval_command(
    category: str = typer.Argument(..., help=CATEGORY_HELP, metavar="CATEGORY_DIR"),
    features: str | None = typer.Option(
        None,
        "--features",
        help=FEATURES_HELP + "; required except for the presets (s8-patchcore, ensemble), "
        "which read their own",
        show_default=False,
    ),
    detector: Detector | None = typer.Option(
        None,
        "--detector",
        help="Detector; without it and without --features, the default of `adqc product add`",
        show_default=False,
    ),
    method: str | None = hidden_alias("--method"),
    shots: str = typer.Option(
        ..., "--shots", help="K (the first K train/good images, sorted) or 'all'"
    ),
    checkpoint: Path | None = typer.Option(
        None, "--checkpoint", help="projector checkpoint (default: the backbone's shipped one)"
    ),
    backbone: str = typer.Option("mobilenet_v2", "--backbone"),
    image_size: int | None = typer.Option(
        None,
        "--image-size",
        help="square input size; resize without crop (default: backbone's; s8-patchcore: the "
        "product's --image-size, default 256)",
    ),
    json_out: Path | None = typer.Option(
        None,
        "--json",
        help="write the metrics JSON here",
        show_default="DIR/metrics.json with --report",
    ),
    report: Path | None = typer.Option(None, "--report", help="write an HTML report into DIR"),
    weights: Path | None = typer.Option(None, "--weights", help="backbone weights file"),
    max_test: int | None = typer.Option(
        None, "--max-test", help="evaluate at most N test images (stratified, seeded)"
    ),
    pool_cap: int = typer.Option(8, "--pool-cap", help="reference pool cap for --shots all"),
    batch_size: int = typer.Option(16, "--batch-size"),
    device: str = typer.Option("cpu", "--device"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bars"),
    calibration_images: int = typer.Option(
        0,
        "--calibration-images",
        min=0,
        help="presets: set the threshold from the next N train/good images after the K "
        "references, as `adqc product add --calibration-images`",
    ),
) -> None:
    """Evaluate one detector on one category with K-shot references; write metrics JSON.

    The presets (s8-patchcore, the default of `adqc product add`, and ensemble) are onboarded
    and scored as a line runs them, and the result adds the calibrated operating point: the
    threshold onboarding sets, the false-alarm rate on good test images and the detection rate
    on defective ones (95 % intervals).
    """
    from evaluation.runner import EvalConfig, evaluate, parse_shots
    from inference.onboarding import DEFAULT_DETECTOR
    from pretrain.detectors.ensemble import PRESETS

    chosen = pick(detector.value if detector else None, method, "--detector", "--method", None)
    if chosen is None and features is not None:
        raise typer.BadParameter("--detector is required with --features", param_hint="--detector")
    chosen = chosen or DEFAULT_DETECTOR
    if json_out is None and report is None:
        raise typer.BadParameter("give --json FILE, --report DIR, or both", param_hint="--json")
    if json_out is None:
        assert report is not None
        json_out = report / "metrics.json"

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if chosen in PRESETS:
        _refuse_for_presets(
            chosen,
            features=features,
            backbone=backbone if backbone != "mobilenet_v2" else None,
            image_size=image_size if chosen != "s8-patchcore" else None,  # a product setting
            weights=weights,
            device=device if device != "cpu" else None,
        )
        _eval_preset(
            chosen,
            category,
            shots,
            checkpoint,
            json_out,
            report,
            max_test,
            batch_size,
            quiet,
            calibration_images,
            image_size,
        )
        return
    if features is None:
        raise typer.BadParameter(f"--features is required for {chosen}", param_hint="--features")
    if calibration_images:
        raise typer.BadParameter(
            f"--calibration-images is for the presets ({', '.join(PRESETS)}), not {chosen}",
            param_hint="--calibration-images",
        )
    try:
        cfg = EvalConfig(
            category=category,
            features=features,
            method=chosen,
            shots=parse_shots(shots),
            backbone=backbone,
            checkpoint=str(checkpoint) if checkpoint else None,
            weights=str(weights) if weights else None,
            image_size=image_size,
            pool_cap=pool_cap,
            max_test=max_test,
            batch_size=batch_size,
            device=device,
        )
        cfg.validate()
        result, fs, out = evaluate(cfg, show_progress=not quiet)
    except (FileNotFoundError, KeyError, ValueError) as exc:
        # ValueError covers DatasetError, UnsupportedCombinationError, bad --shots or sizes
        raise _fail(exc) from exc
    _write_outputs(result, fs, out, json_out, report)


def _write_outputs(result: dict, fs, out, json_out: Path, report: Path | None) -> None:
    """OUT.json, the HTML report when asked, the summary (with the operating point where the
    result has one) and the notes."""
    from evaluation.runner import write_json

    write_json(json_out, result)
    if report is not None:
        from evaluation.report import write_report

        err.print(f"report: {write_report(report, result, fs, out)}")
    _print_summary(result)
    if "operating_point" in result:
        _print_operating_point(result["operating_point"])
    for note in result["notes"]:
        err.print(f"[yellow]note:[/yellow] {note}", highlight=False, soft_wrap=True)


def _refuse_for_presets(name: str, **given: object) -> None:
    """The presets read their own features, size and backbone, as onboarding builds them."""
    for option, value in given.items():
        if value is not None:
            flag = "--" + option.replace("_", "-")
            raise typer.BadParameter(
                f"{name} is onboarded as `adqc product add` builds it: leave {flag} out",
                param_hint=flag,
            )


def _eval_preset(
    name: str,
    category: str,
    shots: str,
    checkpoint: Path | None,
    json_out: Path,
    report: Path | None,
    max_test: int | None,
    batch_size: int,
    quiet: bool,
    calibration_images: int,
    image_size: int | None = None,
) -> None:
    from evaluation.product_eval import PresetEvalConfig, evaluate_preset

    if shots == "all" or not shots.isdigit():
        raise typer.BadParameter(
            f"{name}: --shots is the number of references, got {shots!r}", param_hint="--shots"
        )
    cfg = PresetEvalConfig(
        category=category,
        detector=name,
        shots=int(shots),
        calibration_images=calibration_images,
        checkpoint=str(checkpoint) if checkpoint else None,
        max_test=max_test,
        batch_size=batch_size,
        image_size=image_size,
    )
    try:
        result, fs, out = evaluate_preset(cfg, show_progress=not quiet)
    except (FileNotFoundError, KeyError, ValueError) as exc:
        raise _fail(exc) from exc
    _write_outputs(result, fs, out, json_out, report)


def _print_operating_point(point: dict) -> None:
    def rate(name: str) -> str:
        value, interval = point[f"{name}_rate"], point[f"{name}_rate_95"]
        if value is None:
            return "n/a"
        return f"{value:.1%} [{interval[0]:.1%}, {interval[1]:.1%}]"

    source = (
        f"{point['calibration_images']} held-out images"
        if point["calibration_images"]
        else "the references' leave-one-out scores"
    )
    Console().print(
        f"calibrated threshold {point['threshold']:.4g} (target {point['target_far']:.1%} false "
        f"alarms, from {source}): false alarms {point['false_alarms']}/{point['normals']} "
        f"= {rate('false_alarm')}, detected {point['detections']}/{point['defectives']} "
        f"= {rate('detection')}",
        highlight=False,
    )


def _print_summary(r: dict) -> None:
    from rich.table import Table

    def f(v):
        return "n/a" if v is None else f"{v:.4f}"

    t = Table(title=f"{r['category']} | {r['features']} | {r['method']} | {r['shots']} shots")
    keys = ("image_auroc", "pixel_auroc", "aupro", "image_ap", "pixel_ap", "image_f1_max")
    for k in keys:
        t.add_column(k)
    t.add_row(*(f(r[k]) for k in keys))
    Console().print(t)
    Console().print(
        f"n_train {r['n_train']}, n_test {r['n_test']} "
        f"({r['n_test_normal']} normal, {r['n_test_defective']} defective), "
        f"{r['seconds']:.1f} s"
    )


def accuracy_command(
    data: list[str] = typer.Option(..., "--data", help=CATEGORY_HELP + " (repeatable)"),
    json_out: Path = typer.Option(..., "--json", help="write every row here (as they finish)"),
    markdown: Path | None = typer.Option(
        None, "--markdown", help="write the table into this file (generated section replaced)"
    ),
    section: str = typer.Option("main", "--section", help="name of the generated section"),
    checkpoint: Path | None = typer.Option(None, "--checkpoint"),
    backbone: str = typer.Option("mobilenet_v2", "--backbone"),
    features: list[str] = typer.Option(
        ["raw,adpretrain"], "--features", help="comma list of raw, adpretrain, residual"
    ),
    detectors: list[str] | None = typer.Option(
        None,
        "--detectors",
        help="comma list of featurenorm, patchcore, padim",
        show_default="featurenorm,patchcore,padim",
    ),
    methods: list[str] | None = hidden_alias("--methods"),
    shots: list[str] = typer.Option(["2,4,8,all"], "--shots", help="comma list of K or 'all'"),
    skip: list[str] = typer.Option(
        [], "--skip", help="METHOD:K combinations to leave out, e.g. patchcore:all"
    ),
    image_size: int | None = typer.Option(None, "--image-size"),
    max_test: int | None = typer.Option(None, "--max-test", help="test images per category"),
    pool_cap: int = typer.Option(8, "--pool-cap"),
    weights: Path | None = typer.Option(None, "--weights"),
    batch_size: int = typer.Option(16, "--batch-size"),
    quiet: bool = typer.Option(False, "--quiet"),
    reuse: Path | None = typer.Option(
        None,
        "--reuse",
        help="earlier run's JSON: copy its raw/residual rows (checkpoint-free) instead of "
        "recomputing them",
    ),
) -> None:
    """Accuracy benchmark: features {raw, adpretrain} x methods x shots {2,4,8,all}."""
    from evaluation.bench import markdown_table, run_accuracy, write_markdown
    from evaluation.runner import parse_shots
    from pretrain.detectors import FEATURE_KINDS, METHODS

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        kinds = _names(features, FEATURE_KINDS, "features")
        meths = _names(
            pick(detectors, methods, "--detectors", "--methods", ["featurenorm,patchcore,padim"]),
            METHODS,
            "detectors",
        )
        ks = _shots_list(shots)
        skips = []
        for item in skip:
            m, _, k = item.partition(":")
            skips.append((m, parse_shots(k or "all")))
    except ValueError as exc:
        raise _fail(exc) from exc

    def on_row(row: dict) -> None:
        if row.get("status") != "ok":
            err.print(
                f"{row['category']} {row['features']} {row['method']} K={row['shots']}: "
                f"{row['status']}",
                soft_wrap=True,
            )
            return

        def f(v):
            return "n/a" if v is None else f"{v:.3f}"

        err.print(
            f"{row['category']} {row['features']:>10} {row['method']:>11} K={row['shots']:>3}: "
            f"I-AUROC {f(row['image_auroc'])}  P-AUROC {f(row['pixel_auroc'])}  "
            f"AUPRO {f(row['aupro'])}  ({row['seconds']:.0f} s)",
            highlight=False,
            soft_wrap=True,
        )

    try:
        doc = run_accuracy(
            data,
            features=kinds,
            methods=meths,
            shots=ks,
            backbone=backbone,
            checkpoint=str(checkpoint) if checkpoint else None,
            weights=str(weights) if weights else None,
            image_size=image_size,
            max_test=max_test,
            pool_cap=pool_cap,
            batch_size=batch_size,
            skip=skips,
            json_path=json_out,
            show_progress=not quiet,
            on_row=on_row,
            reuse=reuse,
        )
    except (FileNotFoundError, KeyError, ValueError) as exc:
        raise _fail(exc) from exc
    table = markdown_table(doc)
    if markdown is not None:
        write_markdown(markdown, table, section)
        err.print(f"table written to {markdown} (section {section!r})")
    else:
        sys.stdout.write(table)


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    """Mount ``adqc eval`` and ``adqc bench accuracy``."""
    app.command("eval")(eval_command)
    groups["bench"].command("accuracy")(accuracy_command)
