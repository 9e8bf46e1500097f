"""/healthz follows the real serve loop: healthy while it iterates, 503 when it stalls."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from ingest_testkit import running_loop, serve_topics

from ingest.settings import load_settings
from ingest.telemetry import Telemetry

pytestmark = pytest.mark.integration


def _health(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _wait_for(predicate: Any, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_healthz_fails_while_the_loop_is_stuck(
    kafka_broker: Any, product: Any, scorer: Any, ingest_checkpoint: Path
) -> None:
    topics, config = serve_topics(
        kafka_broker,
        "health",
        product.store_url,
        ingest_checkpoint,
        partitions=2,
        telemetry={"prometheus_port": 0, "prometheus_addr": "127.0.0.1", "stall_after_s": 1.0},
    )
    settings = load_settings(None, **config)
    telemetry = Telemetry(settings.telemetry)
    port = telemetry.start_metrics_server()
    release = threading.Event()
    try:
        with running_loop(settings, scorer, telemetry) as loop:
            # Healthy once the group assigned the partitions and the loop iterates.
            _wait_for(lambda: _health(port)[1].get("assigned_partitions") == 2, 60)
            time.sleep(1.5)
            assert _health(port)[0] == 200
            # Wedge the loop thread inside one iteration (as a hung call would).
            original = loop._backpressure
            loop._backpressure = lambda: (release.wait(30), original())
            status, body = _wait_for(lambda: (s := _health(port))[0] == 503 and s, 10)
            # the body rounds the age to ms: a stall just past 1.0 s reads 1.0
            assert body["status"] == "stalled" and body["heartbeat_age_s"] >= 1.0
            release.set()
            _wait_for(lambda: _health(port)[0] == 200, 10)
        # Stopped loop: no partitions held, healthy (nothing to restart).
        assert _health(port)[1]["assigned_partitions"] == 0
    finally:
        release.set()
        telemetry.shutdown()
