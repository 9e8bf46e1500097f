"""The chart's NOTES onboarding command, run with the worker pod's environment, lands in the
chart's Redis store (not a pod-local file store): the one store setting, ADQC_STORE__URL."""

from __future__ import annotations

import base64
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from helm_testkit import CHART
from PIL import Image

pytestmark = pytest.mark.integration


def _run(helm: Path, *args: str) -> str:
    done = subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _worker_env(docs: list[dict[str, Any]], deployment: str) -> dict[str, str]:
    """The serve container's environment as the kubelet builds it (Secrets resolved,
    ``$(VAR)`` expanded)."""
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    (worker,) = [
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == deployment
    ]
    (container,) = [
        c for c in worker["spec"]["template"]["spec"]["containers"] if c["name"] == "serve"
    ]
    env: dict[str, str] = {}
    for entry in container["env"]:
        if "value" in entry:
            env[entry["name"]] = re.sub(
                r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), entry["value"]
            )
        elif (ref := entry["valueFrom"].get("secretKeyRef")) and ref["name"] in secrets:
            data = secrets[ref["name"]]["data"]
            env[entry["name"]] = base64.b64decode(data[ref["key"]]).decode()
    return env


def test_notes_onboarding_command_targets_the_charts_redis(helm, redis_server_factory, tmp_path):
    notes = _run(helm, "install", "rel", str(CHART), "-n", "qc", "--dry-run=client")
    notes = notes[notes.index("NOTES:") :]
    (line,) = [ln for ln in notes.splitlines() if "-- adqc product add" in ln]
    kubectl, command = shlex.split(line)[:-1], shlex.split(line.split(" -- ", 1)[1])
    deployment = next(a for a in kubectl if a.startswith("deploy/")).removeprefix("deploy/")
    docs = [
        d for d in yaml.safe_load_all(_run(helm, "template", "rel", str(CHART), "-n", "qc")) if d
    ]
    env = _worker_env(docs, deployment)
    assert "ADQC_STORE__URL" in env and "ADQC_STORE" not in env  # the one name

    # The chart's Redis, here: a real redis-server with the chart's generated password, which
    # the worker reads from the Secret mounted as a file (here: the same value in a local file).
    (secret,) = [
        d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == "rel-adqc-redis"
    ]
    password = base64.b64decode(secret["data"]["password"]).decode()
    assert env["ADQC_REDIS_PASSWORD_FILE"] == "/etc/adqc/redis-auth/password"
    (tmp_path / "password").write_text(password)
    env["ADQC_REDIS_PASSWORD_FILE"] = str(tmp_path / "password")
    redis = redis_server_factory(password=password)
    host = "rel-adqc-redis:6379"
    assert host in env["ADQC_STORE__URL"]
    env["ADQC_STORE__URL"] = env["ADQC_STORE__URL"].replace(host, f"127.0.0.1:{redis.port}")

    images = tmp_path / "good-images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        pixels = np.clip(120 + rng.normal(0, 20, (96, 96, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(images / f"part_{i}.png")
    args = [a.replace("NAME", "bracket").replace("/tmp/good-images", str(images)) for a in command]
    args = [a if a != "8" else "3" for a in args]  # --shots: 3 images here
    assert args[:3] == ["adqc", "product", "add"]
    home = tmp_path / "home"
    base = {k: v for k, v in os.environ.items() if not k.startswith("ADQC_")}
    done = subprocess.run(
        [sys.executable, "-c", "from adqc.cli import main; main()", *args[1:]],
        env={**base, **env, "HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"127.0.0.1:{redis.port}" in done.stdout and password not in done.stdout

    from inference.store import open_store
    from inference.store.urls import with_secret_password

    with open_store(with_secret_password(env["ADQC_STORE__URL"], env)) as store:
        assert store.list_products() == ["bracket"]
    assert not (home / ".local" / "share" / "adqc").exists()  # no pod-local file store
