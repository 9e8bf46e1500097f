"""The ingest commands: ``adqc serve``, ``adqc camera simulate`` and ``adqc alarms tail``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from inference.cli_conventions import EXIT_RUNTIME, hidden_alias, pick

if TYPE_CHECKING:
    from ingest.settings import KafkaSettings

err = Console(stderr=True, soft_wrap=True)

#: how long the Kafka tools wait for a broker before giving up (exit 1)
CONNECT_TIMEOUT_S = 10.0

# Kafka connection options shared by the tools (each also read from ADQC_KAFKA__<NAME>, the
# same environment as `adqc serve`; the options win).
BootstrapOption = typer.Option(
    None, "--bootstrap", help="host:port[,host:port] (env ADQC_KAFKA__BOOTSTRAP)"
)
ProtocolOption = typer.Option(
    None,
    "--security-protocol",
    help="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL (env ADQC_KAFKA__SECURITY_PROTOCOL)",
)
MechanismOption = typer.Option(
    None, "--sasl-mechanism", help="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"
)
UserOption = typer.Option(None, "--sasl-username")
PasswordOption = typer.Option(
    None,
    "--sasl-password",
    help="prefer env ADQC_KAFKA__SASL_PASSWORD (options show in the process list)",
)
CafileOption = typer.Option(None, "--ssl-cafile", help="CA bundle that signed the brokers")
CertfileOption = typer.Option(None, "--ssl-certfile", help="client certificate (mutual TLS)")
KeyfileOption = typer.Option(None, "--ssl-keyfile", help="client private key (mutual TLS)")


#: the parameter names of the Kafka connection options (BootstrapOption ... KeyfileOption)
#: that a command passes on to :func:`_kafka_or_exit`
KAFKA_OPTION_NAMES = (
    "bootstrap",
    "security_protocol",
    "sasl_mechanism",
    "sasl_username",
    "sasl_password",
    "ssl_cafile",
    "ssl_certfile",
    "ssl_keyfile",
)


def _kafka_options(values: dict[str, object]) -> dict[str, object]:
    """The Kafka connection options out of a command's parameters (its ``locals()``)."""
    return {name: values[name] for name in KAFKA_OPTION_NAMES}


def _kafka_or_exit(**options: object) -> KafkaSettings:
    """KafkaSettings from the environment + options; checks the broker once.

    Exits 2 on invalid settings, 1 when no broker answers within CONNECT_TIMEOUT_S, 3
    (EXIT_CREDENTIALS) when the broker refuses the login or TLS cannot verify it.
    """
    import logging

    from ingest.preflight import EXIT_CREDENTIALS, CredentialsError, check_kafka, kafka_settings
    from ingest.settings import SettingsError

    if isinstance(options.get("bootstrap"), str):
        options["bootstrap"] = str(options["bootstrap"]).split(",")
    try:
        kafka = kafka_settings(**options)
    except SettingsError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from exc
    preflight_log = logging.getLogger("ingest.preflight")
    level = preflight_log.level
    preflight_log.setLevel(logging.ERROR)  # the outage is reported below, in one line
    try:
        reachable = check_kafka(kafka, CONNECT_TIMEOUT_S)
    except CredentialsError as exc:
        err.print(f"[red]fatal:[/red] {exc}", highlight=False)
        raise typer.Exit(EXIT_CREDENTIALS) from exc
    finally:
        preflight_log.setLevel(level)
    if not reachable:
        _kafka_down(kafka)
    return kafka


def _kafka_down(kafka: KafkaSettings, detail: str = "") -> None:
    where = ",".join(kafka.bootstrap)
    err.print(
        f"[red]error:[/red] no Kafka broker answered at {where} within {CONNECT_TIMEOUT_S:g} s"
        f"{f' ({detail})' if detail else ''}: start it (`adqc stack up`, or see "
        "docs/OPERATIONS.md) or point --bootstrap / ADQC_KAFKA__BOOTSTRAP at it",
        highlight=False,
    )
    raise typer.Exit(EXIT_RUNTIME)


def _configure_logging(level: str, fmt: str = "text") -> None:
    from ingest.logs import configure_logging

    configure_logging(level, "json" if fmt == "json" else "text")


