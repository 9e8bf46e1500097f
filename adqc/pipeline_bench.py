"""``adqc bench pipeline``: the streaming pipeline benchmark with its own Kafka and Redis.

It lives in the composition root because it starts servers (``deploy.servers``) and runs the
ingest benchmark (``ingest.bench``) against them; ``ingest`` itself never imports ``deploy``.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table


def _serve_argv(config: Path) -> list[str]:
    return [
        sys.executable,
        "-c",
        "from adqc.cli import main; main()",
        "serve",
        "--config",
        str(config),
    ]


def pipeline_command(
    json_out: Path = typer.Option(..., "--json", help="write the result JSON here"),
    frames: int = typer.Option(400, "--frames", help="backlog frames for the throughput phase"),
    latency_frames: int = typer.Option(200, "--latency-frames"),
    latency_load: float = typer.Option(
        0.7, "--latency-load", help="latency phase rate as a fraction of the measured rate"
    ),
    batch: int = typer.Option(8, "--batch", help="serve batch size (engine-only uses the same)"),
    decode_workers: int = typer.Option(1, "--decode-workers"),
    defect_every: int = typer.Option(5, "--defect-every", help="one defective frame in N"),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="default: the shipped one"),
    data: Path | None = typer.Option(None, "--data", help="MVTec-layout category folder"),
) -> None:
    """Frames/s and p50/p99 latency through Kafka -> engine -> results/alarms vs engine-only."""
    from deploy.servers import KafkaBroker, RedisServer
    from ingest.bench import BenchConfig, BenchError, run_pipeline_bench

    console = Console(stderr=True, soft_wrap=True)
    config = BenchConfig(
        frames=frames,
        batch_size=batch,
        decode_workers=decode_workers,
        defect_every=defect_every,
        latency_frames=latency_frames,
        latency_load=latency_load,
        checkpoint=checkpoint,
    )
    if data is not None:
        config.data = data
    with tempfile.TemporaryDirectory(prefix="adqc-bench-") as tmp:
        console.print("starting Kafka and Redis (deploy.servers)")
        with KafkaBroker(partitions=config.partitions) as broker, RedisServer() as redis:
            try:
                result = run_pipeline_bench(
                    broker.bootstrap, redis.url, _serve_argv, Path(tmp), config, console
                )
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


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    """Mount ``adqc bench pipeline``."""
    groups["bench"].command("pipeline")(pipeline_command)
