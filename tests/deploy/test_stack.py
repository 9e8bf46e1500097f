"""`adqc stack`: the whole pipeline from one command, and nothing left running after it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
from PIL import Image
from typer.testing import CliRunner

from deploy.stack import StackError, StackOptions, follow, read_state

REPO_ROOT = Path(__file__).resolve().parents[2]
BOTTLE = REPO_ROOT.parent / "shared" / "datasets" / "mvtec_ad" / "bottle"


def adqc(*args: str) -> list[str]:
    script = Path(sys.executable).parent / "adqc"
    if script.exists():
        return [str(script), *args]
    return [sys.executable, "-c", "from adqc.cli import main; main()", *args]


def run(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        adqc(*args), capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT, check=False
    )


def images(tmp_path: Path) -> tuple[Path, Path]:
    """(good images to onboard from, defective frames for the camera): MVTec bottle when the
    shared datasets exist, else generated parts (defect = a dark blob)."""
    if BOTTLE.is_dir():
        return BOTTLE / "train" / "good", BOTTLE / "test" / "broken_large"
    rng = np.random.default_rng(0)
    good, bad = tmp_path / "good", tmp_path / "bad"
    for folder, n, defect in ((good, 4, False), (bad, 3, True)):
        folder.mkdir()
        for i in range(n):
            img = np.clip(128 + rng.normal(0, 4, (128, 128)), 0, 255).astype(np.uint8)
            if defect:
                img[40:70, 50:80] = 10
            Image.fromarray(np.repeat(img[..., None], 3, axis=2)).save(folder / f"{i:03d}.png")
    return good, bad


def stack_pids(state_dir: Path) -> list[int]:
    state = read_state(state_dir) or {}
    return [state["pid"], *(p["pid"] for p in state.get("parts", []) if p.get("pid"))]


def referencing(state_dir: Path) -> list[str]:
    """Live processes whose command line or environment mention ``state_dir``."""
    needle = str(state_dir.resolve())
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "environ", "status"]):
        if proc.info["pid"] == os.getpid() or proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        cmdline = " ".join(proc.info.get("cmdline") or [])
        env = " ".join(f"{k}={v}" for k, v in (proc.info.get("environ") or {}).items())
        if needle in cmdline or needle in env:
            found.append(f"{proc.info['pid']}: {cmdline[:200]}")
    return found


def assert_nothing_left(state_dir: Path, pids: list[int]) -> None:
    alive = [pid for pid in pids if psutil.pid_exists(pid)]
    alive = [p for p in alive if psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"still running: {alive}"
    assert not referencing(state_dir), referencing(state_dir)


# -- unit ------------------------------------------------------------------------------------


def test_options_need_a_product_for_camera_and_onboarding(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="--product"):
        StackOptions(state_dir=tmp_path, camera=tmp_path).check()
    with pytest.raises(StackError, match="--onboard .*no such file"):
        StackOptions(state_dir=tmp_path, product="p", onboard=tmp_path / "missing").check()
    checked = StackOptions(state_dir=Path("rel"), product="p", camera=tmp_path).check()
    assert checked.state_dir.is_absolute()


def test_status_down_and_logs_without_a_stack(tmp_path: Path) -> None:
    from adqc.cli import build_app

    app, state = build_app(), str(tmp_path / "none")
    runner = CliRunner()
    assert runner.invoke(app, ["stack", "status", "--state-dir", state]).exit_code == 1
    result = runner.invoke(app, ["stack", "down", "--state-dir", state])
    assert result.exit_code == 0, result.output
    assert runner.invoke(app, ["stack", "logs", "serve", "--state-dir", state]).exit_code == 2


def test_follow_prefixes_parts_and_picks_up_new_lines(tmp_path: Path) -> None:
    import threading

    a, b = tmp_path / "a.log", tmp_path / "b.log"
    a.write_text("one\ntwo\n")
    b.write_text("x\n")
    stop = threading.Event()
    lines = follow({"kafka": a, "serve": b}, 1, stop)
    assert [next(lines), next(lines)] == ["  kafka | two", "  serve | x"]
    with a.open("a") as fh:
        fh.write("three\npartial")
    assert next(lines) == "  kafka | three"
    stop.set()
    assert list(lines) == []


def test_processes_are_found_by_the_state_dir_marker_and_terminated(tmp_path: Path) -> None:
    from deploy.stack import MARKER_ENV, pid_alive, stack_processes, terminate

    mine, other = tmp_path / "mine", tmp_path / "other"
    procs = [
        subprocess.Popen(["sleep", "60"], env={**os.environ, MARKER_ENV: str(d)})
        for d in (mine, other, mine)
    ]
    try:
        found = sorted(p.pid for p in stack_processes(mine))
        assert found == sorted([procs[0].pid, procs[2].pid])
        terminate(stack_processes(mine), timeout=5)
        assert not pid_alive(procs[0].pid) and not pid_alive(procs[2].pid)  # reaped by psutil
        assert pid_alive(procs[1].pid) and stack_processes(mine) == []
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


# -- integration -----------------------------------------------------------------------------


@pytest.mark.integration
def test_stack_up_runs_the_pipeline_with_tracing_and_down_stops_everything(
    tmp_path: Path,
) -> None:
    from kafka import KafkaConsumer

    from deploy.servers import jaeger_trace
    from ingest.schemas import ResultMessage

    state_dir = tmp_path / "stack"
    good, frames = images(tmp_path)
    up = run(
        "stack", "up", "--state-dir", str(state_dir), "--tracing",
        "--product", "bottle", "--onboard", str(good), "--shots", "4",
        "--camera", str(frames), "--count", "3", "--fps", "0",
    )  # fmt: skip
    pids = stack_pids(state_dir)
    try:
        assert up.returncode == 0, up.stderr[-3000:] + (state_dir / "stack.log").read_text()[-3000:]
        state = read_state(state_dir)
        assert state is not None and state["state"] == "up"
        parts = {p["name"]: p for p in state["parts"]}
        assert set(parts) == {"jaeger", "kafka", "redis", "serve", "alarms", "camera"}
        status = run("stack", "status", "--state-dir", str(state_dir))
        assert status.returncode == 0, status.stdout + status.stderr

        # the camera's 3 frames end as results (and alarms for the defective ones)
        consumer = KafkaConsumer(
            "results",
            bootstrap_servers=parts["kafka"]["urls"]["bootstrap"],
            auto_offset_reset="earliest",
            consumer_timeout_ms=1000,
        )
        results: list[Any] = []
        deadline = time.monotonic() + 180
        while len(results) < 3 and time.monotonic() < deadline:
            results += [(r, ResultMessage.from_bytes(r.value)) for r in consumer]
        consumer.close()
        assert len(results) == 3, run("stack", "logs", "--state-dir", str(state_dir)).stdout
        assert {r.product for _rec, r in results} == {"bottle"}
        defects = [r for _rec, r in results if r.decision == "defect"]
        alarms_log = Path(parts["alarms"]["log"])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            lines = [ln for ln in alarms_log.read_text().splitlines() if ln.startswith("{")]
            if len(lines) >= len(defects):
                break
            time.sleep(0.5)
        assert sorted(json.loads(ln)["frame_id"] for ln in lines) == sorted(
            r.frame_id for r in defects
        )

        # the frame's trace in Jaeger: the camera's publish span and serve's spans under it
        record, result = results[0]
        traceparent = dict(record.headers)["traceparent"].decode()
        assert traceparent.split("-")[1] == result.trace_id
        trace = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            trace = jaeger_trace(parts["jaeger"]["urls"]["ui"], result.trace_id)
            services = {p["serviceName"] for p in (trace or {}).get("processes", {}).values()}
            if {"adqc-camera", "adqc-serve"} <= services:
                break
            time.sleep(1)
        assert trace is not None, "trace not found in Jaeger"
        names = {s["operationName"] for s in trace["spans"]}
        assert {"frames publish", "frames process", "infer", "publish"} <= names, names

        logs = run("stack", "logs", "serve", "--state-dir", str(state_dir))
        assert "partitions assigned" in logs.stdout
    finally:
        first = run("stack", "down", "--state-dir", str(state_dir), timeout=300)
    assert first.returncode == 0, first.stderr
    assert_nothing_left(state_dir, pids)
    again = run("stack", "down", "--state-dir", str(state_dir))
    assert again.returncode == 0, again.stderr
    assert run("stack", "status", "--state-dir", str(state_dir)).returncode == 1


def _foreground(state_dir: Path) -> subprocess.Popen[bytes]:
    log = (state_dir.parent / "foreground.log").open("ab")
    return subprocess.Popen(
        adqc("stack", "up", "--foreground", "--no-alarms", "--state-dir", str(state_dir)),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=REPO_ROOT,
        start_new_session=True,  # its own process group, as a shell job has
    )


def _wait_up(state_dir: Path, proc: subprocess.Popen[bytes], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = read_state(state_dir)
        if state is not None and state.get("state") == "up":
            return
        assert proc.poll() is None, (state_dir.parent / "foreground.log").read_text()[-3000:]
        time.sleep(0.5)
    raise AssertionError("foreground stack not up in time")


@pytest.mark.integration
@pytest.mark.parametrize("how", ["SIGINT to the process group", "SIGTERM", "SIGKILL, then down"])
def test_foreground_stack_leaves_no_orphans(how: str, tmp_path: Path) -> None:
    state_dir = tmp_path / "stack"
    proc = _foreground(state_dir)
    try:
        _wait_up(state_dir, proc)
        pids = stack_pids(state_dir)
        assert len(pids) == 4  # supervisor, kafka, redis, serve
        if how.startswith("SIGINT"):
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        elif how == "SIGTERM":
            proc.send_signal(signal.SIGTERM)
        else:
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            assert len([p for p in pids[1:] if psutil.pid_exists(p)]) == 3  # orphans now
            assert run("stack", "down", "--state-dir", str(state_dir)).returncode == 0
        code = proc.wait(180)
    finally:
        if proc.poll() is None:
            proc.kill()
            run("stack", "down", "--state-dir", str(state_dir))
    assert code == (-signal.SIGKILL if how.startswith("SIGKILL") else 0), code
    assert_nothing_left(state_dir, pids)
    if not how.startswith("SIGKILL"):
        assert (read_state(state_dir) or {}).get("state") == "down"


@pytest.mark.integration
@pytest.mark.slow
def test_stack_up_with_triton_scores_through_triton(tmp_path: Path) -> None:
    import yaml
    from kafka import KafkaConsumer

    from ingest.schemas import ResultMessage

    state_dir = tmp_path / "stack"
    good, frames = images(tmp_path)
    up = run(
        "stack", "up", "--state-dir", str(state_dir), "--triton", "--no-alarms",
        "--product", "bottle", "--onboard", str(good), "--shots", "4",
        "--camera", str(frames), "--count", "2", "--fps", "0",
    )  # fmt: skip
    pids = stack_pids(state_dir)
    try:
        assert up.returncode == 0, up.stderr[-3000:] + (state_dir / "stack.log").read_text()[-3000:]
        state = read_state(state_dir)
        assert state is not None
        parts = {p["name"]: p for p in state["parts"]}
        engine = yaml.safe_load((state_dir / "serve.yaml").read_text())["engine"]
        assert engine == {"kind": "triton", "url": parts["triton"]["urls"]["grpc"], "timeout_s": 60}
        assert (state_dir / "model_repository" / "adqc" / "config.pbtxt").is_file()
        consumer = KafkaConsumer(
            "results",
            bootstrap_servers=parts["kafka"]["urls"]["bootstrap"],
            auto_offset_reset="earliest",
            consumer_timeout_ms=1000,
        )
        results: list[Any] = []
        deadline = time.monotonic() + 240
        while len(results) < 2 and time.monotonic() < deadline:
            results += [ResultMessage.from_bytes(r.value) for r in consumer]
        consumer.close()
        assert len(results) == 2, run("stack", "logs", "--state-dir", str(state_dir)).stdout
        pids += [p.pid for p in psutil.Process(parts["triton"]["pid"]).children(recursive=True)]
    finally:
        down = run("stack", "down", "--state-dir", str(state_dir), timeout=300)
    assert down.returncode == 0, down.stderr
    assert_nothing_left(state_dir, pids)  # tritonserver's python-backend stubs included
