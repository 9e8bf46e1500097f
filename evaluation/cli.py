"""The evaluation commands: ``adqc eval`` and ``adqc bench accuracy``."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import typer
from rich.console import Console

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
    features: str = typer.Option(..., "--features", help=FEATURES_HELP),
    method: str = typer.Option(..., "--method", help="featurenorm | patchcore | padim"),
    shots: str = typer.Option(
        ..., "--shots", help="K (the first K train/good images, sorted) or 'all'"
    ),
    checkpoint: Path | None = typer.Option(
        None, "--checkpoint", help="projector checkpoint (default: the backbone's shipped one)"
    ),
    backbone: str = typer.Option("mobilenet_v2", "--backbone"),
    image_size: int | None = typer.Option(
        None, "--image-size", help="square input size; resize without crop (default: backbone's)"
    ),
    json_out: Path = typer.Option(..., "--json", help="write the metrics JSON here"),
    report: Path | None = typer.Option(None, "--report", help="write an HTML report into DIR"),
    weights: Path | None = typer.Option(None, "--weights", help="backbone weights file"),
    max_test: int | None = typer.Option(
        None, "--max-test", help="evaluate at most N test images (stratified, seeded)"
    ),
    pool_cap: int = typer.Option(8, "--pool-cap", help="reference pool cap for --shots all"),
    batch_size: int = typer.Option(16, "--batch-size"),
    device: str = typer.Option("cpu", "--device"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bars"),
) -> None:
    """Evaluate one detector on one category with K-shot references; write metrics JSON."""
    from evaluation.runner import EvalConfig, evaluate, parse_shots, write_json

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = EvalConfig(
            category=category,
            features=features,
            method=method,
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
    write_json(json_out, result)
    if report is not None:
        from evaluation.report import write_report

        page = write_report(report, result, fs, out)
        err.print(f"report: {page}")
    _print_summary(result)
    for note in result["notes"]:
        err.print(f"[yellow]note:[/yellow] {note}", highlight=False, soft_wrap=True)


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
    methods: list[str] = typer.Option(
        ["featurenorm,patchcore,padim"], "--methods", help="comma list of detectors"
    ),
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
        meths = _names(methods, METHODS, "methods")
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
