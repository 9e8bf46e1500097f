"""``adqc demo``: the command (light to import; the demo itself is :mod:`adqc.demo`)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from inference.cli import Detector, _clean_errors, err, out


def demo(
    out_dir: Path = typer.Option(Path("demo-out"), "--out", help="Output folder (replaced)."),
    source: str | None = typer.Option(
        None, "--source", help="Stream this image folder instead of the elpv cells (no AUROC)."
    ),
    references: str | None = typer.Option(
        None,
        "--references",
        help="Onboard one product (pv-cell) from this folder/glob; every frame goes to it.",
    ),
    limit: int | None = typer.Option(
        None,
        "--limit",
        help="Frames to stream, evenly spaced; 0 = all.",
        show_default="1200 for the elpv cells, all for --source",
    ),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the summary here."),
    store: str | None = typer.Option(
        None,
        "--store",
        help="Reference store URL.",
        show_default="$ADQC_STORE__URL, else memory://",
    ),
    checkpoint: Path | None = typer.Option(
        None, "--checkpoint", help="Projector checkpoint.", show_default="the shipped one"
    ),
    batch_size: int = typer.Option(16, "--batch-size", help="Frames per scored batch."),
    workers: int | None = typer.Option(
        None,
        "--workers",
        help="Batches scored at once, one torch thread each.",
        show_default="cores, max 4",
    ),
    shots: int = typer.Option(8, "--shots", help="Good images to onboard each product from."),
    detector: Detector = typer.Option(
        Detector.s8_patchcore,  # inference.onboarding.DEFAULT_DETECTOR (not imported: torch)
        "--detector",
        help="Detector (that of `adqc product add`).",
    ),
) -> None:
    """The embedded end-to-end demo: onboard pv-mono and pv-poly, stream solar cells routed by
    cell type, alarms + heatmaps, quality per product."""
    from adqc.demo import DEFAULT_LIMIT, DemoError, run_demo
    from inference.store.settings import store_url as _store_url

    with _clean_errors():
        try:
            summary = run_demo(
                out=out_dir,
                source=source,
                references=references,
                limit=limit if limit is not None else (DEFAULT_LIMIT if source is None else 0),
                checkpoint=checkpoint,
                store_url=_store_url(store, "memory://"),
                batch_size=batch_size,
                workers=workers,
                shots=shots,
                detector=detector.value,
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
