"""The whole pipeline on one machine: ``adqc stack up | down | status | logs``.

A *stack* is Kafka, Redis, optionally Triton (on a freshly exported model repository) and
Jaeger, the ``adqc serve`` worker, and optionally a camera simulator and an alarm tail, all
started with the server code the tests use (:mod:`deploy.servers`) on 127.0.0.1. Everything
lives under one state directory (default ``.adqc-stack/``)::

    stack.json      what runs: supervisor pid, each part's pid, ports, URLs, log, state
    options.json    how it was started (``up`` options)
    ports.json      the ports chosen (reused by the next ``up`` when still free)
    stack.log       the supervisor's own log (background mode)
    serve.yaml      the worker's settings
    <part>/         each part's working directory and ``server.log`` (kafka/ and redis/ keep
                    their data between ups; products onboarded once stay)
    logs/           one-shot steps: onboard.log, export.log

One *supervisor* process owns the parts: ``up --foreground`` is the supervisor; plain ``up``
starts one in the background (its own session) and returns once every part is healthy. Each
part runs in a process group of its own, so Ctrl-C reaches only the supervisor, which stops the
parts in reverse order (camera first, Kafka last) and then kills whatever is left of their
process groups. Every process started carries ``ADQC_STACK_DIR=<state dir>`` in its
environment; ``down`` (and the supervisor itself) sweeps any such process that survived, so
nothing outlives the stack, even after a SIGKILLed supervisor.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import yaml
from pydantic import BaseModel, Field

from deploy.servers import (
    LOOPBACK,
    JaegerServer,
    KafkaBroker,
    RedisServer,
    ServerStartError,
    TritonServer,
    _ManagedServer,
    free_port,
    log_tail,
    port_open,
)

log = logging.getLogger("adqc.stack")

DEFAULT_STATE_DIR = Path(".adqc-stack")
STATE_FILE = "stack.json"
PORTS_FILE = "ports.json"
OPTIONS_FILE = "options.json"
SUPERVISOR_LOG = "stack.log"
MARKER_ENV = "ADQC_STACK_DIR"
TOPICS = ("frames", "frames.dlq", "results", "alarms")


class StackError(RuntimeError):
    """The stack could not start, or its state directory is not usable (message says why)."""


class StackOptions(BaseModel):
    """What ``adqc stack up`` starts (stored in ``options.json``)."""

    state_dir: Path = DEFAULT_STATE_DIR
    triton: bool = False
    tracing: bool = False
    product: str | None = None
    onboard: Path | None = Field(default=None, description="good images to onboard product from")
    shots: int = Field(default=8, ge=1)
    camera: Path | None = Field(default=None, description="images the simulated camera sends")
    fps: float = Field(default=5.0, ge=0)
    count: int | None = Field(default=None, ge=1)
    loop: bool = False
    alarms: bool = True
    checkpoint: Path | None = None
    backbone: str = "mobilenet_v2"
    partitions: int = Field(default=1, ge=1)
    serve_config: Path | None = Field(default=None, description="base serve YAML to extend")
    kafka_port: int | None = None
    redis_port: int | None = None
    metrics_port: int | None = None
    jaeger_ui_port: int | None = None
    jaeger_otlp_port: int | None = None

    def check(self) -> StackOptions:
        """Resolve paths and reject combinations that cannot work."""
        if (self.camera or self.onboard) and not self.product:
            raise StackError("--camera and --onboard need --product NAME")
        for name in ("camera", "onboard", "checkpoint", "serve_config"):
            path = getattr(self, name)
            if path is not None and not path.exists():
                raise StackError(f"--{name.replace('_', '-')} {path}: no such file or directory")
        return self.model_copy(
            update={
                name: getattr(self, name).resolve()
                for name in ("state_dir", "camera", "onboard", "checkpoint", "serve_config")
                if getattr(self, name) is not None
            }
        )


# --------------------------------------------------------------------------------------------
# state file


def read_state(state_dir: Path) -> dict[str, Any] | None:
    """The stack's ``stack.json`` (None when there is none or it is unreadable)."""
    try:
        return dict(json.loads((state_dir / STATE_FILE).read_text()))
    except (OSError, ValueError):
        return None


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def adqc_command(*args: str) -> list[str]:
    """argv running the ``adqc`` command of this interpreter's environment."""
    script = Path(sys.executable).parent / "adqc"
    if script.exists():
        return [str(script), *args]
    return [sys.executable, "-c", "from adqc.cli import main; main()", *args]


