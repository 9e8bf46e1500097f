"""Outage classification without servers: what is transient, what is bad input; engine settings."""

from __future__ import annotations

import pytest

from inference.errors import TransientError
from ingest.runtime import build_engine
from ingest.settings import load_settings


def test_outages_are_transient_and_bad_input_is_not() -> None:
    from inference.engines.triton import TritonEngineError, TritonUnavailableError
    from inference.records import ModelMismatchError
    from inference.store import ProductNotFoundError, StoreUnavailableError
    from ingest.loop import BrokerUnavailableError

    def is_transient(exc: BaseException) -> bool:
        return isinstance(exc, TransientError)

    assert is_transient(StoreUnavailableError("redis down"))
    assert is_transient(TritonUnavailableError("triton down"))
    assert is_transient(BrokerUnavailableError("no broker"))
    assert not is_transient(ConnectionRefusedError())  # only typed outages are retried
    assert not is_transient(ProductNotFoundError("x"))
    assert not is_transient(ModelMismatchError("p", "a:1", "b:2"))
    assert not is_transient(TritonEngineError("bad request", "INVALID_ARG"))
    assert not is_transient(ValueError("bad image"))


def test_triton_engine_settings_build_a_triton_client() -> None:
    """The triton branch of the engine union reaches TritonEngine, whose unreachable-server
    error is transient (serve waits for the server instead of crash-looping)."""
    settings = load_settings(
        None,
        engine={"kind": "triton", "url": "127.0.0.1:9", "timeout_s": 0.5, "retries": 0},
    )
    with pytest.raises(Exception) as err:
        build_engine(settings)
    assert "127.0.0.1:9" in str(err.value)
    assert isinstance(err.value, TransientError), repr(err.value)


def test_a_broker_back_from_an_outage_refusing_the_login_ends_serve(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Kafka is retried as an outage, but each retry checks the login again: a refusal is a
    CredentialsError (exit 3), not an endless wait."""
    from ingest import runtime
    from ingest.loop import BrokerUnavailableError
    from ingest.preflight import CredentialsError

    checks: list[int] = []
    runs: list[int] = []

    class _Loop:
        stats = {"frames": 0}

        def __init__(self, *_: object) -> None:
            pass

        def run(self) -> None:
            runs.append(1)
            raise BrokerUnavailableError("no broker")

        def stop(self) -> None:
            pass

    def check_kafka(_kafka: object) -> bool:
        checks.append(1)
        if len(checks) < 2:
            return False  # still down
        raise CredentialsError("the broker refused the PLAIN login of user 'alice'")

    monkeypatch.setattr(runtime, "build_scorer", lambda _settings: object())
    monkeypatch.setattr(runtime, "ServeLoop", _Loop)
    monkeypatch.setattr(runtime, "check_kafka", check_kafka)
    settings = load_settings(
        None,
        store={"url": "memory://"},
        retry={"initial_backoff_s": 0.01, "max_backoff_s": 0.02},
        telemetry={"prometheus_port": 0},
    )
    with pytest.raises(CredentialsError, match="refused"):
        runtime.serve(settings)
    assert (len(runs), len(checks)) == (2, 2)  # first run, retry checked (down), run, refused
