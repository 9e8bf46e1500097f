"""The one retry policy: TransientErrors only, exponential back-off, injectable sleep."""

from __future__ import annotations

import pytest

from inference.errors import Backoff, TransientError, retrying


class Outage(TransientError):
    pass


def _flaky(failures: int, error: Exception):
    calls = {"n": 0}

    def call() -> str:
        calls["n"] += 1
        if calls["n"] <= failures:
            raise error
        return "ok"

    return call, calls


def test_transient_errors_are_retried_with_exponential_capped_backoff() -> None:
    sleeps: list[float] = []
    call, calls = _flaky(5, Outage("store down"))
    policy = retrying(initial_s=0.5, max_s=3.0, sleep=sleeps.append)
    assert policy(call) == "ok" and calls["n"] == 6
    assert sleeps == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_other_errors_are_not_retried() -> None:
    sleeps: list[float] = []
    call, calls = _flaky(1, ValueError("bad frame"))
    with pytest.raises(ValueError, match="bad frame"):
        retrying(initial_s=0.5, max_s=3.0, sleep=sleeps.append)(call)
    assert calls["n"] == 1 and sleeps == []


def test_bounded_attempts_reraise_the_last_error_and_sleep_may_abort() -> None:
    call, calls = _flaky(10, Outage("down"))
    with pytest.raises(Outage):
        retrying(initial_s=0.1, max_s=1.0, attempts=3, sleep=lambda _: None)(call)
    assert calls["n"] == 3

    class Stop(Exception):
        pass

    def sleep(_: float) -> None:
        raise Stop

    call, calls = _flaky(10, Outage("down"))
    with pytest.raises(Stop):
        retrying(initial_s=0.1, max_s=1.0, sleep=sleep)(call)
    assert calls["n"] == 1


def test_store_and_engine_outages_are_transient() -> None:
    from inference.engines.triton import TritonUnavailableError
    from inference.store import StoreUnavailableError

    assert issubclass(StoreUnavailableError, TransientError)
    assert issubclass(TritonUnavailableError, TransientError)
    assert [Backoff(0.5, 3.0)(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 3.0]
