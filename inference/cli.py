"""``adqc product add|list|show|history|pin|unpin|rollback|recalibrate|threshold set|remove``.

Exit codes (docs/OPERATIONS.md "CLI conventions"): 2 for bad input (unknown product or
version, unreadable image, bad option, model mismatch), 1 for a runtime failure (store
unreachable, disk error, a declined confirmation), 3 when the store refuses the credentials;
each with a one-line ``error: ...`` on stderr, never a traceback.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

#: inference.calibration.DEFAULT_TARGET_FAR (not imported: it pulls numpy, scipy and torch into
#: `adqc --help`; tests/unit check the two agree)
DEFAULT_TARGET_FAR = 0.01

#: where `adqc product ...` keeps records when neither --store nor $ADQC_STORE__URL says otherwise
DEFAULT_STORE = "file://~/.local/share/adqc/store"

out = Console()
err = Console(stderr=True)


class Detector(StrEnum):
    """Detectors a product can be onboarded with (inference.onboarding.DETECTOR_CHOICES)."""

    s8_patchcore = "s8-patchcore"
    ensemble = "ensemble"
    featurenorm = "featurenorm"
    patchcore = "patchcore"
    padim = "padim"


StoreOption = typer.Option(
    None,
    "--store",
    help="Store URL: redis://[:password@]host:port/db, file:///dir or memory://.",
    show_default=f"$ADQC_STORE__URL, else {DEFAULT_STORE}",
)


def _store_url(store: str | None) -> str:
    from inference.store.settings import store_url

    return store_url(store, DEFAULT_STORE)


@contextlib.contextmanager
def _clean_errors() -> Iterator[None]:
    """Expected failures -> one `error: ...` line: exit 2 (bad input), 1 (runtime), 3
    (credentials refused)."""
    from inference.store import ProductNotFoundError, StoreAuthError, StoreUnavailableError

    try:
        yield
    except StoreAuthError as exc:  # same exit code as serve/camera/alarms (docs/OPERATIONS.md)
        err.print(f"[red]fatal:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(3) from None
    except (ProductNotFoundError, ValueError) as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except (StoreUnavailableError, OSError) as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


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
    detector: Detector = typer.Option(
        Detector.s8_patchcore,
        "--detector",
        help="Detector: s8-patchcore = PatchCore on raw stride-8 features (anomalib's layers); "
        "ensemble = that + adpretrain FeatureNorm, each z-scored by its leave-one-out normal "
        "scores; featurenorm/patchcore/padim on the projector's features (docs/BACKBONES.md).",
    ),
    image_size: int | None = typer.Option(
        None,
        "--image-size",
        help="s8-patchcore only: the px frames are resized to (a multiple of 16, 64-512); "
        "larger finds smaller defects and costs speed (docs/ONBOARDING.md).",
        show_default="256",
    ),
    store: str | None = StoreOption,
    checkpoint: Path | None = typer.Option(
        None, "--checkpoint", help="Projector checkpoint.", show_default="the shipped one"
    ),
    backbone: str = typer.Option("mobilenet_v2", "--backbone", help="Backbone of the checkpoint."),
    as_json: bool = typer.Option(False, "--json", help="Print the record summary as JSON."),
) -> None:
    """Onboard a product from K good images: reference pool + calibrated threshold."""
    with _clean_errors():
        from inference.engines.local import LocalEngine
        from inference.onboarding import (
            DETECTOR_CHOICES,
            check_input_size,
            onboard,
            resolve_inputs,
        )
        from inference.records import check_product_name
        from inference.store import open_store

        # cheap checks first: a typo should not wait for the model to load
        check_product_name(name)
        if detector.value not in DETECTOR_CHOICES:
            raise ValueError(f"--detector must be one of {', '.join(DETECTOR_CHOICES)}")
        if image_size is not None:
            check_input_size(detector.value, image_size)
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
                detector=detector.value,  # type: ignore[arg-type]
                image_size=image_size,
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
    """List onboarded products with the version each serves."""
    with _clean_errors():
        from inference.store import open_store

        with open_store(_store_url(store)) as opened:
            rows = []
            for name in opened.list_products():
                row = opened.get(name).summary()
                row["pinned"] = opened.pinned_version(name) is not None
                rows.append(row)
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
                str(row["version"]) + (" (pinned)" if row["pinned"] else ""),
                row["model_id"],
                row["detector"],
                str(row["shots"]),
                f"{row['calibration']['threshold']:.4f}",
                row["created_at"][:19],
            )
        out.print(table)


def product_show(
    name: str = typer.Argument(..., help="Product name."),
    version: int | None = typer.Option(
        None, "--version", help="A kept version.", show_default="the serving version"
    ),
    store: str | None = StoreOption,
) -> None:
    """Show one product's record (without its arrays) as JSON, with who/why of an override."""
    with _clean_errors():
        from inference.store import open_store

        with open_store(_store_url(store)) as opened:
            summary = opened.get(name, version).summary()
            summary["kept_versions"] = opened.versions(name)
            summary["latest_version"] = opened.latest_version(name)
            summary["pinned_version"] = opened.pinned_version(name)
            summary["serving_version"] = opened.serving_version(name)
        out.print_json(json.dumps(summary))


