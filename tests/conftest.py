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
