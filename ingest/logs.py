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
    """Log ``level`` and above to ``stream`` (stderr) as text or JSON lines; quiet kafka-python."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(json_formatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level))
    logging.getLogger("kafka").setLevel(logging.WARNING)
