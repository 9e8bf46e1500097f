"""A fix for kafka-python 3.0's socket reader: bytes that arrive with the peer's close are kept.

kafka-python 3.0.x (``kafka.net.transport``) reads a socket until it would block; when the
read ends with the peer's close it aborts the connection and drops the bytes read before it.
A broker that refuses a SASL login sends the error and closes the connection right after it
(both after ``connection.failed.authentication.delay.ms``, 100 ms by default), so a client not
waiting on that socket at that moment reads both at once, loses the answer and sees "socket
disconnected": a wrong password then looks like an outage and is retried forever. Measured
on this project's SASL_SSL test broker with three busy processes on 2 cores: most logins lost
the refusal (about 2 of 8 per 10 s check saw it), and 1 check of 23 saw none (``adqc serve``
then waits instead of exiting 3).

:func:`install` replaces the reader with one that hands those bytes to the protocol before
closing. It touches only the 3.0 series, whose reader it was written against, and is
idempotent; every adqc Kafka client gets it through ``KafkaSettings.client_config``.
"""

from __future__ import annotations

import time
from typing import Any

#: the kafka-python series whose transport this fix was written against
FIXED_SERIES = "3.0."


def install() -> bool:
    """Install the reader on kafka-python's transports; returns whether it is installed."""
    import kafka
    from kafka.net import transport

    if not kafka.__version__.startswith(FIXED_SERIES):
        return False
    tcp = transport.KafkaTCPTransport
    if getattr(tcp._read_from_sock, "_adqc_fix", False):
        return True
    tcp._read_from_sock = _read_from_sock
    return True


async def _read_from_sock(self: Any) -> None:
    """kafka-python 3.0's ``KafkaTCPTransport._read_from_sock``, delivering before aborting."""
    from kafka import errors

    while self._read and not self._closed:
        await self._net.wait_read(self._sock)
        received, error = self._sock_recv()
        if received or error is None:
            self.last_read = time.monotonic()
            sensors = getattr(self._protocol, "_sensors", None)
            if sensors:
                sensors.bytes_received.record(len(received))
            try:
                self._protocol.data_received(received)
            except errors.KafkaProtocolError as exc:
                return self.abort(error=exc)
        if error is not None:
            if received:  # let the requests these bytes answered finish before the close
                await self._net.sleep(0)
            return self.abort(error=error)
    return None


_read_from_sock._adqc_fix = True  # type: ignore[attr-defined]
