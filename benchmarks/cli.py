"""``adqc bench soak|triton|pipeline|scaling|io``: the benchmark drivers' commands (mounted by
adqc/cli.py).

Imports stay light (typer, rich): each command imports its driver when it runs, so
``adqc --help`` loads neither Kafka nor torch. ``adqc bench anomalib|levels`` live in
:mod:`benchmarks.peer.cli`; ``adqc bench accuracy`` in :mod:`evaluation.cli`.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from deploy.cli import BackboneOpt, CheckpointOpt
from inference.cli_conventions import pick


def _fail(message: str, code: int = 1) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=code)


def soak_command(
    frames: int = typer.Option(2000, "--frames", min=1, help="frames to push through"),
    hostile_every: int = typer.Option(10, "--hostile-every", min=1, help="every Nth is hostile"),
    sample_every: int = typer.Option(100, "--sample-every", min=1, help="RSS sample period"),
    out: Path | None = typer.Option(None, "--out", help="write the JSON result here"),
    workers: int = typer.Option(
        2, "--workers", min=1, help="frames handled at once (serve's batch.decode_workers)"
    ),
) -> None:
    """RSS soak of serve's per-frame memory path (decode, heatmap, DLQ record) with hostile
    frames mixed in; prints the RSS series summary (docs/RELIABILITY.md)."""
    from benchmarks.soak import run_soak

    def progress(n: int, rss: float) -> None:
        typer.echo(f"{n:>7} frames  RSS {rss:8.1f} MiB", err=True)

    result = run_soak(frames, hostile_every, sample_every, progress=progress, workers=workers)
    result["command"] = "adqc bench soak " + " ".join(sys.argv[3:])
    text = json.dumps(result, indent=2)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    summary = {k: v for k, v in result.items() if k != "samples"}
    typer.echo(json.dumps(summary, indent=2))


def _emit_triton(result: dict, json_out: Path | None) -> None:
    result["command"] = "adqc bench triton " + " ".join(sys.argv[3:])
    text = json.dumps(result, indent=2)
    typer.echo(text)
    if json_out is not None:
        json_out.write_text(text + "\n")


def bench_triton(
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per request.")] = 8,
    batch: Annotated[int | None, typer.Option("--batch", hidden=True)] = None,
    requests: Annotated[int, typer.Option(min=1, help="Timed requests.")] = 50,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed requests first.")] = 5,
    concurrency: Annotated[int, typer.Option(min=1, help="Requests in flight.")] = 1,
    checkpoint: CheckpointOpt = None,
    backbone: BackboneOpt = "mobilenet_v2",
    url: Annotated[
        str | None,
        typer.Option(help="gRPC url of a running Triton; default: start Redis + Triton here."),
    ] = None,
    product: Annotated[
        str | None, typer.Option(help="With --url: an onboarded product to score.")
    ] = None,
    store: Annotated[str | None, typer.Option(help="With --url: the store of --product.")] = None,
    torch_threads: Annotated[
        int, typer.Option(min=0, help="torch threads of the served model (0: default).")
    ] = 0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write results here.")] = None,
    matrix: Annotated[
        bool,
        typer.Option(
            "--matrix/--single",
            help="--matrix: payload x transport x concurrency, plus in-process per runtime.",
        ),
    ] = False,
    concurrencies: Annotated[str, typer.Option(help="With --matrix.")] = "1,2,4,8",
    payloads: Annotated[str, typer.Option(help="With --matrix: uint8,float32.")] = "uint8,float32",
    transports: Annotated[str, typer.Option(help="With --matrix: grpc,shm.")] = "grpc,shm",
    stride8: Annotated[
        bool,
        typer.Option(
            "--stride8",
            help="the default detector's engine step: adqc_stride8 vs in-process stride-8 "
            "features (ONNX Runtime, torch) at --batch-size",
        ),
    ] = False,
) -> None:
    """Model-only latency/throughput of the `adqc` ensemble over gRPC (uint8 payloads);
    ``--matrix``: uint8 vs float32 payloads, gRPC vs system shared memory, concurrency 1..8."""
    from benchmarks.triton import run_bench, run_matrix
    from inference.cli_conventions import pick

    def split(text: str) -> tuple[str, ...]:
        return tuple(v.strip() for v in text.split(",") if v.strip())

    try:
        if stride8:
            from benchmarks.triton import run_stride8

            result = run_stride8(
                batch=pick(None, batch, "--batch-size", "--batch", batch_size),
                requests=requests,
                warmup=warmup,
                progress=lambda line: typer.echo(line, err=True),
            )
            return _emit_triton(result, json_out)
        if matrix:
            result = run_matrix(
                batch=pick(None, batch, "--batch-size", "--batch", batch_size),
                concurrency=tuple(int(v) for v in split(concurrencies)),
                payloads=split(payloads),
                transports=split(transports),
                requests=requests,
                warmup=warmup,
                backbone=backbone,
                checkpoint=checkpoint,
                torch_threads=torch_threads,
                log_dir=json_out.with_suffix(".triton-log") if json_out else None,
                progress=lambda line: typer.echo(line, err=True),
            )
            return _emit_triton(result, json_out)
        result = run_bench(
            batch=pick(None, batch, "--batch-size", "--batch", batch_size),
            requests=requests,
            warmup=warmup,
            concurrency=concurrency,
            backbone=backbone,
            checkpoint=checkpoint,
            url=url,
            product=product,
            store_url=store,
            torch_threads=torch_threads,
        )
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        _fail(str(exc))
    text = json.dumps(result, indent=2)
    typer.echo(text)
    if json_out is not None:
        json_out.write_text(text + "\n")


def pipeline_command(
    json_out: Path = typer.Option(..., "--json", help="write the result JSON here"),
    frames: int = typer.Option(400, "--frames", help="backlog frames for the throughput phase"),
    latency_frames: int = typer.Option(200, "--latency-frames"),
    latency_load: float = typer.Option(
        0.7, "--latency-load", help="latency phase rate as a fraction of the measured rate"
    ),
    batch_size: int = typer.Option(
        8, "--batch-size", help="serve batch size (engine-only uses the same)"
    ),
    batch: int | None = typer.Option(None, "--batch", hidden=True),
    decode_workers: int = typer.Option(1, "--decode-workers"),
    defect_every: int = typer.Option(5, "--defect-every", help="one defective frame in N"),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="default: the shipped one"),
    data: Path | None = typer.Option(None, "--data", help="MVTec-layout category folder"),
    security_protocol: str = typer.Option(
        "PLAINTEXT",
        "--security-protocol",
        help="PLAINTEXT, SSL (mutual TLS), SASL_PLAINTEXT or SASL_SSL (SCRAM-SHA-512): the "
        "benchmark's own broker serves it with certificates made for the run",
    ),
) -> None:
    """Frames/s and p50/p99 latency through Kafka -> engine -> results/alarms vs engine-only."""
    from benchmarks.pipeline import BenchConfig, BenchError, run_with_servers

    console = Console(stderr=True, soft_wrap=True)
    config = BenchConfig(
        frames=frames,
        batch_size=pick(None, batch, "--batch-size", "--batch", batch_size),
        decode_workers=decode_workers,
        defect_every=defect_every,
        latency_frames=latency_frames,
        latency_load=latency_load,
        checkpoint=checkpoint,
    )
    if data is not None:
        config.data = data
    if security_protocol not in ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"):
        console.print(f"[red]error:[/red] unknown --security-protocol {security_protocol!r}")
        raise typer.Exit(2)
    with tempfile.TemporaryDirectory(prefix="adqc-bench-") as tmp:
        try:
            result = run_with_servers(config, security_protocol, Path(tmp), console)
        except BenchError as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(1) from exc
    result["command"] = "adqc bench pipeline " + " ".join(sys.argv[3:])
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(result, indent=2) + "\n")
    table = Table(title="adqc pipeline benchmark")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in (
        "frames_per_s",
        "engine_frames_per_s",
        "engine_features_frames_per_s",
        "ratio",
        "serve_cpu_ms_per_frame",
        "engine_cpu_ms_per_frame",
        "cpu_ratio",
        "p50_ms",
        "p99_ms",
        "latency_rate_fps",
        "mean_batch_size",
        "alarms",
        "dlq",
    ):
        table.add_row(key, str(result[key]))
    Console().print(table)
    console.print(f"wrote {json_out}")


def scaling_command(
    json_out: Path = typer.Option(..., "--json", help="write the result JSON here"),
    workers: str = typer.Option("1,2,4", "--workers", help="worker counts, comma-separated"),
    frames: int = typer.Option(320, "--frames", min=1, help="backlog frames per worker count"),
    partitions: int = typer.Option(0, "--partitions", min=0, help="0: the largest count"),
    threads: int = typer.Option(
        0, "--threads", min=0, help="threads per worker (0: max(1, cpus // workers))"
    ),
    batch_size: int = typer.Option(8, "--batch-size", min=1),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="default: the shipped one"),
    data: Path | None = typer.Option(None, "--data", help="MVTec-layout category folder"),
    timeout: float = typer.Option(600.0, "--timeout", help="seconds per worker count"),
) -> None:
    """Pipeline frames/s with 1, 2, 4 `adqc serve` workers in one consumer group (real Kafka)."""
    from benchmarks.pipeline import BenchError
    from benchmarks.scaling import ScalingConfig, run_with_servers

    console = Console(stderr=True, soft_wrap=True)
    try:
        counts = tuple(int(v) for v in workers.split(",") if v.strip())
        config = ScalingConfig(
            workers=counts,
            frames=frames,
            partitions=partitions,
            threads=threads,
            batch_size=batch_size,
            checkpoint=checkpoint,
            timeout_s=timeout,
        )
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    if data is not None:
        config.data = data
    with tempfile.TemporaryDirectory(prefix="adqc-bench-scaling-") as tmp:
        try:
            result = run_with_servers(config, Path(tmp), console)
        except BenchError as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(1) from exc
    result["command"] = "adqc bench scaling " + " ".join(sys.argv[3:])
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(result, indent=2) + "\n")
    table = Table(title=f"adqc bench scaling ({result['cpu_count']} CPUs)")
    for col in ("workers", "threads", "frames/s", "per worker", "ratio to 1", "CPU busy"):
        table.add_column(col, justify="right")
    for r in result["runs"]:
        table.add_row(
            str(r["workers"]),
            str(r["threads_per_worker"]),
            str(r["frames_per_s"]),
            str(r["frames_per_s_per_worker"]),
            str(r["ratio_to_1"]),
            str(r["cpu_busy"]),
        )
    Console().print(table)
    console.print(f"wrote {json_out}")


def io_command(
    json_out: Path = typer.Option(..., "--json", help="write the result JSON here"),
    shots: str = typer.Option("8,64", "--shots", help="pool sizes K of the Redis records"),
    repeats: int = typer.Option(20, "--repeats", min=1, help="fetches per pool size"),
    messages: int = typer.Option(1000, "--messages", min=1, help="Kafka messages"),
    message_bytes: int = typer.Option(
        0, "--message-bytes", min=0, help="0: the bytes of the data folder's first test image"
    ),
    partitions: int = typer.Option(2, "--partitions", min=1),
    data: Path = typer.Option(
        Path("../shared/datasets/mvtec_ad/bottle"), "--data", help="MVTec category folder"
    ),
) -> None:
    """Redis reference fetch cold/warm and Kafka raw produce/consume of frame-sized messages."""
    from benchmarks.io_limits import run_with_servers

    try:
        counts = tuple(int(v) for v in shots.split(",") if v.strip())
    except ValueError:
        _fail(f"--shots: comma-separated integers, got {shots!r}", 2)
    result = run_with_servers(
        shots=counts,
        repeats=repeats,
        messages=messages,
        message_bytes=message_bytes,
        partitions=partitions,
        data=data,
    )
    result["command"] = "adqc bench io " + " ".join(sys.argv[3:])
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(result, indent=2) + "\n")
    typer.echo(json.dumps(result, indent=2))


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    """Mount ``adqc bench soak|triton|pipeline|scaling|io``."""
    groups["bench"].command("scaling")(scaling_command)
    groups["bench"].command("io")(io_command)
    groups["bench"].command("soak")(soak_command)
    groups["bench"].command("triton")(bench_triton)
    groups["bench"].command("pipeline")(pipeline_command)
