"""The Redis password rotated while `adqc serve` runs (real Redis 7 + real Kafka + a serve
process): the worker stops with one `fatal:` line and exit code 3 (EXIT_CREDENTIALS), the
frame it was scoring is neither dead-lettered nor committed, and a worker restarted with the
new password answers it."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest
from ingest_testkit import (
    ServeProcess,
    committed,
    onboard_unique,
    producer,
    read_all,
    read_to_end,
    serve_topics,
    write_config,
)

from inference.cli_conventions import EXIT_CREDENTIALS
from ingest.camera import CameraSimulator
from ingest.schemas import ResultMessage

pytestmark = pytest.mark.integration

OLD = "before-rotation-pw"
NEW = "after-rotation-pw"


def _wait_committed(bootstrap: str, group: str, topic: str, want: dict, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while (got := committed(bootstrap, group, topic)) != want:
        assert time.monotonic() < deadline, f"committed {got}, expected {want}"
        time.sleep(0.5)


def test_a_password_rotated_mid_run_stops_serve_with_exit_3_and_loses_no_frame(
    kafka_broker: Any,
    redis_server_factory: Any,
    local_engine: Any,
    frame_images: Any,
    ingest_checkpoint: Path,
    tmp_path: Path,
) -> None:
    from inference.store import open_store

    redis = redis_server_factory(password=OLD)
    with open_store(redis.url) as store:
        name = onboard_unique(local_engine, store, "rotate", frame_images.shots).record.product
    retry = {"initial_backoff_s": 0.1, "max_backoff_s": 0.5, "drain_timeout_s": 30}
    topics, config = serve_topics(kafka_broker, "rotate", redis.url, ingest_checkpoint, retry=retry)
    bootstrap = kafka_broker.bootstrap
    prod = producer(bootstrap)
    cam = CameraSimulator(prod, topics.frames, name, camera="cam-1")
    first = ServeProcess(write_config(tmp_path / "first.yaml", config), tmp_path / "first.log")
    second = None
    try:
        for i in range(3):
            cam.publish(frame_images.good[i], i)
        prod.flush()
        assert len(read_all(bootstrap, topics.results, 3, timeout_s=180)) == 3, first.output()
        _wait_committed(bootstrap, topics.group, topics.frames, {0: 3}, 30)

        # Rotate: the new password from now on, and every serve connection dropped (as a
        # Redis restart or failover would), so serve has to authenticate again.
        admin = redis.client()
        admin.config_set("requirepass", NEW)
        redis.password = NEW  # the fixture's shutdown authenticates with it
        admin.client_kill_filter(_type="normal", skipme=True)
        admin.close()
        cam.publish(frame_images.defect[0], 3)
        prod.flush()

        code = first.wait(120)
        out = first.output()
        assert code == EXIT_CREDENTIALS, out[-3000:]
        fatal = [line for line in out.splitlines() if "fatal:" in line]
        assert len(fatal) == 1, out[-3000:]
        assert "refused the credentials" in fatal[0] and "uncommitted" in fatal[0]
        assert "Traceback" not in out
        assert OLD not in out and NEW not in out  # the URL is redacted
        assert read_to_end(bootstrap, topics.dlq) == []  # not a bad frame
        assert committed(bootstrap, topics.group, topics.frames) == {0: 3}  # frame 3 kept

        # The secret fixed, a restarted worker re-reads frame 3 and answers it.
        config["store"]["url"] = redis.url
        second = ServeProcess(
            write_config(tmp_path / "second.yaml", config), tmp_path / "second.log"
        )
        results = read_all(bootstrap, topics.results, 4, timeout_s=180)
        offsets = sorted(ResultMessage.from_bytes(r.value).source.offset for r in results)
        assert offsets == [0, 1, 2, 3], second.output()[-3000:]
        _wait_committed(bootstrap, topics.group, topics.frames, {0: 4}, 30)
        second.signal(signal.SIGTERM)
        assert second.wait(60) == 0, second.output()[-3000:]
    finally:
        prod.close()
        first.stop()
        if second is not None:
            second.stop()
