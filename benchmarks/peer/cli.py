"""``adqc bench anomalib``: the peer benchmark's command (docs/RESULTS.md, docs/EVALUATION.md)."""

from __future__ import annotations

import logging
import shlex
import sys
import time
from pathlib import Path

import typer
from rich.console import Console

from inference.cli_conventions import hidden_alias, pick

err = Console(stderr=True)

DEFAULT_JSON = Path("docs/results/anomalib_peer.json")


def _split(values: list[str]) -> list[str]:
    return list(dict.fromkeys(p.strip() for v in values for p in str(v).split(",") if p.strip()))


def anomalib_command(
    data: list[str] = typer.Option(
        ...,
        "--data",
        help="class: MVTec-layout folder (aitex/fabric is grouped per fabric) "
        "or elpv:mono / elpv:poly; repeatable",
    ),
    shots: list[str] = typer.Option(
        ["8"], "--shots", help="K values, e.g. 2,4,8; all = every train/good image (full shot)"
    ),
    json_out: Path = typer.Option(DEFAULT_JSON, "--json", help="rows are merged into this JSON"),
    markdown: Path | None = typer.Option(None, "--markdown", help="e.g. docs/RESULTS.md"),
    section: str = typer.Option("anomalib-peer", "--section"),
    features: list[str] = typer.Option(
        ["raw,adpretrain"],
        "--features",
        help="adqc rows: raw, residual, adpretrain; candidate = the default-detector "
        "candidates (benchmarks/peer/candidates.py)",
    ),
    detectors: list[str] | None = typer.Option(
        None, "--detectors", help="adqc detectors, comma-separated [default: all three]"
    ),
    methods: list[str] | None = hidden_alias("--methods"),
    no_peer: bool = typer.Option(False, "--no-peer", help="adqc rows only"),
    candidates: list[str] | None = typer.Option(
        None, "--candidates", help="with --features candidate: only these (comma-separated)"
    ),
    bootstrap: int = typer.Option(
        0,
        "--bootstrap",
        help="paired bootstrap resamples of each adqc row vs anomalib PatchCore, and of each "
        "adpretrain row vs the same detector on raw features (FeatureNorm: residual)",
    ),
    calibration_images: int = typer.Option(
        0,
        "--calibration-images",
        help="candidates: also set each threshold from the next N train/good images "
        "(held-out, as `adqc product add --calibration-images`)",
    ),
    peer_models: list[str] = typer.Option(
        ["patchcore,padim"], "--peer-models", help="anomalib models: patchcore, padim"
    ),
    no_adqc: bool = typer.Option(False, "--no-adqc", help="anomalib rows only"),
    peer_python: Path | None = typer.Option(
        None, "--peer-python", help="python of the anomalib venv (.cache/anomalib-venv)"
    ),
    backbone: str = typer.Option(
        "mobilenet_v2",
        "--backbone",
        help="backbone of the adqc rows and of the candidates' adpretrain members "
        "(mobilenet_v2_s8: the default detector's levels, with its own projector)",
    ),
    checkpoint: str | None = typer.Option(None, "--checkpoint"),
    checkpoint_for: list[str] = typer.Option(
        [],
        "--checkpoint-for",
        help="CLASS=PATH: leave-one-dataset-out checkpoint of a class "
        "the shipped projector was pretrained on",
    ),
    image_size: int = typer.Option(224, "--image-size"),
    max_test: int | None = typer.Option(
        None, "--max-test", help="cap each class's test set (stratified by label, seed 0)"
    ),
    seed: int = typer.Option(
        0,
        "--seed",
        help="the peer's random state (PatchCore's coreset start and projection, PaDiM's "
        "channels) and the bootstrap's",
    ),
) -> None:
    """Stock anomalib 2.7 PatchCore/PaDiM next to adqc: same weights, images and metric code."""
    from benchmarks.peer import scoring, table
    from benchmarks.peer.runner import PEER_PYTHON, BenchOptions, PeerError, bench_class
    from pretrain.data.folders import DatasetError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    t0 = time.perf_counter()
    pairs = {}
    for item in checkpoint_for:
        name, sep, path = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"--checkpoint-for wants CLASS=PATH, got {item!r}")
        pairs[name] = path
    doc = scoring.load_doc(json_out)
    command = "adqc bench anomalib " + " ".join(shlex.quote(a) for a in sys.argv[3:])
    run_info = {"command": command, "classes": []}
    unknown = set(_split(peer_models)) - {"patchcore", "padim"}
    if unknown:
        raise typer.BadParameter(f"--peer-models: unknown {sorted(unknown)}; patchcore, padim")
    from benchmarks.peer.candidates import CANDIDATES

    wrong = set(_split(candidates or [])) - set(CANDIDATES)
    if wrong:
        raise typer.BadParameter(f"--candidates: unknown {sorted(wrong)}; {', '.join(CANDIDATES)}")
    from benchmarks.peer.cases import ALL_SHOTS

    try:
        ks = [ALL_SHOTS if s == "all" else int(s) for s in _split(shots)]
    except ValueError:
        raise typer.BadParameter(f"--shots: numbers or all, got {shots}") from None
    if ALL_SHOTS in ks and calibration_images:
        raise typer.BadParameter("--calibration-images needs images beyond the references")
    for k in ks:
        opts = BenchOptions(
            shots=k,
            image_size=image_size,
            features=_split(features),
            methods=_split(
                pick(
                    detectors, methods, "--detectors", "--methods", ["featurenorm,patchcore,padim"]
                )
            ),
            peer=not no_peer,
            adqc=not no_adqc,
            peer_python=peer_python or PEER_PYTHON,
            backbone=backbone,
            checkpoint=checkpoint,
            checkpoint_for=pairs,
            max_test=max_test,
            peer_models=tuple(_split(peer_models)),
            candidates=tuple(_split(candidates)) if candidates else None,
            bootstrap=bootstrap,
            calibration_images=calibration_images,
            seed=seed,
        )
        for spec in data:
            try:
                rows, info = bench_class(spec, opts)
            except (PeerError, DatasetError, FileNotFoundError, ValueError) as exc:
                err.print(f"[red]error:[/red] {spec} K={k}: {exc}", highlight=False)
                raise typer.Exit(2) from exc
            for r in rows:
                err.print(
                    f"{info['class']} K={info['shots']} {r['source']} {r['features']} "
                    f"{r['method']}: "
                    f"I-AUROC {r['image_auroc']} P-AUROC {r['pixel_auroc']} "
                    f"AUPRO {r['aupro']} {r['images_per_s']} img/s",
                    highlight=False,
                )
            doc = scoring.merge_rows(doc, rows)
            run_info["classes"].append(info)
            scoring.write_doc(json_out, doc)
    run_info["seconds"] = round(time.perf_counter() - t0, 1)
    run_info["created_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    doc.setdefault("runs", []).append(run_info)
    scoring.write_doc(json_out, doc)
    if markdown:
        table.write_section(markdown, table.markdown(doc), section)


def levels_command(
    data: list[str] = typer.Option(..., "--data", help="classes, as for `adqc bench anomalib`"),
    candidates: str = typer.Option("A,B,D", "--candidates"),
    shots: int = typer.Option(8, "--shots"),
    max_test: int = typer.Option(60, "--max-test", help="test images per class (stratified)"),
    json_out: Path = typer.Option(Path("docs/results/levels_issue11.json"), "--json"),
    markdown: Path | None = typer.Option(None, "--markdown", help="e.g. docs/BACKBONES.md"),
    section: str = typer.Option("levels-issue11", "--section"),
) -> None:
    """MobileNetV2 level candidates on raw/residual detectors; the rule of docs/BACKBONES.md."""
    from benchmarks.peer import levels, scoring, table

    t0 = time.perf_counter()
    wanted = _split([candidates])
    chosen = tuple(c for c in levels.CANDIDATES if c.id in wanted)
    doc = scoring.load_doc(json_out)
    done = {r["candidate"] for r in doc.get("rows", [])}
    todo = tuple(c for c in chosen if c.id not in done)
    doc["command"] = "adqc bench levels " + " ".join(shlex.quote(a) for a in sys.argv[3:])
    seconds0 = doc.get("seconds", 0.0)
    for cand in todo:  # saved after each candidate, so an interrupted run resumes
        rows = levels.measure(
            data, (cand,), shots, max_test, log=lambda m: err.print(m, highlight=False)
        )
        doc["rows"] = doc.get("rows", []) + rows
        doc["seconds"] = seconds0 + time.perf_counter() - t0
        doc["created_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        scoring.write_doc(json_out, doc)
    if {r["candidate"] for r in doc["rows"]} >= {c.id for c in chosen}:
        doc["decision"] = levels.decide(doc["rows"], chosen)
        err.print(f"decision: {doc['decision']}", highlight=False)
    scoring.write_doc(json_out, doc)
    if markdown and "decision" in doc:
        table.write_section(markdown, levels.markdown(doc), section, "adqc bench levels")


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    groups["bench"].command("anomalib")(anomalib_command)
    groups["bench"].command("levels")(levels_command)
