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