def serve_command(
    config: Path | None = typer.Option(
        None, "--config", "-c", help="serve settings YAML (env ADQC_* overrides it)"
    ),
    print_example: bool = typer.Option(
        False, "--print-example", help="print a config with every default and exit"
    ),
    check: bool = typer.Option(
        False, "--check", help="validate the settings, load the local engine's checkpoint, exit"
    ),
) -> None:
    """Serve: consume frames from Kafka, score them, publish results/alarms, DLQ bad frames."""
    from ingest.settings import SettingsError, example_yaml, load_settings

    if print_example:
        typer.echo(example_yaml())
        return
    try:
        settings = load_settings(config)
    except SettingsError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False, markup=True)
        raise typer.Exit(2) from exc
    if check:
        from ingest.preflight import EngineCheckError, check_engine

        try:
            model = check_engine(settings.engine)
        except EngineCheckError as exc:
            err.print(f"[red]error:[/red] {exc}", highlight=False)
            raise typer.Exit(2) from exc
        loaded = f", engine loads ({model})" if model else ""
        typer.echo(f"{config or 'environment'}: settings OK{loaded}")
        return
    _configure_logging(settings.log_level, settings.log_format)
    from ingest.preflight import EXIT_CREDENTIALS, CredentialsError, check_kafka, check_store

    try:  # wrong credentials are fatal at start-up; an unreachable server is waited for
        check_store(settings.store.url)
        check_kafka(settings.kafka)
    except CredentialsError as exc:
        err.print(f"[red]fatal:[/red] {exc}", highlight=False)
        raise typer.Exit(EXIT_CREDENTIALS) from exc
    from inference.store import StoreAuthError
    from ingest.runtime import serve

    try:
        serve(settings)
    except CredentialsError as exc:  # the broker came back from an outage refusing the login
        err.print(f"[red]fatal:[/red] {exc}", highlight=False)
        raise typer.Exit(EXIT_CREDENTIALS) from exc
    except StoreAuthError as exc:  # mid-run: the password rotated or the ACL changed
        err.print(
            f"[red]fatal:[/red] {exc}; serve stopped, the frames in flight stay uncommitted "
            "(fix the secret and restart: they are re-read)",
            highlight=False,
        )
        raise typer.Exit(EXIT_CREDENTIALS) from exc