# --------------------------------------------------------------------------------------------
# processes


def stack_processes(state_dir: Path, exclude: set[int] | None = None) -> list[psutil.Process]:
    """Live processes started by the stack of ``state_dir`` (their environment carries the
    marker ``ADQC_STACK_DIR=<state dir>``), except ``exclude`` and this process."""
    want = str(state_dir.resolve())
    skip = {os.getpid(), *(exclude or set())}
    found = []
    for proc in psutil.process_iter(["pid", "environ", "status"]):
        info = proc.info
        if info["pid"] in skip or info["status"] == psutil.STATUS_ZOMBIE:
            continue
        env = info.get("environ") or {}
        if env.get(MARKER_ENV) == want:
            found.append(proc)
    return found


def terminate(procs: list[psutil.Process], timeout: float = 10.0) -> list[int]:
    """SIGTERM ``procs``, SIGKILL those alive after ``timeout`` s; returns the pids killed."""
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _gone, alive = psutil.wait_procs(procs, timeout=timeout)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)
    return [p.pid for p in procs]


def kill_group(pgid: int | None) -> None:
    """SIGKILL what is left of process group ``pgid`` (a part's helpers: Triton's stubs)."""
    if not pgid or pgid == os.getpgrp():
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def pid_alive(pid: int | None) -> bool:
    """True when ``pid`` runs (zombies count as gone)."""
    if not pid:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class CommandProcess(_ManagedServer):
    """An ``adqc`` command (serve, camera simulate, alarms tail) as a managed part.

    Args:
        name: the part's name.
        command: argv.
        workdir: working directory with ``server.log``.
        ready: readiness probe (default: started = ready).
        finite: the command ends by itself (the camera): exiting with 0 is success.
    """

    def __init__(
        self,
        name: str,
        command: list[str],
        *,
        workdir: Path,
        ready: Callable[[], bool] | None = None,
        finite: bool = False,
        startup_timeout: float = 300.0,
        stop_timeout: float = 30.0,
    ) -> None:
        self.name = name
        super().__init__(workdir, startup_timeout)
        self.argv = command
        self.probe = ready
        self.finite = finite
        self.stop_timeout = stop_timeout
        self.returncode: int | None = None

    def _command(self) -> list[str]:
        return self.argv

    def _env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONUNBUFFERED": "1"}

    def _ready(self) -> bool:
        return self.probe() if self.probe is not None else True

    def _start_once(self) -> None:
        if self.finite:
            # A short camera run may end before the first readiness check: that is success.
            try:
                super()._start_once()
            except ServerStartError as exc:
                if "exited with status 0 while starting" not in str(exc):
                    raise
                self.returncode = 0
            return
        super()._start_once()

    def poll(self) -> int | None:
        """The exit status once the process ended (kept after ``stop``), else None."""
        if self._proc is not None and self._proc.poll() is not None:
            self.returncode = self._proc.returncode
        return self.returncode


def _log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _log_has(path: Path, needle: str, offset: int = 0) -> bool:
    """True when ``needle`` is in the log after byte ``offset`` (this run's part of it)."""
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            return needle.encode() in fh.read()
    except OSError:
        return False


# --------------------------------------------------------------------------------------------
# the supervisor


class _Interrupted(KeyboardInterrupt):
    """SIGTERM/SIGINT while the stack starts: unwind and stop what already runs."""


class Part:
    """One started component: its server object and what ``status`` shows."""

    def __init__(self, name: str, server: _ManagedServer) -> None:
        self.name = name
        self.server = server
        self.pid: int | None = None
        self.ports: dict[str, int] = {}
        self.urls: dict[str, str] = {}
        self.health_url: str | None = None  # answers 200 while the part is healthy
        self.state = "starting"

    def record(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "pid": self.pid,
            "pgid": self.pid,
            "ports": self.ports,
            "urls": self.urls,
            "health_url": self.health_url,
            "log": str(self.server.log_path),
            "state": self.state,
            "finite": isinstance(self.server, CommandProcess) and self.server.finite,
        }


