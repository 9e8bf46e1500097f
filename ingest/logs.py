"""Logging set-up of the long-running commands: plain text, or one JSON object per line.

JSON lines (``log_format: json`` / ``ADQC_LOG_FORMAT=json``) carry ``time``, ``level``,
``logger`` and ``message``, plus ``exc_info`` for exceptions and any ``extra={...}`` fields,
so a log collector (Loki, Elasticsearch, Cloud Logging) indexes them without parsing.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal, TextIO

from pythonjsonlogger.json import JsonFormatter

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: kafka-python's socket layer; its close races its own reader (see ``ClosedSocketRead``)
KAFKA_TRANSPORT_LOGGER = "kafka.net.transport"


class ClosedSocketRead(logging.Filter):
    """Drops kafka-python's report of a read from a socket it has already closed.

    kafka-python 3.0.12 can let its IO thread read a connection while ``close()`` sets the
    socket to None, and logs the ``AttributeError`` as an ERROR with a traceback. The
    connection was being closed on purpose and nothing is lost, so that one record (a closed
    transport, an AttributeError on ``None``) is dropped; every other error passes.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        closed_read = (
            isinstance(exc, AttributeError)
            and "'NoneType'" in str(exc)
            and "(closed)" in record.getMessage()
        )
        return not closed_read


def json_formatter() -> logging.Formatter:
    """The JSON-lines formatter (ISO-8601 UTC times, stable key names)."""
    return JsonFormatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        datefmt="%Y-%m-%dT%H:%M:%S%z",
    )


def configure_logging(
    level: str, fmt: Literal["text", "json"] = "text", stream: TextIO | None = None
) -> None:
    """Log ``level`` and above to ``stream`` (stderr) as text or JSON lines; quiet kafka-python
    (warnings and up, without its closed-socket race: ``ClosedSocketRead``)."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(json_formatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level))
    logging.getLogger("kafka").setLevel(logging.WARNING)
    transport = logging.getLogger(KAFKA_TRANSPORT_LOGGER)
    if not any(isinstance(f, ClosedSocketRead) for f in transport.filters):
        transport.addFilter(ClosedSocketRead())
