"""The ingest commands: ``adqc serve``, ``adqc camera simulate`` and ``adqc alarms tail``."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

DEFAULT_BOOTSTRAP = os.environ.get("ADQC_KAFKA__BOOTSTRAP", "127.0.0.1:9092")

err = Console(stderr=True, soft_wrap=True)


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
    check: bool = typer.Option(False, "--check", help="validate the settings and exit"),
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
        typer.echo(f"{config or 'environment'}: settings OK")
        return
    _configure_logging(settings.log_level, settings.log_format)
    from ingest.runtime import serve

    serve(settings)


def simulate_command(
    source: Path = typer.Option(..., "--source", help="folder (or file) of PNG/JPEG images"),
    product: str = typer.Option(..., "--product", help="product id sent in the frame headers"),
    topic: str = typer.Option("frames", "--topic"),
    fps: float = typer.Option(5.0, "--fps", help="frames per second (0 = as fast as possible)"),
    line: str = typer.Option("line-1", "--line"),
    camera: str = typer.Option("cam-1", "--camera", help="camera id (also the record key)"),
    bootstrap: str = typer.Option(DEFAULT_BOOTSTRAP, "--bootstrap"),
    count: int | None = typer.Option(None, "--count", help="stop after N frames"),
    loop: bool = typer.Option(False, "--loop", help="cycle through the images"),
    claim_check: bool = typer.Option(
        False, "--claim-check", help="send file:// URIs instead of image bytes"
    ),
) -> None:
    """Publish a folder's images to Kafka as frames of one camera."""
    from ingest.camera import CameraSimulator, CameraSourceError, list_images, make_producer

    try:
        paths = list_images(source)
    except CameraSourceError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    total = count if count is not None else (None if loop else len(paths))
    producer = make_producer(bootstrap)
    sim = CameraSimulator(producer, topic, product, line, camera, claim_check=claim_check)
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
    except KeyboardInterrupt:
        err.print("interrupted")
        raise typer.Exit(130) from None
    finally:
        producer.close()
    err.print(f"published {len(sent)} frame(s) of {product!r} to {topic!r}")


def tail_command(
    bootstrap: str = typer.Option(DEFAULT_BOOTSTRAP, "--bootstrap"),
    topic: str = typer.Option("alarms", "--topic"),
    from_beginning: bool = typer.Option(False, "--from-beginning"),
    as_json: bool = typer.Option(False, "--json", help="one JSON alarm per line on stdout"),
    group: str | None = typer.Option(None, "--group", help="join a consumer group and commit"),
    limit: int | None = typer.Option(None, "--max", help="exit after N unique alarms"),
    idle_timeout: float | None = typer.Option(
        None, "--idle-timeout", help="exit after this many seconds without alarms"
    ),
    heatmap: bool = typer.Option(
        False, "--heatmap", help="keep inline heatmap data in --json output"
    ),
) -> None:
    """Follow the alarms topic like an MES: validate, drop repeats (by alarm id), print."""
    from ingest.alarms import AlarmTail

    out = Console(highlight=False)
    try:
        tail = AlarmTail(bootstrap, topic, from_beginning=from_beginning, group=group)
    except TimeoutError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
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
    finally:
        tail.close()
        s = tail.stats
        err.print(f"{s.unique} alarm(s), {s.duplicates} duplicate(s) dropped, {s.invalid} invalid")


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    """Mount ``serve`` at the top level and ``camera simulate`` / ``alarms tail``."""
    app.command("serve")(serve_command)
    groups["camera"].command("simulate")(simulate_command)
    groups["alarms"].command("tail")(tail_command)