class Supervisor:
    """Starts the parts in order, watches them, and stops them all (see the module doc)."""

    def __init__(self, options: StackOptions) -> None:
        self.options = options
        self.dir = options.state_dir
        self.parts: list[Part] = []
        self.phase = "starting"
        self.error: str | None = None
        self._stop = threading.Event()
        self._ports = self._load_ports()

    # -- ports: reuse the previous up's ports when they are free (same addresses, same data) --
    def _load_ports(self) -> dict[str, int]:
        try:
            saved = json.loads((self.dir / PORTS_FILE).read_text())
        except (OSError, ValueError):
            return {}
        return {k: int(v) for k, v in saved.items()} if isinstance(saved, dict) else {}

    def _port(self, key: str, given: int | None) -> int:
        if given:
            self._ports[key] = given
            return given
        previous = self._ports.get(key)
        port = previous if previous and not port_open(previous) else free_port()
        self._ports[key] = port
        return port

    # -- state --
    def save(self) -> None:
        _write_json(self.dir / PORTS_FILE, self._ports)
        _write_json(
            self.dir / STATE_FILE,
            {
                "pid": os.getpid(),
                "state": self.phase,
                "error": self.error,
                "state_dir": str(self.dir),
                "updated_at": time.time(),
                "ports": self._ports,
                "parts": [p.record() for p in self.parts],
            },
        )

    def _start(self, part: Part, urls: dict[str, str] | None = None, **ports: int) -> Part:
        self.parts.append(part)  # before start(): an interrupted start is stopped too
        part.server.own_process_group = True
        self.save()
        log.info("starting %s", part.name)
        part.server.start()
        part.pid = part.server.pid
        part.ports.update(ports)
        part.urls.update(urls or {})
        part.state = "running"
        if isinstance(part.server, CommandProcess) and part.server.poll() == 0:
            part.state = "done"
        self.save()
        log.info("%s ready (pid %s)", part.name, part.pid)
        return part

    # -- the steps --
    def _run_step(self, name: str, argv: list[str]) -> None:
        """A one-shot command (onboarding, export), its output in logs/<name>.log."""
        path = self.dir / "logs" / f"{name}.log"
        path.parent.mkdir(exist_ok=True)
        log.info("%s: %s", name, " ".join(argv))
        with path.open("ab") as out:
            done = subprocess.run(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=False
            )
        if done.returncode != 0:
            raise StackError(f"{name} failed (status {done.returncode}):\n{log_tail(path, 30)}")

    def start_all(self) -> None:
        o = self.options
        jaeger: JaegerServer | None = None
        if o.tracing:
            jaeger = JaegerServer(
                otlp_http_port=self._port("jaeger_otlp_http", o.jaeger_otlp_port),
                otlp_grpc_port=self._port("jaeger_otlp_grpc", None),
                query_port=self._port("jaeger_ui", o.jaeger_ui_port),
                workdir=self.dir / "jaeger",
            )
            self._start(
                Part("jaeger", jaeger),
                {"ui": jaeger.query_url, "otlp": jaeger.otlp_http_endpoint},
                otlp_http=jaeger.otlp_http_port,
                ui=jaeger.query_port,
            )
        kafka = KafkaBroker(
            self._port("kafka", o.kafka_port),
            self._port("kafka_controller", None),
            workdir=self.dir / "kafka",
            partitions=o.partitions,
        )
        self._start(Part("kafka", kafka), {"bootstrap": kafka.bootstrap}, kafka=kafka.port)
        kafka.create_topics(TOPICS, partitions=o.partitions)
        redis = RedisServer(
            self._port("redis", o.redis_port), appendonly=True, workdir=self.dir / "redis"
        )
        self._start(Part("redis", redis), {"store": redis.url}, redis=redis.port)
        model = [*(["--checkpoint", str(o.checkpoint)] if o.checkpoint else [])]
        model += ["--backbone", o.backbone]
        if o.onboard is not None and o.product:
            known = subprocess.run(
                adqc_command("product", "show", o.product, "--store", redis.url),
                capture_output=True,
                check=False,
            )
            if known.returncode == 0:
                log.info("product %s already onboarded in %s", o.product, redis.url)
            else:
                self._run_step(
                    "onboard",
                    adqc_command(
                        "product", "add", o.product, "--images", str(o.onboard),
                        "--shots", str(o.shots), "--store", redis.url, *model,
                    ),
                )  # fmt: skip
        engine: dict[str, Any] = {"kind": "local", "backbone": o.backbone}
        if o.checkpoint:
            engine["checkpoint"] = str(o.checkpoint)
        if o.triton:
            repo = self.dir / "model_repository"
            if repo.exists():
                import shutil

                shutil.rmtree(repo)
            self._run_step(
                "export",
                adqc_command(
                    "export", "triton", "--out", str(repo), "--redis-url", redis.url, *model
                ),
            )
            triton = TritonServer(
                repo,
                http_port=self._port("triton_http", None),
                grpc_port=self._port("triton_grpc", None),
                metrics_port=self._port("triton_metrics", None),
                workdir=self.dir / "triton",
            )
            self._start(
                Part("triton", triton),
                {"grpc": triton.grpc_url},
                grpc=triton.grpc_port,
                http=triton.http_port,
            )
            engine = {"kind": "triton", "url": triton.grpc_url, "timeout_s": 60}
        metrics_port = self._port("serve_metrics", o.metrics_port)
        config: dict[str, Any] = {}
        if o.serve_config is not None:
            config = yaml.safe_load(o.serve_config.read_text()) or {}
        config.setdefault("group", "adqc-stack")
        config["kafka"] = {**(config.get("kafka") or {}), "bootstrap": kafka.bootstrap}
        config["store"] = {"url": redis.url}
        config["engine"] = engine
        config["telemetry"] = {
            **(config.get("telemetry") or {}),
            "prometheus_port": metrics_port,
            "prometheus_addr": LOOPBACK,
            "otlp_endpoint": jaeger.otlp_http_endpoint if jaeger else None,
        }
        serve_yaml = self.dir / "serve.yaml"
        serve_yaml.write_text(yaml.safe_dump(config, sort_keys=False))
        serve_dir = self.dir / "serve"
        serve_log = serve_dir / "server.log"
        this_run = _log_size(serve_log)  # the log is kept across ups: read only this run's lines

        healthz = f"http://{LOOPBACK}:{metrics_port}/healthz"

        def serve_ready() -> bool:
            return http_ok(healthz) and _log_has(serve_log, "partitions assigned", this_run)

        serve = CommandProcess(
            "serve",
            adqc_command("serve", "--config", str(serve_yaml)),
            workdir=serve_dir,
            ready=serve_ready,
            stop_timeout=60.0,
        )
        metrics_url = f"http://{LOOPBACK}:{metrics_port}/metrics"
        part = Part("serve", serve)
        part.health_url = healthz
        self._start(part, {"metrics": metrics_url}, metrics=metrics_port)
        if o.alarms:
            tail = CommandProcess(
                "alarms",
                adqc_command(
                    "alarms", "tail", "--bootstrap", kafka.bootstrap, "--from-beginning", "--json"
                ),
                workdir=self.dir / "alarms",
            )
            self._start(Part("alarms", tail))
        if o.camera is not None and o.product:
            argv = adqc_command(
                "camera", "simulate", "--source", str(o.camera), "--product", o.product,
                "--fps", str(o.fps), "--bootstrap", kafka.bootstrap,
            )  # fmt: skip
            if o.count:
                argv += ["--count", str(o.count)]
            if o.loop:
                argv += ["--loop"]
            if jaeger is not None:
                argv += ["--otlp-endpoint", jaeger.otlp_http_endpoint]
            camera = CommandProcess("camera", argv, workdir=self.dir / "camera", finite=True)
            self._start(Part("camera", camera))

    def watch(self) -> None:
        """Record parts that end (the camera finishing, a crash) until asked to stop."""
        while not self._stop.wait(1.0):
            changed = False
            for part in self.parts:
                code = part.server._proc.poll() if part.server._proc is not None else None
                if code is None or part.state not in ("running",):
                    continue
                finite = isinstance(part.server, CommandProcess) and part.server.finite
                part.state = "done" if finite and code == 0 else f"exited ({code})"
                if part.state != "done":
                    log.warning("%s exited with status %s (log: %s)", part.name, code,
                                part.server.log_path)  # fmt: skip
                changed = True
            if changed:
                self.save()

    def stop_all(self) -> None:
        """Stop the parts in reverse order, then sweep leftovers of their process groups."""
        self.phase = "stopping"
        self.save()
        for part in reversed(self.parts):
            proc = part.server._proc
            pgid = part.pid or (proc.pid if proc is not None else None)
            if proc is not None and proc.poll() is None:
                log.info("stopping %s (pid %s)", part.name, proc.pid)
            try:
                part.server.stop()
            except Exception as exc:  # keep stopping the others
                log.warning("stopping %s failed: %s", part.name, exc)
            kill_group(pgid)
            with contextlib.suppress(Exception):
                part.server.close()
            part.state = "stopped"
            self.save()
        left = stack_processes(self.dir)
        if left:
            log.warning("killing %d leftover process(es): %s", len(left), [p.pid for p in left])
            terminate(left, timeout=5)

    def run(self, on_up: Callable[[Supervisor], None] | None = None) -> int:
        """Start everything, wait for SIGTERM/SIGINT (or :meth:`stop`), stop everything.

        Returns 0 after a clean stop, 130 when interrupted while starting, 1 when the start
        failed (the reason is in ``stack.json`` ``error`` and the log).
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        marker = os.environ.get(MARKER_ENV)
        os.environ[MARKER_ENV] = str(self.dir)  # inherited by every part and its children
        _write_json(self.dir / OPTIONS_FILE, self.options.model_dump(mode="json"))
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        code = 0
        try:
            self.start_all()
            self.phase = "up"
            self.save()
            log.info("stack up: %s", ", ".join(p.name for p in self.parts))
            if on_up is not None:
                on_up(self)
            self.watch()
        except _Interrupted:
            log.info("interrupted while starting: stopping what runs")
            code = 130
        except (StackError, ServerStartError, OSError) as exc:
            self.error = str(exc)
            log.error("start failed: %s", exc)
            code = 1
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # the stop is not to be interrupted
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            try:
                self.stop_all()
            finally:
                self.phase = "failed" if code == 1 else "down"
                self.save()
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
                if marker is None:
                    os.environ.pop(MARKER_ENV, None)
                else:
                    os.environ[MARKER_ENV] = marker
                log.info("stack down")
        return code

    def stop(self) -> None:
        """Ask :meth:`run` to stop everything (from another thread)."""
        self._stop.set()

    def _on_signal(self, signum: int, _frame: Any) -> None:
        log.info("received %s", signal.Signals(signum).name)
        self._stop.set()
        if self.phase == "starting":
            raise _Interrupted(signum)


# --------------------------------------------------------------------------------------------
# the commands' logic (adqc stack ... in deploy/stack_cli.py)


def supervisor_alive(state: dict[str, Any] | None) -> bool:
    """True when the state file's supervisor still runs."""
    return bool(state) and state.get("state") not in ("down", "failed") and pid_alive(state["pid"])


