"""``adqc demo``: the command (light to import; the demo itself is :mod:`adqc.demo`)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from inference.cli import _clean_errors, err, out


def demo(
    out_dir: Path = typer.Option(Path("demo-out"), "--out", help="Output folder (replaced)."),
    source: str | None = typer.Option(
        None, "--source", help="Stream this image folder instead of the elpv cells (no AUROC)."
    ),
    references: str | None = typer.Option(
        None, "--references", help="Onboard from this folder/glob instead of 8 functional cells."
    ),
    limit: int | None = typer.Option(
        None,
        "--limit",
        help="Frames to stream, evenly spaced; 0 = all [default: 1200 for the elpv cells, "
        "all for --source].",
    ),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the summary here."),
    store: str = typer.Option("memory://", "--store", help="Reference store URL."),
    checkpoint: Path | None = typer.Option(
        None, "--checkpoint", help="Projector checkpoint [default: the shipped one]."
    ),
    batch_size: int = typer.Option(16, "--batch-size", help="Frames per scored batch."),
    workers: int | None = typer.Option(
        None,
        "--workers",
        help="Batches scored at once, one torch thread each [default: cores, max 4].",
    ),
    shots: int = typer.Option(8, "--shots", help="Good images to onboard from."),
    detector: str = typer.Option(
        "featurenorm", "--detector", help="featurenorm | patchcore | padim"
    ),
) -> None:
    """The embedded end-to-end demo: onboard pv-cell, stream solar cells, alarms + heatmaps."""
    from adqc.demo import DEFAULT_LIMIT, DemoError, run_demo

    with _clean_errors():
        try:
            summary = run_demo(
                out=out_dir,
                source=source,
                references=references,
                limit=limit if limit is not None else (DEFAULT_LIMIT if source is None else 0),
                checkpoint=checkpoint,
                store_url=store,
                batch_size=batch_size,
                workers=workers,
                shots=shots,
                detector=detector,
                console=out,
            )
        except DemoError as exc:
            err.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        if json_out is not None:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(json.dumps(summary, indent=2) + "\n")


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    """Mount the top-level ``demo``."""
    app.command("demo")(demo)
