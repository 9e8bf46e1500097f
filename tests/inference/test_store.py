"""ReferenceStore contract on every backend (memory, file, and the real Redis)."""

from __future__ import annotations

import json
import socket
import threading
import time

import numpy as np
import pytest

from inference.records import ModelMismatchError, RecordFormatError
from inference.store import (
    ProductNotFoundError,
    RecordTooLargeError,
    StoreUnavailableError,
    open_store,
)


def test_publish_get_list_versions(store, record_factory):
    assert store.latest_version("widget") is None
    assert store.publish(record_factory(seed=1)) == 1
    assert store.publish(record_factory(seed=2)) == 2
    store.publish(record_factory("gadget"))
    assert store.list_products() == ["gadget", "widget"]
    assert store.latest_version("widget") == 2
    assert store.versions("widget") == [1, 2]
    latest = store.get("widget")
    assert latest.version == 2
    np.testing.assert_array_equal(latest.pool[0], record_factory(seed=2).pool[0])
    np.testing.assert_array_equal(store.get("widget", 1).pool[0], record_factory(seed=1).pool[0])


def test_records_read_back_identical_and_immutable(store_url, record_factory):
    original = record_factory(detector="patchcore")
    with open_store(store_url) as writer:
        writer.publish(original)
    with open_store(store_url) as reader:  # a fresh process-level cache
        back = reader.get("widget")
    assert back.calibration == original.calibration
    assert back.created_at == original.created_at
    assert back.detector_config == original.detector_config
    assert sorted(back.detector_state) == ["memory", "n_patches_seen"]
    for key, value in original.detector_state.items():
        np.testing.assert_array_equal(back.detector_state[key], value)
    memory = back.detector_state["memory"]
    assert not back.pool[0].flags.writeable and not memory.flags.writeable


def test_reader_fetches_each_version_once_and_notices_new_ones(store_url, record_factory):
    with open_store(store_url) as writer, open_store(store_url) as reader:
        writer.publish(record_factory(seed=1))
        for _ in range(5):
            assert reader.get("widget").version == 1
        assert reader.fetches == 1
        writer.publish(record_factory(seed=2))
        assert reader.get("widget").version == 2  # the pointer is checked on every get
        assert reader.fetches == 2


def test_model_mismatch_is_refused_naming_both(store, record_factory):
    store.publish(record_factory(model_id="mobilenet_v2:aaaaaaaaaaaa"))
    assert store.get("widget", model_id="mobilenet_v2:aaaaaaaaaaaa").version == 1
    with pytest.raises(ModelMismatchError, match="aaaaaaaaaaaa.*bbbbbbbbbbbb"):
        store.get("widget", model_id="mobilenet_v2:bbbbbbbbbbbb")


def test_unknown_product_and_version(store, record_factory):
    with pytest.raises(ProductNotFoundError, match="unknown product 'nope'"):
        store.get("nope")
    store.publish(record_factory())
    with pytest.raises(ProductNotFoundError, match="no version 9"):
        store.get("widget", 9)
    with pytest.raises(ValueError, match="invalid product name"):
        store.get("../etc")


def test_remove_then_readd_never_reuses_a_version(store, record_factory):
    store.publish(record_factory())
    store.publish(record_factory())
    store.get("widget")
    store.remove("widget")
    assert store.list_products() == []
    assert store.latest_version("widget") is None
    with pytest.raises(ProductNotFoundError):
        store.get("widget")
    with pytest.raises(ProductNotFoundError):
        store.remove("widget")
    assert store.publish(record_factory()) == 3


def test_old_versions_are_pruned(store_url, record_factory):
    sep = "&" if "?" in store_url else "?"
    with open_store(f"{store_url}{sep}keep=2") as store:
        for seed in range(4):
            store.publish(record_factory(seed=seed))
        assert store.versions("widget") == [3, 4]
        with pytest.raises(ProductNotFoundError, match=r"kept versions: \[3, 4\]"):
            store.get("widget", 1)


def test_records_above_the_size_bound_are_refused(store_url, record_factory):
    sep = "&" if "?" in store_url else "?"
    with open_store(f"{store_url}{sep}max_bytes=2048") as store:
        with pytest.raises(RecordTooLargeError, match="above this store's limit"):
            store.publish(record_factory())
        assert store.latest_version("widget") is None
        assert store.publish(record_factory(levels=((8, 4),))) == 1


def test_readers_never_see_half_a_record(store_url, record_factory):
    # Each version's arrays are filled with its seed; a reader must never mix two versions.
    def record(seed: int):
        base = record_factory(seed=seed, levels=((256, 32), (64, 64)))
        pool = [np.full(a.shape, seed, np.float32) for a in base.pool]
        return base.model_copy(update={"pool": pool, "shots": seed + 1})

    with open_store(store_url) as writer, open_store(f"{store_url}") as reader:
        writer.publish(record(0))
        stop = threading.Event()
        seen: list[int] = []
        errors: list[BaseException] = []

        def read() -> None:
            try:
                while not stop.is_set():
                    got = reader.get("widget")
                    values = {float(a[0, 0]) for a in got.pool} | {float(a.max()) for a in got.pool}
                    assert values == {float(got.shots - 1)}, values
                    seen.append(got.version)
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        thread = threading.Thread(target=read)
        thread.start()
        for seed in range(1, 15):
            writer.publish(record(seed))
        stop.set()
        thread.join(10)
    assert not errors, errors
    assert seen == sorted(seen) and len(set(seen)) > 1


def test_file_store_reports_corrupt_records(tmp_path, record_factory):
    store = open_store(f"file://{tmp_path}")
    store.publish(record_factory())
    (tmp_path / "products" / "widget" / "v000001" / "meta.json").write_text("{broken")
    with pytest.raises(RecordFormatError, match="not valid JSON"):
        open_store(f"file://{tmp_path}").get("widget")


def test_shared_memory_space_and_private_memory_store(record_factory):
    a, b = open_store("memory://shared-test-space"), open_store("memory://shared-test-space")
    a.publish(record_factory())
    assert b.get("widget").version == 1
    assert open_store("memory://").list_products() == []


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://x", "unsupported store URL"),
        ("memory://?colour=red", "unknown store option"),
        ("memory://?max_bytes=lots", "not a number"),
    ],
)
def test_bad_urls(url, message):
    with pytest.raises(ValueError, match=message):
        open_store(url)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_redis_retries_with_backoff_then_names_the_url():
    port = _closed_port()
    store = open_store(f"redis://:secret@127.0.0.1:{port}/0?retries=3&backoff=0.05")
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError) as info:
        store.get("widget")
    elapsed = time.monotonic() - started
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message and "4 attempts" in message
    assert "secret" not in message  # the password is redacted
    assert 0.05 + 0.1 + 0.2 <= elapsed < 5.0  # three backoff sleeps, bounded


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
