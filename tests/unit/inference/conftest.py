"""Inference unit fixtures: the shared ones, with the store on the in-process backends."""

from __future__ import annotations

import uuid

import pytest
from inference_testkit import (  # noqa: F401  (fixtures)
    brightness_engine,
    local_engine,
    make_record,
    record_factory,
    store,
    untrained_checkpoint,
)


@pytest.fixture(params=["memory", "file"])
def store_url(request, tmp_path) -> str:
    """The in-process backends; the Redis ones run in tests/integration/inference."""
    if request.param == "memory":
        return f"memory://{uuid.uuid4().hex}"
    return f"file://{tmp_path / 'store'}"
