"""Helpers for the ingest tests: serve configs, frames in, topic contents out (real Kafka)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Topics:
    """Unique topic names for one test."""

    frames: str
    results: str
    alarms: str
    dlq: str
    group: str

    @classmethod
    def unique(cls, tag: str) -> Topics:
        run = f"{tag}-{uuid.uuid4().hex[:8]}"
        return cls(
            f"frames-{run}", f"results-{run}", f"alarms-{run}", f"frames-{run}.dlq", f"g-{run}"
        )

    def names(self) -> list[str]:
        return [self.frames, self.results, self.alarms, self.dlq]

    def settings(self) -> dict[str, str]:
        return {
            "frames": self.frames,
            "results": self.results,
            "alarms": self.alarms,
            "dlq": self.dlq,
        }


def serve_config(
    bootstrap: str,
    topics: Topics,
    store_url: str,
    checkpoint: Path,
    **sections: Any,
) -> dict[str, Any]:
    """A serve settings mapping (the YAML document) for a test."""
    config: dict[str, Any] = {
        "kafka": {"bootstrap": bootstrap, "session_timeout_ms": 6000, "metadata_max_age_ms": 3000},
        "topics": topics.settings(),
        "group": topics.group,
        "batch": {"size": 4, "max_wait_ms": 30, "max_in_flight": 16, "decode_workers": 2},
        "engine": {"kind": "local", "checkpoint": str(checkpoint)},
        "store": {"url": store_url},
        "telemetry": {"prometheus_port": None},
        "retry": {"initial_backoff_s": 0.2, "max_backoff_s": 2.0, "drain_timeout_s": 30},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def producer(bootstrap: str) -> KafkaProducer:
    return KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=2)


def read_all(
    bootstrap: str,
    topic: str,
    expect: int | Callable[[list[Any]], bool],
    timeout_s: float = 60.0,
    quiet_s: float = 1.0,
) -> list[Any]:
    """Records of ``topic`` from the beginning, in per-partition order, until ``expect`` is met
    (a count, or a predicate over the records so far) or the timeout; then a short quiet
    period to catch extra (duplicate) records."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        group_id=None,
        auto_offset_reset="earliest",
        consumer_timeout_ms=200,
    )
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            parts = consumer.partitions_for_topic(topic)
            if parts or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        tps = [TopicPartition(topic, p) for p in sorted(parts or [])]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        out: list[Any] = []
        done = (lambda rs: len(rs) >= expect) if isinstance(expect, int) else expect
        while time.monotonic() < deadline and not done(out):
            for records in consumer.poll(timeout_ms=200).values():
                out.extend(records)
        quiet = time.monotonic() + quiet_s
        while time.monotonic() < quiet:
            for records in consumer.poll(timeout_ms=200).values():
                out.extend(records)
        return out
    finally:
        consumer.close()


def committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """Committed offsets of ``group`` on ``topic``'s partitions."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        out = {}
        for p in sorted(parts):
            off = consumer.committed(TopicPartition(topic, p))
            out[p] = off if off is not None else 0
        return out
    finally:
        consumer.close()


def adqc_command(*args: str) -> list[str]:
    script = Path(sys.executable).parent / "adqc"
    if script.exists():
        return [str(script), *args]
    return [sys.executable, "-c", "from adqc.cli import main; main()", *args]


class ServeProcess:
    """``adqc serve --config FILE`` as a child process, with its log in a file."""

    def __init__(self, config: Path, log: Path) -> None:
        self.log = log
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self._log = open(log, "ab")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen(
            adqc_command("serve", "--config", str(config)),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
            env=env,
        )

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.wait(30)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.returncode is not None:
                self._log.close()

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)
        self._log.close()


@contextmanager
def running_loop(settings: Any, scorer: Any, telemetry: Any) -> Iterator[Any]:
    """A ServeLoop running in a background thread; stopped (drained) on exit."""
    from ingest.loop import ServeLoop

    loop = ServeLoop(settings, scorer, telemetry)
    errors: list[BaseException] = []

    def target() -> None:
        try:
            loop.run()
        except BaseException as exc:  # surfaced to the test below
            errors.append(exc)

    thread = threading.Thread(target=target, name="serve-loop", daemon=True)
    thread.start()
    try:
        yield loop
    finally:
        loop.stop()
        thread.join(60)
        assert not thread.is_alive(), "serve loop did not stop within 60 s"
        if errors:
            raise errors[0]
