"""What every ``adqc`` command shares (docs/OPERATIONS.md "CLI conventions"): exit codes, the
one-line failure message, and old option spellings kept as hidden aliases.

Light to import (typer only): command modules import it at module level.
"""

from __future__ import annotations

import sys
from typing import NoReturn, TypeVar

import typer

#: bad input or usage: a wrong option, an unknown product, an unreadable file
EXIT_USAGE = 2
#: a runtime failure: a server unreachable, a disk error, a declined confirmation
EXIT_RUNTIME = 1
#: credentials refused (Kafka SASL/TLS, Redis password); same as ingest.preflight
EXIT_CREDENTIALS = 3

T = TypeVar("T")


def fail(message: str, code: int = EXIT_RUNTIME, *, word: str = "error") -> NoReturn:
    """Print ``error: message`` (one line, stderr) and exit with ``code``."""
    typer.secho(f"{word}: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def hidden_alias(old: str) -> typer.models.OptionInfo:
    """A hidden option for an old spelling (``--method`` for ``--detector``); pair it with
    :func:`pick`."""
    return typer.Option(None, old, hidden=True)


def pick(new_value: T | None, old_value: T | None, new: str, old: str, default: T) -> T:
    """The value of ``new``, else of its old spelling ``old`` (warning once on stderr), else
    ``default``; both given differently is a usage error."""
    if old_value is None:
        return default if new_value is None else new_value
    sys.stderr.write(f"warning: {old} is deprecated; use {new}\n")
    if new_value is not None and new_value != old_value:
        fail(f"{new} and its old spelling {old} disagree; give {new} only", EXIT_USAGE)
    return old_value