def product_history(
    name: str = typer.Argument(..., help="Product name."),
    store: str | None = StoreOption,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Kept versions: created, detector, threshold, how each came to be (who/why)."""
    with _clean_errors():
        from inference.lifecycle import history
        from inference.store import open_store

        with open_store(_store_url(store)) as opened:
            rows = history(opened, name)
        if as_json:
            out.print_json(json.dumps(rows))
            return
        table = Table("version", "created", "detector", "threshold", "action", "by", "reason", "")
        for row in rows:
            action = row["action"] + (
                f" of v{row['from_version']}" if row["from_version"] is not None else ""
            )
            table.add_row(
                str(row["version"]),
                row["created_at"][:19],
                row["detector"],
                f"{row['threshold']:.4f}",
                action,
                row["by"],
                row["reason"],
                ", ".join(row["marks"]),
            )
        out.print(table)


def product_pin(
    name: str = typer.Argument(..., help="Product name."),
    version: int = typer.Argument(..., help="A kept version (see `adqc product history`)."),
    store: str | None = StoreOption,
) -> None:
    """Serve VERSION until `unpin` (versions published later are kept, not served)."""
    with _clean_errors():
        from inference.store import open_store

        with open_store(_store_url(store)) as opened:
            opened.pin(name, version)
        out.print(f"{name}: serving v{version} (pinned) from {opened.url}")


def product_unpin(
    name: str = typer.Argument(..., help="Product name."),
    store: str | None = StoreOption,
) -> None:
    """Serve the latest version again."""
    with _clean_errors():
        from inference.store import open_store

        with open_store(_store_url(store)) as opened:
            opened.unpin(name)
            latest = opened.latest_version(name)
        out.print(f"{name}: serving the latest version, v{latest}")


def product_rollback(
    name: str = typer.Argument(..., help="Product name."),
    store: str | None = StoreOption,
) -> None:
    """Pin the kept version before the one being served."""
    with _clean_errors():
        from inference.store import open_store

        with open_store(_store_url(store)) as opened:
            serving = opened.serving_version(name)
            older = [v for v in opened.versions(name) if serving is not None and v < serving]
            if serving is None:
                opened.get(name)  # raises ProductNotFoundError
            if not older:
                raise ValueError(
                    f"{name} serves v{serving}, its oldest kept version: nothing to roll back to"
                )
            opened.pin(name, older[-1])
        out.print(
            f"{name}: rolled back from v{serving} to v{older[-1]} (pinned; "
            f"`adqc product unpin {name}` follows the latest again)"
        )


def product_recalibrate(
    name: str = typer.Argument(..., help="Product name."),
    images: str = typer.Option(
        ..., "--images", help="Folder or glob of good images (not the shots) to calibrate on."
    ),
    target_far: float | None = typer.Option(
        None, "--target-far", help="Target false-alarm rate.", show_default="the version's"
    ),
    version: int | None = typer.Option(
        None, "--version", help="The version to recalibrate.", show_default="the serving version"
    ),
    reason: str = typer.Option("", "--reason", help="Why (kept in the record)."),
    store: str | None = StoreOption,
    checkpoint: Path | None = typer.Option(
        None, "--checkpoint", help="Projector checkpoint.", show_default="the shipped one"
    ),
    backbone: str = typer.Option("mobilenet_v2", "--backbone", help="Backbone of the checkpoint."),
) -> None:
    """New version: the same pool and detector, a threshold calibrated on new good images."""
    with _clean_errors():
        from inference.engines.local import LocalEngine
        from inference.lifecycle import recalibrate
        from inference.onboarding import find_images
        from inference.store import open_store

        paths = find_images(images)
        with open_store(_store_url(store)) as opened:
            opened.get(name, version)  # a typo fails before the model loads
            engine = LocalEngine(checkpoint, backbone)
            record = recalibrate(
                engine, opened, name, paths, target_far=target_far, version=version, reason=reason
            )
            _published(opened, record)


def product_threshold_set(
    name: str = typer.Argument(..., help="Product name."),
    value: float = typer.Argument(..., help="The new decision threshold (score units)."),
    reason: str = typer.Option(..., "--reason", help="Why (kept in the record, shown by `show`)."),
    version: int | None = typer.Option(
        None, "--version", help="The version to start from.", show_default="the serving version"
    ),
    by: str | None = typer.Option(
        None, "--by", help="Who overrides it.", show_default="$ADQC_USER or the login name"
    ),
    store: str | None = StoreOption,
) -> None:
    """New version with a threshold set by hand; who, when and why are recorded."""
    with _clean_errors():
        from inference.lifecycle import override_threshold
        from inference.store import open_store

        with open_store(_store_url(store)) as opened:
            record = override_threshold(opened, name, value, reason, version=version, by=by)
            _published(opened, record)


def _published(opened, record) -> None:  # type: ignore[no-untyped-def]
    c, p = record.calibration, record.provenance
    pinned = opened.pinned_version(record.product)
    out.print(
        f"[green]published[/] [bold]{record.product}[/] v{record.version} ({p.action} of "
        f"v{p.from_version} by {p.by}): threshold {c.threshold:.4f}, target {c.target_far:g}"
        + (
            f"\n  not served: {record.product} is pinned to v{pinned} "
            f"(`adqc product pin {record.product} {record.version}` or `unpin`)"
            if pinned is not None
            else ""
        ),
        highlight=False,
    )


def product_remove(
    name: str = typer.Argument(..., help="Product name."),
    version: int | None = typer.Option(
        None, "--version", help="Remove only this kept version.", show_default="every version"
    ),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask (scripts)."),
    store: str | None = StoreOption,
) -> None:
    """Remove a product (every version), or one kept version; asks first unless --yes."""
    with _clean_errors():
        from inference.store import ProductNotFoundError, open_store

        with open_store(_store_url(store)) as opened:
            kept = opened.versions(name)
            if not kept:
                raise ProductNotFoundError(f"unknown product {name!r} in {opened.url}")
            what = (
                f"v{version} of {name}"
                if version is not None
                else (f"{name} (every version: {', '.join(f'v{v}' for v in kept)})")
            )
            if not yes and not _confirm(f"remove {what} from {opened.url}?"):
                err.print("[red]error:[/] not removed (answer y, or pass --yes in scripts)")
                raise typer.Exit(1)
            if version is None:
                opened.remove(name)
            else:
                opened.remove_version(name, version)
        out.print(f"removed {what} from {opened.url}")


def _confirm(question: str) -> bool:
    """Ask on the terminal; no answer (stdin closed, a script) is a no."""
    import click

    try:
        return bool(typer.confirm(question, default=False))
    except (click.exceptions.Abort, typer.Abort):  # typer >= 0.20 has its own Abort
        return False


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    """Mount the ``product`` commands."""
    product = groups["product"]
    product.command("add")(product_add)
    product.command("list")(product_list)
    product.command("show")(product_show)
    product.command("history")(product_history)
    product.command("pin")(product_pin)
    product.command("unpin")(product_unpin)
    product.command("rollback")(product_rollback)
    product.command("recalibrate")(product_recalibrate)
    threshold = typer.Typer(help="Override a product's threshold.", no_args_is_help=True)
    threshold.command("set")(product_threshold_set)
    product.add_typer(threshold, name="threshold")
    product.command("remove")(product_remove)
