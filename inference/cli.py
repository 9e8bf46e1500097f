"""``adqc product add|list|show|remove``.

Every expected failure (unknown product, unreadable image, unreachable store, model mismatch,
missing checkpoint, bad option) ends with a one-line ``error: ...`` on stderr and exit code 2,
never a traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from inference.calibration import DEFAULT_TARGET_FAR

#: where `adqc product ...` keeps records when neither --store nor $ADQC_STORE says otherwise
DEFAULT_STORE = "file://~/.local/share/adqc/store"

out = Console()
err = Console(stderr=True)

StoreOption = typer.Option(
    None,
    "--store",
    help=f"Store URL: redis://host:port/db, file:///dir or memory:// "
    f"[default: $ADQC_STORE or {DEFAULT_STORE}]",
)


def _store_url(store: str | None) -> str:
    return store or os.environ.get("ADQC_STORE") or DEFAULT_STORE


@contextlib.contextmanager
def _clean_errors() -> Iterator[None]:
    """Turn the expected failures into `error: ...` + exit code 2 (3: credentials refused)."""
    from inference.store import ProductNotFoundError, StoreAuthError, StoreUnavailableError

    try:
        yield
    except StoreAuthError as exc:  # same exit code as serve/camera/alarms (docs/OPERATIONS.md)
        err.print(f"[red]fatal:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(3) from None
    except (ProductNotFoundError, StoreUnavailableError, ValueError, OSError) as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def product_add(
    name: str = typer.Argument(..., help="Product name (letters, digits, '.', '_', '-')."),
    images: str = typer.Option(
        ..., "--images", help="Folder or glob of good images; the first K (sorted) are the shots."
    ),
    shots: int = typer.Option(8, "--shots", "-k", help="K: good images in the reference pool."),
    calibration_images: str | None = typer.Option(
        None,
        "--calibration-images",
        help="Folder or glob of further good images to set the threshold on (held-out); "
        "default: leave-one-out over the K shots.",
    ),
    target_far: float = typer.Option(
        DEFAULT_TARGET_FAR, "--target-far", help="Target false-alarm rate on good parts."
    ),
    detector: str = typer.Option(
        "featurenorm", "--detector", help="featurenorm | patchcore | padim"
    ),
    store: str | None = StoreOption,
    checkpoint: Path | None = typer.Option(
        None, "--checkpoint", help="Projector checkpoint [default: the shipped one]."
    ),
    backbone: str = typer.Option("mobilenet_v2", "--backbone", help="Backbone of the checkpoint."),
    as_json: bool = typer.Option(False, "--json", help="Print the record summary as JSON."),
) -> None:
    """Onboard a product from K good images: reference pool + calibrated threshold."""
    with _clean_errors():
        from inference.engines.local import LocalEngine
        from inference.onboarding import DETECTOR_CHOICES, onboard, resolve_inputs
        from inference.records import check_product_name
        from inference.store import open_store

        # cheap checks first: a typo should not wait for the model to load
        check_product_name(name)
        if detector not in DETECTOR_CHOICES:
            choices = ", ".join(DETECTOR_CHOICES)
            raise ValueError(f"--detector must be one of {choices}, got {detector!r}")
        inputs = resolve_inputs(images, shots, calibration_images)
        with open_store(_store_url(store)) as opened:
            engine = LocalEngine(checkpoint, backbone)
            result = onboard(
                engine,
                opened,
                name,
                inputs.shots,
                shots=shots,
                calibration_images=inputs.calibration_images,
                target_far=target_far,
                detector=detector,  # type: ignore[arg-type]
            )
            record = result.record
            if as_json:
                out.print_json(json.dumps(record.summary()))
                return
            calibration = record.calibration
            out.print(
                f"[green]onboarded[/] [bold]{name}[/] v{record.version} in {opened.url} "
                f"({result.seconds:.1f} s)\n"
                f"  shots      {record.shots}: {', '.join(p.name for p in result.shots)}"
                + (f" ({inputs.ignored} more image(s) not used)" if inputs.ignored else "")
                + f"\n  model      {record.model_id}, {record.detector}, {record.image_size}px"
                f"\n  threshold  {calibration.threshold:.4f} for a target false-alarm rate of "
                f"{calibration.target_far:g} ({calibration.rule})"
                f"\n  normals    {calibration.n_normals} {calibration.method} scores, mean "
                f"{calibration.score_mean:.4f}, std {calibration.score_std:.4f}, max "
                f"{max(calibration.normal_scores):.4f}",
                highlight=False,
            )


def product_list(
    store: str | None = StoreOption,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List onboarded products with their latest version."""
    with _clean_errors():
        from inference.store import open_store

        with open_store(_store_url(store)) as opened:
            rows = [opened.get(name).summary() for name in opened.list_products()]
        if as_json:
            out.print_json(json.dumps(rows))
            return
        if not rows:
            out.print(f"no products in {opened.url}")
            return
        table = Table("product", "version", "model", "detector", "shots", "threshold", "created")
        for row in rows:
            table.add_row(
                row["product"],
                str(row["version"]),
                row["model_id"],
                row["detector"],
                str(row["shots"]),
                f"{row['calibration']['threshold']:.4f}",
                row["created_at"][:19],
            )
        out.print(table)


def product_show(
    name: str = typer.Argument(..., help="Product name."),
    version: int | None = typer.Option(None, "--version", help="A kept version [default: latest]."),
    store: str | None = StoreOption,
) -> None:
    """Show one product's record (without its arrays) as JSON."""
    with _clean_errors():
        from inference.store import open_store

        with open_store(_store_url(store)) as opened:
            summary = opened.get(name, version).summary()
            summary["kept_versions"] = opened.versions(name)
        out.print_json(json.dumps(summary))


def product_remove(
    name: str = typer.Argument(..., help="Product name."),
    store: str | None = StoreOption,
) -> None:
    """Remove every version of a product."""
    with _clean_errors():
        from inference.store import open_store

        with open_store(_store_url(store)) as opened:
            opened.remove(name)
        out.print(f"removed {name} from {opened.url}")


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    """Mount ``product add|list|show|remove``."""
    product = groups["product"]
    product.command("add")(product_add)
    product.command("list")(product_list)
    product.command("show")(product_show)
    product.command("remove")(product_remove)
