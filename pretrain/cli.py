"""`adqc pretrain`: train the ADPretrain projector on MVTec-layout category folders."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

DEFAULTS_NOTE = (
    "Recipe: Adam lr 1e-4, weight decay 5e-4, lr x0.1 at 70% and 90% of the epochs, backbone "
    "frozen, only the projector trained, K in {1,4,8} reference shots per batch, checkpoint "
    "selected on the validation loss of held-out images of the pretraining categories."
)


def pretrain_command(
    data: list[Path] = typer.Option(
        ...,
        "--data",
        help="MVTec-layout category folder (train/good, test/<defect>, ground_truth/<defect>); "
        "repeat for several categories, each one class. Never pass an evaluation category.",
        exists=False,
    ),
    out: Path = typer.Option(..., "--out", help="Checkpoint file to write (best epoch)."),
    backbone: str = typer.Option("mobilenet_v2", "--backbone", help="Backbone name."),
    weights: Path | None = typer.Option(
        None, "--weights", help="Local backbone weights file (default: the backbone's source)."
    ),
    epochs: int = typer.Option(10, "--epochs", min=1, help="Training epochs."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Images per batch."),
    lr: float = typer.Option(1e-4, "--lr", min=0.0, help="Adam learning rate (weight decay 5e-4)."),
    image_size: int | None = typer.Option(
        None, "--image-size", min=32, help="Square training size (default: the backbone's, 224)."
    ),
    synthetic_ratio: float = typer.Option(
        0.5,
        "--synthetic-ratio",
        min=0.0,
        max=1.0,
        help="Fraction of the non-reference train/good images that get a synthetic anomaly "
        "(Perlin texture, CutPaste scar or patch; fresh each epoch); the rest are normals.",
    ),
    max_images_per_class: int | None = typer.Option(
        None,
        "--max-images-per-class",
        min=2,
        help="Cap on training+validation images per class (random, seeded).",
    ),
    num_tokens: int = typer.Option(
        2048, "--num-tokens", min=1, help="Learnable reference tokens per level of the projector."
    ),
    workers: int = typer.Option(0, "--workers", min=0, help="DataLoader worker processes."),
    seed: int = typer.Option(0, "--seed", help="Seed for splits, anomalies, views and init."),
    device: str = typer.Option(
        "auto", "--device", help="'auto' (CUDA when present, else CPU), 'cpu', 'cuda', 'cuda:1'."
    ),
    val_fraction: float = typer.Option(
        0.1,
        "--val-fraction",
        min=0.0,
        max=0.9,
        help="Fraction of each pretraining category held out for checkpoint selection.",
    ),
    references_per_class: int = typer.Option(
        32,
        "--references-per-class",
        min=1,
        help="Normal train/good images per class kept as the reference pool (encoded once).",
    ),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue the run from <out stem>.resume.pt (written each epoch and on Ctrl-C).",
    ),
    time_limit: float | None = typer.Option(
        None,
        "--time-limit",
        min=0.0,
        help="Minutes: do not start an epoch that would end past this wall time (the best "
        "checkpoint so far is kept).",
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Pretrain the ADPretrain projector (frozen backbone, residual features) and save it."""
    from pretrain.data import DatasetError
    from pretrain.train import TrainConfig, train

    console = Console(stderr=True)
    cfg = TrainConfig(
        data=list(data),
        out=out,
        backbone=backbone,
        weights=weights,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        image_size=image_size,
        synthetic_ratio=synthetic_ratio,
        max_images_per_class=max_images_per_class,
        num_tokens=num_tokens,
        workers=workers,
        seed=seed,
        device=device,
        val_fraction=val_fraction,
        references_per_class=references_per_class,
        resume=resume,
        progress=progress,
        time_limit_minutes=time_limit,
    )
    try:
        result = train(cfg, console=console)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted; continue with the same command plus --resume[/]")
        raise typer.Exit(130) from None
    except (DatasetError, FileNotFoundError, KeyError, ValueError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        console.print(f"[red]error:[/] {message}")
        raise typer.Exit(2) from None
    console.print(
        f"[green]saved[/] {result.out} (epoch {result.best_epoch} of {cfg.epochs}, "
        f"validation loss {result.best_val_loss:.4f})"
        + (f"; {result.stopped_early}" if result.stopped_early else "")
    )


pretrain_command.__doc__ = f"{pretrain_command.__doc__}\n\n{DEFAULTS_NOTE}"


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:  # noqa: ARG001
    """Mount `adqc pretrain` on the root app."""
    app.command("pretrain")(pretrain_command)
