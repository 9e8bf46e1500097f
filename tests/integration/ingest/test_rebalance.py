"""Consumer-group rebalances on the real broker: workers joining and leaving under load, a
broker restart. Every frame ends as a result (duplicates keep their ids) or a DLQ record, and
no worker exits (the listener never blocks on kafka-python's IO thread)."""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from ingest_testkit import (
    ServeProcess,
    answered,
    fault_report,
    producer,
    serve_topics,
    write_config,
)

from ingest.camera import CameraSimulator

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.faults]

CAMERAS = ("cam-a", "cam-b", "cam-c", "cam-d", "cam-e", "cam-f")


class Stream:
    """Cameras publishing frames in a background thread at ``fps``."""

    def __init__(self, bootstrap: str, topic: str, product: str, images: list[Path]) -> None:
        self.prod = producer(bootstrap)
        self.cams = [CameraSimulator(self.prod, topic, product, camera=c) for c in CAMERAS]
        self.images = images
        self.sent: list[str] = []
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self, count: int | None, fps: float) -> None:
        """Publish ``count`` frames (None: until :meth:`join`) at ``fps``."""
        self._stop.clear()

        def run() -> None:
            i = len(self.sent)
            end = None if count is None else i + count
            while (end is None or i < end) and not self._stop.is_set():
                _f, headers = self.cams[i % len(self.cams)].publish(
                    self.images[i % len(self.images)], i
                )
                self.sent.append(headers.frame_id)
                self.prod.flush()
                i += 1
                time.sleep(1.0 / fps)

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def join(self) -> None:
        """Stop an open-ended stream; wait for the publisher thread."""
        if self._thread is not None:
            if self._thread.is_alive():
                self._stop.set()
            self._thread.join(300)

    def close(self) -> None:
        self.prod.close()


def _report(scenario: str, result: Any, sent: list[str], workers: list[ServeProcess]) -> None:
    ids = result.frame_ids()
    fault_report(
        scenario,
        frames=len(sent),
        results=len(result.results),
        unique_results=len({r.frame_id for r in result.results}),
        dlq=len(result.dlq),
        missing=len(set(sent) - set(ids)),
        duplicates=len(ids) - len(set(ids)),
        revocations=sum(w.output().count("partitions revoked") for w in workers),
        frames_dropped_as_lost=sum(
            int(line.split(" frame(s) of revoked")[0].rsplit(" ", 1)[-1])
            for w in workers
            for line in w.output().splitlines()
            if " frame(s) of revoked" in line
        ),
        worker_exits=sum(w.proc.returncode not in (0, None) for w in workers),
    )


def _check(result: Any, sent: list[str], workers: list[ServeProcess]) -> None:
    logs = "\n".join(w.output()[-2500:] for w in workers)
    assert set(result.frame_ids()) == set(sent), (
        f"missing {sorted(set(sent) - set(result.frame_ids()))[:10]}\n{logs}"
    )
    assert not set(result.frame_ids()) - set(sent)
    # Duplicates (re-read after a revocation) carry the same alarm id as the first copy.
    alarm_of: dict[str, str | None] = {}
    for r in result.results:
        assert alarm_of.setdefault(r.frame_id, r.alarm_id) == r.alarm_id
    counts = Counter(r.frame_id for r in result.results)
    assert max(counts.values()) <= 3


def _worker(path: Path, tmp: Path, name: str) -> ServeProcess:
    return ServeProcess(path, tmp / f"{name}.log")


def _serving(worker: ServeProcess, timeout_s: float = 180.0) -> None:
    """Wait until the worker's loop runs (its signal handlers are installed)."""
    deadline = time.monotonic() + timeout_s
    while "serving " not in worker.output():
        assert worker.proc.poll() is None, worker.output()[-3000:]
        assert time.monotonic() < deadline, f"worker not serving after {timeout_s} s"
        time.sleep(0.5)


def _stop_all(workers: list[ServeProcess]) -> list[int]:
    """SIGTERM every worker still running; their exit codes."""
    for w in workers:
        if w.proc.poll() is None:
            _serving(w)
    for w in workers:
        if w.proc.poll() is None:
            w.signal(signal.SIGTERM)
    return [w.wait(90) for w in workers]


