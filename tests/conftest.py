"""Fixtures for every test: the shared dataset location. Server fixtures live in
tests/integration/conftest.py; shared helpers beside this file (inference_testkit,
store_contract) are importable from both folders."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DATASETS = REPO_ROOT.parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    """The shared real datasets; tests that need them skip cleanly when absent."""
    if not DATASETS.is_dir():
        pytest.skip(f"real datasets not found at {DATASETS}")
    return DATASETS


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test under tests/unit must not need a server: its place is tests/integration."""
    unit = Path(__file__).parent / "unit"
    wrong = [
        item.nodeid
        for item in items
        if unit in Path(str(item.path)).parents and item.get_closest_marker("integration")
    ]
    if wrong:
        raise pytest.UsageError(f"integration tests under tests/unit (move them): {wrong}")
