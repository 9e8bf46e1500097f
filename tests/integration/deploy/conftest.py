"""Fixtures of the chart tests that run the real helm binary."""

from __future__ import annotations

from pathlib import Path

import pytest
from helm_testkit import helm_binary


@pytest.fixture(scope="module")
def helm() -> Path:
    """The helm binary (the test is skipped when `make servers` has not installed it)."""
    return helm_binary()
