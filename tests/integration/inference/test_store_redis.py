"""ReferenceStore on the real Redis: key layout, outage and the shared contract."""

from __future__ import annotations

import json
import time

import pytest

from inference.store import (
    StoreUnavailableError,
    open_store,
)


@pytest.mark.integration
def test_redis_key_layout(redis_server, redis_url, record_factory):
    import redis

    prefix = redis_url.rsplit("prefix=", 1)[1]
    store = open_store(redis_url)
    client = redis.Redis.from_url(redis_server.url)
    events = client.pubsub(ignore_subscribe_messages=True)
    events.subscribe(f"{prefix}:events")
    store.publish(record_factory(detector="patchcore"))
    deadline, message = time.monotonic() + 5.0, None
    while message is None and time.monotonic() < deadline:
        message = events.get_message(timeout=0.5)
    assert json.loads(message["data"]) == {"event": "published", "product": "widget", "version": 1}
    assert client.get(f"{prefix}:product:widget:latest") == b"1"
    assert client.smembers(f"{prefix}:products") == {b"widget"}
    blobs = client.hgetall(f"{prefix}:product:widget:v1:arrays")
    assert sorted(blobs) == [b"detector.memory", b"detector.n_patches_seen", b"pool.0", b"pool.1"]
    assert all(blob.startswith(b"\x93NUMPY") for blob in blobs.values())
    assert b'"product": "widget"' in client.get(f"{prefix}:product:widget:v1:meta")


@pytest.mark.integration
def test_redis_outage_then_recovery(redis_server_factory, record_factory):
    server = redis_server_factory(appendonly=True)
    store = open_store(f"{server.url}?retries=2&backoff=0.02")
    store.publish(record_factory())
    server.stop()
    with pytest.raises(StoreUnavailableError, match=f"Redis at {server.url}.*3 attempts"):
        store.get("widget")
    with pytest.raises(StoreUnavailableError):
        store.publish(record_factory())
    server.start()  # same port, data kept (append-only file): the store reconnects by itself
    assert store.get("widget").version == 1
    assert store.publish(record_factory()) == 2


from store_contract import *  # noqa: E402,F401,F403  (the backend contract, on Redis and tiered)

pytestmark = pytest.mark.integration
