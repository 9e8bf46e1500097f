"""Inference integration fixtures: the shared ones, with the store on the real Redis backends."""

from __future__ import annotations

import pytest
from inference_testkit import (  # noqa: F401  (fixtures)
    brightness_engine,
    local_engine,
    make_record,
    record_factory,
    store,
    untrained_checkpoint,
)


@pytest.fixture(params=["redis", "tiered"])  # tiered: Redis cache + durable directory
def store_url(request, redis_url, tmp_path) -> str:
    if request.param == "tiered":
        return f"{redis_url}&durable=file://{tmp_path / 'durable'}"
    return redis_url
