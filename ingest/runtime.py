"""Running ``adqc serve``: the scorer, engine and store built from settings, signal handling.

:func:`serve` builds the scorer (waiting out an engine or store that is not up yet), runs an
:class:`~ingest.loop.ServeLoop` in the main thread until SIGTERM/SIGINT, and restores the
previous signal handlers on the way out.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from tenacity import RetryCallState, Retrying

from inference.errors import TransientError, retrying
from ingest.loop import ScorerLike, ServeLoop
from ingest.preflight import check_kafka
from ingest.settings import ServeSettings
from ingest.telemetry import Telemetry

log = logging.getLogger("adqc.serve")


def build_scorer(settings: ServeSettings) -> ScorerLike:
    """The engine named by ``settings.engine`` + the store at ``settings.store.url``."""
    from inference.scorer import Scorer
    from inference.store import open_store

    store = open_store(settings.store.url)
    return Scorer(build_engine(settings), store, batch_size=settings.batch.size)


def build_engine(settings: ServeSettings) -> Any:
    """Instantiate the configured engine (local torch or Triton gRPC client)."""
    engine = settings.engine
    if engine.kind == "local":
        from inference.engines.local import LocalEngine

        if engine.torch_threads:
            import torch

            torch.set_num_threads(engine.torch_threads)
        return LocalEngine(
            backbone=engine.backbone, checkpoint=engine.checkpoint, device=engine.device
        )
    from inference.engines.triton import TritonEngine

    return TritonEngine(
        url=engine.url,
        model=engine.model,
        timeout_s=engine.timeout_s,
        retries=engine.retries,
        stride8_model=engine.stride8_model or None,
    )


class _Stopped(Exception):
    """A signal arrived while waiting out an outage at start-up."""


def _until_stopped(settings: ServeSettings, stop: threading.Event, what: str) -> Retrying:
    """The retry policy for start-up: TransientErrors are waited out until ``stop`` is set."""

    def sleep(delay: float) -> None:
        if stop.wait(delay):
            raise _Stopped

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception()
        log.warning("%s not reachable (%s); retrying in %.1fs", what, exc, state.upcoming_sleep)

    return retrying(
        initial_s=settings.retry.initial_backoff_s,
        max_s=settings.retry.max_backoff_s,
        sleep=sleep,
        before_sleep=before_sleep,
    )


def serve(settings: ServeSettings, telemetry: Telemetry | None = None) -> ServeLoop | None:
    """Run ``adqc serve`` in this (main) thread until SIGTERM/SIGINT; returns the stopped loop.

    An engine, store or broker that is unreachable at start-up (a TransientError) is waited
    for with back-off, not treated as a crash; anything else (bad checkpoint, model mismatch)
    raises. Before each retry of Kafka the login is checked again, so a broker that comes back
    refusing the credentials ends the wait with a CredentialsError (``adqc serve`` exits 3).
    """
    telemetry = telemetry or Telemetry(settings.telemetry)
    stopping = threading.Event()
    loop: ServeLoop | None = None

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("received %s: draining", signal.Signals(signum).name)
        stopping.set()
        if loop is not None:
            loop.stop()

    def run_loop(scorer: ScorerLike) -> None:
        nonlocal loop
        if stopping.is_set():
            return
        if loop is not None:  # a retry: the broker that was down may be back refusing our login
            check_kafka(settings.kafka)
        loop = ServeLoop(settings, scorer, telemetry)
        try:
            loop.run()
        except TransientError as exc:
            if loop.stats["frames"]:  # only start-up outages are waited out here
                raise RuntimeError(f"serve loop failed: {exc}") from exc
            raise

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        port = telemetry.start_metrics_server()
        if port is not None:
            addr = settings.telemetry.prometheus_addr
            log.info("metrics: http://%s:%d/metrics", addr, port)
        try:
            scorer = _until_stopped(settings, stopping, "engine/store")(build_scorer, settings)
            _until_stopped(settings, stopping, "Kafka")(run_loop, scorer)
        except _Stopped:
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        telemetry.shutdown()
    return loop