def spawn(options: StackOptions) -> subprocess.Popen[bytes]:
    """Start a background supervisor (own session, output in stack.log)."""
    options.state_dir.mkdir(parents=True, exist_ok=True)
    _write_json(options.state_dir / OPTIONS_FILE, options.model_dump(mode="json"))
    with contextlib.suppress(FileNotFoundError):
        (options.state_dir / STATE_FILE).unlink()
    out = (options.state_dir / SUPERVISOR_LOG).open("ab")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "deploy.stack", "supervise", str(options.state_dir)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, MARKER_ENV: str(options.state_dir), "PYTHONUNBUFFERED": "1"},
        )
    finally:
        out.close()


def wait_up(
    state_dir: Path,
    proc: subprocess.Popen[bytes],
    timeout: float,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Wait until the background supervisor reports ``up``; raise StackError when it fails."""
    deadline = time.monotonic() + timeout
    seen: set[str] = set()
    while True:
        state = read_state(state_dir)
        if state is not None and progress is not None:
            for part in state.get("parts", []):
                if part["state"] in ("running", "done") and part["name"] not in seen:
                    seen.add(part["name"])
                    progress(part)
        if state is not None and state.get("state") == "up":
            return state
        if proc.poll() is not None or (state is not None and state.get("state") == "failed"):
            proc.wait(timeout=120)
            why = (state or {}).get("error") or log_tail(state_dir / SUPERVISOR_LOG, 30)
            raise StackError(f"stack did not start: {why}")
        if time.monotonic() > deadline:
            down(state_dir)
            raise StackError(f"stack not up after {timeout:.0f} s (stopped); see {state_dir}")
        time.sleep(0.3)


def down(state_dir: Path, timeout: float = 150.0) -> list[int]:
    """Stop the stack of ``state_dir`` (idempotent); returns the pids ``down`` had to stop
    itself because the supervisor was gone (normally none)."""
    state = read_state(state_dir)
    if state and pid_alive(state.get("pid")) and state.get("state") not in ("down", "failed"):
        with contextlib.suppress(psutil.Error):
            supervisor = psutil.Process(state["pid"])
            supervisor.send_signal(signal.SIGTERM)  # it stops its parts in order
            _gone, alive = psutil.wait_procs([supervisor], timeout=timeout)
            for proc in alive:
                proc.kill()
    stopped: list[int] = []
    state = read_state(state_dir) or {}
    for part in reversed(state.get("parts", [])):  # a killed supervisor left them running
        if pid_alive(part.get("pid")):
            with contextlib.suppress(psutil.Error):
                stopped += terminate([psutil.Process(part["pid"])], timeout=30)
        kill_group(part.get("pgid"))
    left = stack_processes(state_dir)
    stopped += terminate(left, timeout=5) if left else []
    if state:
        state["state"] = "down"
        for part in state.get("parts", []):
            part["state"] = "stopped"
        _write_json(state_dir / STATE_FILE, state)
    return stopped


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """True when ``url`` answers 200."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def part_health(part: dict[str, Any]) -> tuple[bool, dict[str, bool]]:
    """(healthy, {port name: answering}) of a recorded part, probed now: the process is alive,
    its ports accept connections and its health URL (serve's ``/healthz``) answers 200."""
    ports = {name: port_open(port) for name, port in (part.get("ports") or {}).items()}
    if part.get("state") == "done":
        return True, ports
    alive = pid_alive(part.get("pid"))
    healthy = not part.get("health_url") or http_ok(part["health_url"])
    return alive and all(ports.values()) and healthy, ports


def follow(paths: dict[str, Path], lines: int, stop: threading.Event) -> Iterator[str]:
    """Yield the last ``lines`` lines of each log, then new lines as they come (prefixed with
    the part name when there is more than one log) until ``stop`` is set."""
    prefix = len(paths) > 1
    offsets: dict[str, int] = {}
    for name, path in paths.items():
        text = log_tail(path, lines)
        for line in text.splitlines() if text else []:
            yield f"{name:>7} | {line}" if prefix else line
        offsets[name] = path.stat().st_size if path.exists() else 0
    while not stop.is_set():
        for name, path in paths.items():
            try:
                size = path.stat().st_size
            except OSError:
                continue
            if size < offsets[name]:
                offsets[name] = 0  # truncated or replaced
            if size == offsets[name]:
                continue
            with path.open("rb") as fh:
                fh.seek(offsets[name])
                chunk = fh.read(size - offsets[name])
            cut = chunk.rfind(b"\n") + 1
            offsets[name] += cut
            for line in chunk[:cut].decode(errors="replace").splitlines():
                yield f"{name:>7} | {line}" if prefix else line
        stop.wait(0.3)


def _supervise_main(state_dir: str) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("kafka").setLevel(logging.WARNING)
    path = Path(state_dir)
    options = StackOptions.model_validate_json((path / OPTIONS_FILE).read_text())
    return Supervisor(options).run()


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "supervise":
        sys.exit("usage: python -m deploy.stack supervise STATE_DIR")
    sys.exit(_supervise_main(sys.argv[2]))
