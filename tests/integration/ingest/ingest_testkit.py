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

REPO_ROOT = Path(__file__).resolve().parents[3]


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


def serve_topics(
    broker: Any,
    tag: str,
    store_url: str,
    checkpoint: Path,
    *,
    partitions: int = 1,
    **sections: Any,
) -> tuple[Topics, dict[str, Any]]:
    """Unique topics for one test, created on ``broker`` with ``partitions`` each, and the
    :func:`serve_config` that uses them (``sections`` as there)."""
    topics = Topics.unique(tag)
    broker.create_topics(topics.names(), partitions=partitions)
    return topics, serve_config(broker.bootstrap, topics, store_url, checkpoint, **sections)


def onboard_unique(engine: Any, store: Any, prefix: str, shots: list[Path]) -> Any:
    """Onboard every one of ``shots`` as a new product ``<prefix>-<6 hex>`` (tests share
    stores, so names never collide); the ``OnboardingResult``."""
    from inference.onboarding import onboard

    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    return onboard(engine, store, name, shots, shots=len(shots))


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


@dataclass
class Answered:
    """What the workers produced for the frames: results and DLQ records."""

    results: list[Any]  # ResultMessage
    dlq: list[Any]  # kafka records of the DLQ topic

    def dlq_frame_ids(self) -> list[str]:
        out = []
        for record in self.dlq:
            ids = [v.decode(errors="replace") for k, v in record.headers if k == "frame_id" and v]
            out.append(ids[0] if ids else f"@{dict(record.headers).get('dlq.source_offset')}")
        return out

    def frame_ids(self) -> list[str]:
        return [r.frame_id for r in self.results] + self.dlq_frame_ids()


def answered(
    bootstrap: str,
    topics: Topics,
    done: Callable[[Answered], bool],
    timeout_s: float = 120.0,
    quiet_s: float = 2.0,
) -> Answered:
    """Results + DLQ records of ``topics`` until ``done`` holds (or the timeout), then a quiet
    period to catch duplicates."""
    from ingest.schemas import ResultMessage

    def snapshot() -> Answered:
        results = read_to_end(bootstrap, topics.results)
        return Answered(
            [ResultMessage.from_bytes(r.value) for r in results], read_to_end(bootstrap, topics.dlq)
        )

    deadline = time.monotonic() + timeout_s
    while True:
        out = snapshot()
        if done(out) or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    time.sleep(quiet_s)
    return snapshot()


def read_to_end(bootstrap: str, topic: str, timeout_s: float = 30.0) -> list[Any]:
    """Every record of ``topic`` now (up to the end offsets read first)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    try:
        deadline = time.monotonic() + timeout_s
        parts = consumer.partitions_for_topic(topic)
        while not parts and time.monotonic() < deadline:
            time.sleep(0.2)
            parts = consumer.partitions_for_topic(topic)
        tps = [TopicPartition(topic, p) for p in sorted(parts or [])]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        out: list[Any] = []
        while time.monotonic() < deadline and any(consumer.position(tp) < ends[tp] for tp in tps):
            for records in consumer.poll(timeout_ms=200).values():
                out.extend(records)
        return out
    finally:
        consumer.close()


def fault_report(scenario: str, **values: Any) -> None:
    """Append a measured outcome to $ADQC_FAULT_REPORT (JSON lines; ``make test-faults``)."""
    import json

    path = os.environ.get("ADQC_FAULT_REPORT")
    if path:
        with open(path, "a") as out:
            out.write(json.dumps({"scenario": scenario, **values}, default=str) + "\n")
