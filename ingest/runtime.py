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

from ingest.loop import ScorerLike, ServeLoop, is_transient
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
        url=engine.url, model=engine.model, timeout_s=engine.timeout_s, retries=engine.retries
    )


def _build_scorer_retrying(settings: ServeSettings, stop: threading.Event) -> ScorerLike | None:
    """Build the scorer, waiting out an engine/store that is not up yet (no crash loop)."""
    delay = settings.retry.initial_backoff_s
    while True:
        try:
            return build_scorer(settings)
        except Exception as exc:
            if not is_transient(exc):
                raise
            log.warning("engine/store not reachable (%s); retrying in %.1fs", exc, delay)
            if stop.wait(delay):
                return None
            delay = min(delay * 2, settings.retry.max_backoff_s)


def serve(settings: ServeSettings, telemetry: Telemetry | None = None) -> ServeLoop | None:
    """Run ``adqc serve`` in this (main) thread until SIGTERM/SIGINT; returns the stopped loop.

    An engine or store that is unreachable at start-up is waited for (with back-off), not
    treated as a crash; a configuration error (bad checkpoint, model mismatch) raises.
    """
    telemetry = telemetry or Telemetry(settings.telemetry)
    stopping = threading.Event()
    loop: ServeLoop | None = None

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("received %s: draining", signal.Signals(signum).name)
        stopping.set()
        if loop is not None:
            loop.stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        port = telemetry.start_metrics_server()
        if port is not None:
            log.info("metrics: http://127.0.0.1:%d/metrics", port)
        scorer = _build_scorer_retrying(settings, stopping)
        delay = settings.retry.initial_backoff_s
        while scorer is not None and not stopping.is_set():
            try:
                loop = ServeLoop(settings, scorer, telemetry)
                loop.run()
                break
            except Exception as exc:  # Kafka unreachable at start-up: wait, do not crash-loop
                if not is_transient(exc) or (loop is not None and loop.stats["frames"]):
                    raise
                log.warning("Kafka not reachable (%s); retrying in %.1fs", exc, delay)
                stopping.wait(delay)
                delay = min(delay * 2, settings.retry.max_backoff_s)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        telemetry.shutdown()
    return loop