def test_two_and_three_live_workers_join_and_leave_under_load(
    kafka_broker: Any, product: Any, frame_images: Any, ingest_checkpoint: Path, tmp_path: Path
) -> None:
    topics, config = serve_topics(
        kafka_broker, "rebal", product.store_url, ingest_checkpoint, partitions=4
    )
    path = write_config(tmp_path / "serve.yaml", config)
    stream = Stream(
        kafka_broker.bootstrap,
        topics.frames,
        product.name,
        frame_images.good + frame_images.defect,
    )
    workers = [_worker(path, tmp_path, "w1")]
    try:
        _serving(workers[0])
        stream.start(None, fps=3.0)  # frames keep coming through every membership change
        answered(kafka_broker.bootstrap, topics, lambda a: len(a.frame_ids()) >= 4, 180)
        workers.append(_worker(path, tmp_path, "w2"))  # 2 live members, under load
        _serving(workers[1])
        time.sleep(8)
        workers.append(_worker(path, tmp_path, "w3"))  # 3 live members
        _serving(workers[2])
        time.sleep(8)
        workers[1].signal(signal.SIGTERM)  # one leaves cleanly: 2 live members again
        assert workers[1].wait(90) == 0, workers[1].output()[-3000:]
        time.sleep(5)
        workers.append(_worker(path, tmp_path, "w4"))  # and another joins: 3 again
        _serving(workers[3])
        time.sleep(8)
        stream.join()
        sent = list(stream.sent)
        result = answered(
            kafka_broker.bootstrap, topics, lambda a: set(a.frame_ids()) >= set(sent), 240
        )
        alive = [w.proc.poll() is None for w in workers]
        assert alive == [True, False, True, True], [w.output()[-2000:] for w in workers]
        codes = _stop_all(workers)
    finally:
        stream.close()
        for w in workers:
            w.stop()
    _report("2 -> 3 -> 2 -> 3 live workers joining/leaving under load", result, sent, workers)
    assert codes == [0, 0, 0, 0], [w.output()[-2000:] for w in workers]
    _check(result, sent, workers)
    log = "\n".join(w.output() for w in workers)
    assert "Cannot block on net.run()" not in log
    assert "partitions revoked" in log
    for w in workers:  # every worker was a live member that got partitions
        assert "partitions assigned: [(" in w.output(), w.output()[-2000:]


def test_broker_restart_under_load_keeps_workers_alive(
    kafka_broker_factory: Any,
    product: Any,
    frame_images: Any,
    ingest_checkpoint: Path,
    tmp_path: Path,
) -> None:
    broker = kafka_broker_factory()
    topics, config = serve_topics(broker, "brk", product.store_url, ingest_checkpoint, partitions=2)
    path = write_config(tmp_path / "serve.yaml", config)
    stream = Stream(
        broker.bootstrap, topics.frames, product.name, frame_images.good + frame_images.defect
    )
    workers = [_worker(path, tmp_path, "w1"), _worker(path, tmp_path, "w2")]
    try:
        for w in workers:
            _serving(w)
        stream.start(None, fps=2.0)
        answered(broker.bootstrap, topics, lambda a: len(a.frame_ids()) >= 6, 180)
        broker.kill()  # SIGKILL under load, down for a few seconds, back on the same port/data
        time.sleep(4)
        broker.start()
        time.sleep(10)
        stream.join()
        sent = list(stream.sent)
        result = answered(broker.bootstrap, topics, lambda a: set(a.frame_ids()) >= set(sent), 240)
        alive = [w.proc.poll() is None for w in workers]
        assert alive == [True, True], [w.output()[-2000:] for w in workers]
        codes = _stop_all(workers)
    finally:
        stream.close()
        for w in workers:
            w.stop()
    _report("broker SIGKILL + restart under load, 2 workers", result, sent, workers)
    assert codes == [0, 0], [w.output()[-2000:] for w in workers]
    _check(result, sent, workers)
