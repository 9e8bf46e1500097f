"""`adqc export triton|onnx|torchscript` and `adqc stack` (mounted by adqc/cli.py); `adqc bench
triton` lives in benchmarks/cli.py."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

#: the store URL `adqc export triton` writes when neither --store nor ADQC_STORE__URL is given
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

BackboneOpt = Annotated[str, typer.Option(help="Backbone name (pretrain.backbones registry).")]
CheckpointOpt = Annotated[
    Path | None,
    typer.Option(help="Projector checkpoint; default: the shipped pretrain/checkpoints/<bb>.pt."),
]
WeightsOpt = Annotated[
    Path | None, typer.Option(help="Backbone weights file (backbones that need one).")
]


class Kind(StrEnum):
    """Triton instance kinds."""

    auto = "auto"
    gpu = "gpu"
    cpu = "cpu"


KindOpt = Annotated[Kind, typer.Option(help="Instance kind (auto: GPU when torch sees CUDA).")]


def _fail(message: str, code: int = 1) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=code)


def _check_kind(kind: str) -> str:
    if kind not in ("auto", "gpu", "cpu"):
        _fail(f"--kind must be auto, gpu or cpu, not {kind!r}", 2)
    return str(kind)


def export_triton(
    out: Annotated[Path, typer.Option("--out", help="Model repository directory to write.")],
    checkpoint: CheckpointOpt = None,
    backbone: BackboneOpt = "mobilenet_v2",
    weights: WeightsOpt = None,
    redis_url: Annotated[
        str | None,
        typer.Option(
            "--store",
            "--redis-url",
            help="Reference store URL written into the config WITHOUT its password (tritonserver "
            "reads ADQC_REDIS_PASSWORD or ADQC_REDIS_PASSWORD_FILE; env ADQC_STORE__URL of "
            "the tritonserver process wins).",
            show_default=f"$ADQC_STORE__URL, else {DEFAULT_REDIS_URL}",
        ),
    ] = None,
    max_batch: Annotated[int, typer.Option(min=1, help="Triton max_batch_size.")] = 16,
    instances: Annotated[
        int, typer.Option(min=1, help="Instances of adqc_features and adqc_stride8.")
    ] = 1,
    kind: KindOpt = Kind.auto,
    queue_delay_us: Annotated[
        int, typer.Option(min=0, help="Dynamic batching max queue delay (microseconds).")
    ] = 2000,
    split_preprocess: Annotated[
        bool,
        typer.Option(help="Separate adqc_preprocess model (one more torch process; see docs)."),
    ] = False,
    torch_threads: Annotated[
        int, typer.Option(min=0, help="torch threads per instance (0: torch's default).")
    ] = 0,
    precision: Annotated[
        str, typer.Option(help="fp32 | fp16 (CUDA autocast; needs --kind gpu).")
    ] = "fp32",
) -> None:
    """Write a self-contained Triton model repository (ensemble `adqc`)."""
    from deploy.triton_repo import build_model_repository
    from inference.store.settings import store_url

    try:
        redis_url = store_url(redis_url, DEFAULT_REDIS_URL)
        spec = build_model_repository(
            out,
            backbone=backbone,
            checkpoint=checkpoint,
            weights=weights,
            redis_url=redis_url,
            max_batch=max_batch,
            instances=instances,
            kind=_check_kind(kind),  # type: ignore[arg-type]
            queue_delay_us=queue_delay_us,
            split_preprocess=split_preprocess,
            torch_threads=torch_threads,
            precision=precision,
        )
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    typer.echo(
        f"wrote {out}: ensemble 'adqc' for {spec.model_id} ({spec.image_size}px, "
        f"{len(spec.level_shapes)} levels), {spec.instances} x {spec.kind.upper()} instance(s), "
        f"max batch {spec.max_batch}, store {spec.redis_url} (env ADQC_STORE__URL overrides)"
        + ("; stride-8 features: 'adqc_stride8'" if spec.stride8_shapes else "")
    )
    from inference.store.urls import split_password

    if split_password(redis_url)[1] is not None:
        typer.echo(
            "the store password was NOT written into the repository: start tritonserver with "
            "ADQC_REDIS_PASSWORD, ADQC_REDIS_PASSWORD_FILE (a mounted secret) or ADQC_STORE__URL"
        )


def export_onnx_cmd(
    out: Annotated[Path, typer.Option("--out", help="Directory to write (Triton layout).")],
    checkpoint: CheckpointOpt = None,
    backbone: BackboneOpt = "mobilenet_v2",
    weights: WeightsOpt = None,
    max_batch: Annotated[int, typer.Option(min=1)] = 16,
    instances: Annotated[int, typer.Option(min=1)] = 1,
    kind: KindOpt = Kind.auto,
) -> None:
    """Export backbone and projector to ONNX (dynamic batch) with onnxruntime configs."""
    from deploy.export import export_onnx

    try:
        spec = export_onnx(
            out,
            backbone=backbone,
            checkpoint=checkpoint,
            weights=weights,
            max_batch=max_batch,
            instances=instances,
            kind=_check_kind(kind),  # type: ignore[arg-type]
        )
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    typer.echo(f"wrote {out}: {', '.join(spec.files)} ({spec.model_id})")


def export_torchscript_cmd(
    out: Annotated[Path, typer.Option("--out", help="Directory to write.")],
    checkpoint: CheckpointOpt = None,
    backbone: BackboneOpt = "mobilenet_v2",
    weights: WeightsOpt = None,
) -> None:
    """Export backbone and projector to TorchScript (traced, any batch size)."""
    from deploy.export import export_torchscript

    try:
        spec = export_torchscript(out, backbone=backbone, checkpoint=checkpoint, weights=weights)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    typer.echo(f"wrote {out}: {', '.join(spec.files)} ({spec.model_id})")


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    """Mount the export commands on `adqc export` and `adqc stack`."""
    groups["export"].command("triton")(export_triton)
    groups["export"].command("onnx")(export_onnx_cmd)
    groups["export"].command("torchscript")(export_torchscript_cmd)
    from deploy.stack_cli import stack_app

    app.add_typer(stack_app, name="stack")
