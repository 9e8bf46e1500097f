"""`adqc stack up | down | status | logs` (mounted by deploy/cli.py; logic in deploy/stack.py)."""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

stack_app = typer.Typer(
    help="The whole pipeline on one machine: Kafka, Redis, serve, optionally Triton, Jaeger, "
    "a camera simulator and an alarm tail; state under one directory.",
    no_args_is_help=True,
)
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

StateDirOpt = Annotated[
    Path,
    typer.Option(
        "--state-dir",
        envvar="ADQC_STACK_STATE_DIR",
        help="Directory holding the stack's state, data and logs.",
        show_default=True,
    ),
]


def _fail(message: str, code: int = 1) -> None:
    err.print(f"[red]error:[/red] {message}", soft_wrap=True)
    raise typer.Exit(code)


@stack_app.command("up")
def up(
    state_dir: StateDirOpt = Path(".adqc-stack"),
    triton: Annotated[
        bool, typer.Option("--triton", help="Score on Triton (model repository exported first).")
    ] = False,
    tracing: Annotated[
        bool,
        typer.Option("--tracing", help="Start Jaeger and send serve's and the camera's traces."),
    ] = False,
    product: Annotated[
        str | None, typer.Option("--product", help="Product the camera sends / --onboard adds.")
    ] = None,
    onboard: Annotated[
        Path | None,
        typer.Option("--onboard", help="Good images: onboard --product unless already there."),
    ] = None,
    shots: Annotated[int, typer.Option("--shots", min=1, help="K for --onboard.")] = 8,
    camera: Annotated[
        Path | None,
        typer.Option("--camera", help="Folder of images a simulated camera sends as frames."),
    ] = None,
    fps: Annotated[float, typer.Option("--fps", min=0, help="Camera frames per second.")] = 5.0,
    count: Annotated[
        int | None, typer.Option("--count", min=1, help="Camera stops after N frames.")
    ] = None,
    loop: Annotated[bool, typer.Option("--loop", help="Camera cycles through the images.")] = False,
    alarms: Annotated[
        bool, typer.Option("--alarms/--no-alarms", help="Run an alarm tail (an MES stand-in).")
    ] = True,
    checkpoint: Annotated[
        Path | None, typer.Option("--checkpoint", help="Projector checkpoint (default: shipped).")
    ] = None,
    backbone: Annotated[str, typer.Option("--backbone")] = "mobilenet_v2",
    partitions: Annotated[int, typer.Option("--partitions", min=1, help="Per topic.")] = 1,
    serve_config: Annotated[
        Path | None,
        typer.Option("--serve-config", help="Base serve YAML; the stack sets Kafka/store/engine."),
    ] = None,
    kafka_port: Annotated[int | None, typer.Option(help="Default: free (kept across ups).")] = None,
    redis_port: Annotated[int | None, typer.Option(help="Default: free (kept across ups).")] = None,
    metrics_port: Annotated[int | None, typer.Option(help="serve's /metrics port.")] = None,
    jaeger_ui_port: Annotated[int | None, typer.Option(help="Jaeger UI + query API.")] = None,
    jaeger_otlp_port: Annotated[int | None, typer.Option(help="Jaeger OTLP/HTTP.")] = None,
    foreground: Annotated[
        bool, typer.Option("--foreground", help="Run here until Ctrl-C/SIGTERM (stops all).")
    ] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait for the stack to be healthy.")
    ] = 900.0,
) -> None:
    """Start the stack and return once every part is healthy (or stay with --foreground)."""
    from deploy.stack import (
        StackError,
        StackOptions,
        Supervisor,
        down,
        read_state,
        spawn,
        supervisor_alive,
        wait_up,
    )

    try:
        options = StackOptions(
            state_dir=state_dir, triton=triton, tracing=tracing, product=product,
            onboard=onboard, shots=shots, camera=camera, fps=fps, count=count, loop=loop,
            alarms=alarms, checkpoint=checkpoint, backbone=backbone, partitions=partitions,
            serve_config=serve_config, kafka_port=kafka_port, redis_port=redis_port,
            metrics_port=metrics_port, jaeger_ui_port=jaeger_ui_port,
            jaeger_otlp_port=jaeger_otlp_port,
        ).check()  # fmt: skip
    except StackError as exc:
        _fail(str(exc), 2)
    state = read_state(options.state_dir)
    if supervisor_alive(state):
        err.print(f"stack already running (supervisor pid {state['pid']}); `adqc stack down` first")
        _print_status(options.state_dir)
        return
    if state is not None:
        down(options.state_dir)  # leftovers of a supervisor that was killed
    if foreground:
        logging.basicConfig(
            level=logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
        logging.getLogger("kafka").setLevel(logging.WARNING)

        def on_up(_sup: Any) -> None:
            _print_status(options.state_dir)
            err.print("stack up; Ctrl-C (or SIGTERM) stops everything")

        code = Supervisor(options).run(on_up=on_up)
        if code:
            _fail(f"stack stopped with status {code}; logs under {options.state_dir}", code)
        return
    proc = spawn(options)
    err.print(f"starting the stack in {options.state_dir} (supervisor pid {proc.pid}) ...")

    def progress(part: dict[str, Any]) -> None:
        err.print(f"  [green]✓[/green] {part['name']} {_address(part)}")

    try:
        wait_up(options.state_dir, proc, timeout, progress)
    except StackError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        err.print("interrupted: stopping the stack")
        down(options.state_dir)
        raise typer.Exit(130) from None
    _print_status(options.state_dir)
    err.print("`adqc stack logs [PART] -f` to follow, `adqc stack down` to stop")


@stack_app.command("down")
def down_cmd(state_dir: StateDirOpt = Path(".adqc-stack")) -> None:
    """Stop everything the stack started (idempotent; nothing is left running)."""
    from deploy.stack import down, read_state

    if read_state(state_dir) is None and not state_dir.exists():
        err.print(f"no stack in {state_dir}")
        return
    stopped = down(state_dir.resolve())
    note = f" (stopped {len(stopped)} leftover process(es): {stopped})" if stopped else ""
    err.print(f"stack in {state_dir} is down{note}")


def _short(path: Path, state_dir: Path) -> str:
    """``path`` relative to the state directory when it is inside it."""
    try:
        return str(path.resolve().relative_to(state_dir.resolve()))
    except ValueError:
        return str(path)


def _address(part: dict[str, Any]) -> str:
    urls = part.get("urls") or {}
    return " ".join(f"{k}={v}" for k, v in urls.items())


def _print_status(state_dir: Path) -> bool:
    from deploy.stack import part_health, pid_alive, read_state

    state = read_state(state_dir)
    if state is None:
        err.print(f"no stack in {state_dir}")
        return False
    sup_alive = pid_alive(state.get("pid")) and state.get("state") not in ("down", "failed")
    table = Table(
        title=f"adqc stack in {state_dir}: {state.get('state')} (logs relative to it)",
        title_justify="left",
    )
    for column in ("part", "health", "pid", "ports", "address", "log"):
        table.add_column(column, overflow="fold")
    healthy_all = sup_alive
    table.add_row(
        "supervisor",
        "[green]alive[/green]" if sup_alive else "[red]gone[/red]",
        str(state.get("pid")),
        "",
        "",
        "stack.log",
    )
    for part in state.get("parts", []):
        healthy, ports = part_health(part)
        if part.get("state") == "done":
            health = "[green]done[/green]"
        elif healthy:
            health = "[green]healthy[/green]"
        else:
            healthy_all = False
            alive = pid_alive(part.get("pid"))
            health = f"[red]{'not answering' if alive else part.get('state', 'gone')}[/red]"
        port_text = " ".join(
            f"{name}:{port}{'✓' if ports.get(name) else '✗'}"
            for name, port in (part.get("ports") or {}).items()
        )
        table.add_row(
            part["name"], health, str(part.get("pid") or ""), port_text, _address(part),
            _short(Path(part.get("log", "")), state_dir),
        )  # fmt: skip
    if state.get("error"):
        healthy_all = False
        err.print(f"[red]start failed:[/red] {state['error']}", soft_wrap=True)
    out.print(table)
    return healthy_all


@stack_app.command("status")
def status_cmd(state_dir: StateDirOpt = Path(".adqc-stack")) -> None:
    """Each part's health: process alive, ports answering (exit 1 when not all healthy)."""
    if not _print_status(state_dir):
        raise typer.Exit(1)


@stack_app.command("logs")
def logs_cmd(
    part: Annotated[
        str | None,
        typer.Argument(help="kafka, redis, serve, ... or stack/onboard/export (default: all)."),
    ] = None,
    state_dir: StateDirOpt = Path(".adqc-stack"),
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines.")
    ] = False,
    lines: Annotated[int, typer.Option("--lines", "-n", min=0, help="Lines from the end.")] = 40,
) -> None:
    """Print (and with -f follow) the logs of one part or of all parts."""
    from deploy.stack import SUPERVISOR_LOG, read_state
    from deploy.stack import follow as follow_logs

    state = read_state(state_dir) or {}
    paths = {p["name"]: Path(p["log"]) for p in state.get("parts", [])}
    paths["stack"] = state_dir / SUPERVISOR_LOG
    for extra in sorted((state_dir / "logs").glob("*.log")):
        paths[extra.stem] = extra
    paths = {name: path for name, path in paths.items() if path.exists() or name in (part,)}
    if part is not None:
        if part not in paths:
            _fail(f"no log for {part!r} in {state_dir}; known: {', '.join(sorted(paths))}", 2)
        paths = {part: paths[part]}
    if not paths:
        _fail(f"no logs in {state_dir}", 2)
    stop = threading.Event()
    if not follow:
        stop.set()
    try:
        for line in follow_logs(paths, lines, stop):
            out.print(line, markup=False, soft_wrap=True)
    except KeyboardInterrupt:
        stop.set()
