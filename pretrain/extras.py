"""Optional dependencies by role: a missing one fails with the pip extra that installs it.

The worker image installs ``adqc[serve,triton]`` only; evaluation, the demo, ONNX export and
training tools pull in more (see pyproject.toml ``[project.optional-dependencies]``). Import
those packages through :func:`require` at the point of use, never at module import time on
the serving path. This module sits in the bottom package so that every layer may use it.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtraError(ImportError):
    """An optional package is absent; the message names the extra that installs it."""


def require(module: str, extra: str, *, why: str = "") -> ModuleType:
    """Import ``module``, or raise :class:`MissingExtraError` naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is None or module.split(".")[0] != exc.name.split(".")[0]:
            raise  # the package is there; something it imports is broken: show that
        need = f" ({why})" if why else ""
        raise MissingExtraError(
            f"{module} is not installed{need}: pip install 'adqc[{extra}]' "
            "(`make setup` installs every extra)"
        ) from exc
