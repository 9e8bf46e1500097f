"""Transient errors and the one retry policy for them.

A :class:`TransientError` is an outage, not a fault of the input: the store, the engine or the
broker is unreachable and the same call may succeed later. Store and engine errors of that kind
subclass it (``StoreUnavailableError``, ``TritonUnavailableError``); the serve loop retries
exactly these, forever, and never anything else. :func:`retrying` is the back-off policy
(tenacity): exponential from ``initial_s``, capped at ``max_s``, with an injectable sleep.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_never,
    wait_exponential,
)


class TransientError(Exception):
    """An outage worth waiting out (store, engine or broker unreachable), not a bad input."""


def backoff(initial_s: float, max_s: float) -> wait_exponential:
    """The wait before retry ``n`` (1-based): ``initial_s * 2**(n-1)``, at most ``max_s``."""
    return wait_exponential(multiplier=initial_s, max=max_s)


class Backoff:
    """:func:`backoff` as a plain function of the attempt number, for retries that are not a
    function call (the serve loop resending publishes the broker refused)."""

    def __init__(self, initial_s: float, max_s: float) -> None:
        self._wait = backoff(initial_s, max_s)

    def __call__(self, attempt: int) -> float:
        state = RetryCallState(retry_object=Retrying(), fn=None, args=(), kwargs={})
        state.attempt_number = attempt
        return float(self._wait(state))


def retrying(
    *,
    initial_s: float,
    max_s: float,
    attempts: int | None = None,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = TransientError,
    sleep: Callable[[float], None] = time.sleep,
    before_sleep: Callable[[RetryCallState], None] | None = None,
) -> Retrying:
    """A tenacity ``Retrying`` that retries ``retry_on`` with :func:`backoff`; ``attempts``
    bounds the calls (None: forever) and the last error is re-raised as is. ``sleep`` may raise
    to give up early (the serve loop's does when it is shutting down)."""
    return Retrying(
        retry=retry_if_exception_type(retry_on),
        wait=backoff(initial_s, max_s),
        stop=stop_never if attempts is None else stop_after_attempt(attempts),
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )
