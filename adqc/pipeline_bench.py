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


def _security(protocol: str, directory: Path) -> tuple[dict, dict]:
    """(client KafkaSettings fields, KafkaBroker arguments) for ``protocol``, with throw-away
    certificates in ``directory`` and a random SASL password."""
    import secrets

    from deploy.tls import make_ca

    if protocol == "PLAINTEXT":
        return {}, {}
    ca = make_ca(directory)
    password = secrets.token_urlsafe(16)
    broker = {"tls": ca.issue("broker"), "tls_ca": ca.cert, "sasl_users": {"bench": password}}
    client: dict = {}
    if protocol.endswith("SSL"):
        client["ssl_cafile"] = ca.cert
    if protocol == "SSL":
        pair = ca.issue("bench-client")
        client |= {"ssl_certfile": pair.cert, "ssl_keyfile": pair.key}
    if protocol.startswith("SASL"):
        client |= {
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_username": "bench",
            "sasl_password": password,
        }
    return client, broker


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
    security_protocol: str = typer.Option(
        "PLAINTEXT",
        "--security-protocol",
        help="PLAINTEXT, SSL (mutual TLS), SASL_PLAINTEXT or SASL_SSL (SCRAM-SHA-512): the "
        "benchmark's own broker serves it with certificates made for the run",
    ),
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
    if security_protocol not in ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"):
        console.print(f"[red]error:[/red] unknown --security-protocol {security_protocol!r}")
        raise typer.Exit(2)
    with tempfile.TemporaryDirectory(prefix="adqc-bench-") as tmp:
        console.print(f"starting Kafka ({security_protocol}) and Redis (deploy.servers)")
        security, broker_options = _security(security_protocol, Path(tmp) / "tls")
        with (
            KafkaBroker(partitions=config.partitions, **broker_options) as broker,
            RedisServer() as redis,
        ):
            from ingest.settings import KafkaSettings

            kafka = KafkaSettings(
                bootstrap=[broker.bootstrap_for(security_protocol)],
                security_protocol=security_protocol,
                **security,
            )
            try:
                result = run_pipeline_bench(
                    kafka, redis.url, _serve_argv, Path(tmp), config, console
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