def simulate_command(
    source: Path = typer.Option(..., "--source", help="folder (or file) of PNG/JPEG images"),
    product: str = typer.Option(..., "--product", help="product id sent in the frame headers"),
    topic: str = typer.Option("frames", "--topic"),
    fps: float = typer.Option(5.0, "--fps", help="frames per second (0 = as fast as possible)"),
    line: str = typer.Option("line-1", "--line"),
    camera: str = typer.Option("cam-1", "--camera", help="camera id (also the record key)"),
    bootstrap: str | None = BootstrapOption,
    security_protocol: str | None = ProtocolOption,
    sasl_mechanism: str | None = MechanismOption,
    sasl_username: str | None = UserOption,
    sasl_password: str | None = PasswordOption,
    ssl_cafile: Path | None = CafileOption,
    ssl_certfile: Path | None = CertfileOption,
    ssl_keyfile: Path | None = KeyfileOption,
    limit: int | None = typer.Option(None, "--limit", help="stop after N frames"),
    count: int | None = hidden_alias("--count"),
    loop: bool = typer.Option(False, "--loop", help="cycle through the images"),
    claim_check: bool = typer.Option(
        False, "--claim-check", help="send file:// URIs instead of image bytes"
    ),
    otlp_endpoint: str | None = typer.Option(
        None,
        "--otlp-endpoint",
        help="export a 'publish' span per frame to this OTLP/HTTP traces URL "
        "(e.g. http://127.0.0.1:4318/v1/traces); the frame's traceparent points at it",
    ),
) -> None:
    """Publish a folder's images to Kafka as frames of one camera."""
    from kafka.errors import KafkaError

    from ingest.camera import CameraSimulator, CameraSourceError, list_images, make_producer

    count = pick(limit, count, "--limit", "--count", None)

    try:
        paths = list_images(source)
    except CameraSourceError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    total = count if count is not None else (None if loop else len(paths))
    kafka = _kafka_or_exit(**_kafka_options(locals()))
    try:
        producer = make_producer(kafka=kafka)
    except KafkaError as exc:
        _kafka_down(kafka, str(exc))
    provider = None
    if otlp_endpoint:
        from ingest.tracing import tracer_provider

        provider = tracer_provider("adqc-camera", otlp_endpoint)
    sim = CameraSimulator(
        producer,
        topic,
        product,
        line,
        camera,
        claim_check=claim_check,
        tracer=provider.get_tracer("adqc.camera") if provider is not None else None,
    )
    columns = (
        TextColumn("[bold]camera[/bold] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    try:
        with Progress(*columns, console=err) as progress:
            task = progress.add_task(f"{camera} -> {topic}", total=total)
            sent = sim.run(
                paths,
                fps=fps,
                count=count,
                loop=loop,
                on_sent=lambda n: progress.update(task, completed=n),
            )
    except CameraSourceError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    except KafkaError as exc:
        _kafka_down(kafka, str(exc))
    except KeyboardInterrupt:
        err.print("interrupted")
        raise typer.Exit(130) from None
    finally:
        producer.close()
        if provider is not None:
            provider.shutdown()  # flush the spans still queued
    err.print(f"published {len(sent)} frame(s) of {product!r} to {topic!r}")


def tail_command(
    bootstrap: str | None = BootstrapOption,
    security_protocol: str | None = ProtocolOption,
    sasl_mechanism: str | None = MechanismOption,
    sasl_username: str | None = UserOption,
    sasl_password: str | None = PasswordOption,
    ssl_cafile: Path | None = CafileOption,
    ssl_certfile: Path | None = CertfileOption,
    ssl_keyfile: Path | None = KeyfileOption,
    topic: str = typer.Option("alarms", "--topic"),
    from_beginning: bool = typer.Option(False, "--from-beginning"),
    as_json: bool = typer.Option(False, "--json", help="one JSON alarm per line on stdout"),
    group: str | None = typer.Option(None, "--group", help="join a consumer group and commit"),
    limit: int | None = typer.Option(None, "--limit", help="exit after N unique alarms"),
    max_alias: int | None = hidden_alias("--max"),
    idle_timeout: float | None = typer.Option(
        None, "--idle-timeout", help="exit after this many seconds without alarms"
    ),
    heatmap: bool = typer.Option(
        False, "--heatmap", help="keep inline heatmap data in --json output"
    ),
) -> None:
    """Follow the alarms topic like an MES: validate, drop repeats (by alarm id), print."""
    from kafka.errors import KafkaError

    from ingest.alarms import AlarmTail

    limit = pick(limit, max_alias, "--limit", "--max", None)

    out = Console(highlight=False)
    kafka = _kafka_or_exit(**_kafka_options(locals()))
    try:
        tail = AlarmTail(topic=topic, from_beginning=from_beginning, group=group, kafka=kafka)
    except TimeoutError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    except KafkaError as exc:
        _kafka_down(kafka, str(exc))
    n = 0
    try:
        for event in tail.events(idle_timeout):
            if event.alarm is None:
                err.print(
                    f"[yellow]invalid alarm at {event.partition}@{event.offset}:[/yellow] "
                    f"{event.error}"
                )
                continue
            if event.duplicate:
                continue
            alarm = event.alarm
            if as_json:
                data = alarm.model_dump(mode="json")
                if not heatmap and data.get("heatmap") and data["heatmap"].get("data"):
                    data["heatmap"]["data"] = f"<{len(data['heatmap']['data'])} base64 chars>"
                sys.stdout.write(json.dumps(data) + "\n")
                sys.stdout.flush()
            else:
                out.print(
                    f"{alarm.detected_at:%H:%M:%S} [bold red]{alarm.severity:8}[/bold red] "
                    f"{alarm.line}/{alarm.camera} {alarm.product} frame={alarm.frame_id} "
                    f"score={alarm.score:.4g} thr={alarm.threshold:.4g} "
                    f"regions={len(alarm.regions)} id={alarm.alarm_id}"
                )
            n += 1
            if limit is not None and n >= limit:
                break
    except KeyboardInterrupt:
        pass
    except KafkaError as exc:
        _kafka_down(kafka, str(exc))
    finally:
        tail.close()
        s = tail.stats
        err.print(f"{s.unique} alarm(s), {s.duplicates} duplicate(s) dropped, {s.invalid} invalid")


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    """Mount ``serve`` at the top level, ``camera simulate`` and ``alarms tail``."""
    app.command("serve")(serve_command)
    groups["camera"].command("simulate")(simulate_command)
    groups["alarms"].command("tail")(tail_command)
