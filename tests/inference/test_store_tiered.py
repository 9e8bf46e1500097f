"""Redis as a cache of a durable reference store: a flushed Redis loses no product."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from adqc.cli import build_app
from inference.store import FileStore, open_store
from inference.store.redis_store import RedisStore
from inference.store.tiered import TieredStore

pytestmark = pytest.mark.integration


@pytest.fixture
def private_redis(redis_server_factory):
    """A Redis of this test only (FLUSHALL would wipe other tests' keys)."""
    server = redis_server_factory()
    yield server
    server.close()


def test_flushall_is_answered_from_the_durable_copy_and_refills_redis(
    private_redis, tmp_path, record_factory
):
    url = f"{private_redis.url}?durable=file://{tmp_path / 'refs'}"
    with open_store(url) as writer:
        assert isinstance(writer, TieredStore)
        assert writer.publish(record_factory("widget", seed=1)) == 1
        assert writer.publish(record_factory("widget", seed=2)) == 2
        writer.publish(record_factory("gadget", seed=3))
    client = private_redis.client()
    assert client.exists("adqc:product:widget:latest")  # Redis was filled on publish
    client.flushall()
    assert client.dbsize() == 0

    with open_store(url) as reader:
        assert reader.list_products() == ["gadget", "widget"]
        assert reader.latest_version("widget") == 2
        assert reader.versions("widget") == [1, 2]
        record = reader.get("widget")
        assert record.version == 2
        np.testing.assert_array_equal(record.pool[0], record_factory(seed=2).pool[0])
        assert reader.get("widget", 1).version == 1
        assert reader.refills >= 2
    # Redis answers on its own again: the plain Redis view has the refilled records
    with open_store(private_redis.url) as plain:
        assert plain.latest_version("widget") == 2
        np.testing.assert_array_equal(plain.get("widget").pool[0], record_factory(seed=2).pool[0])
        assert plain.list_products() == ["widget"]  # gadget was not read since the flush

    listed = CliRunner().invoke(build_app(), ["product", "list", "--store", url])
    assert listed.exit_code == 0, listed.output
    assert "widget" in listed.output and "gadget" in listed.output
    with open_store(private_redis.url) as plain:  # listing read gadget: Redis has it again
        assert plain.get("gadget").version == 1


def test_new_versions_reach_redis_and_readers_keep_their_version_numbers(
    private_redis, tmp_path, record_factory
):
    url = f"{private_redis.url}?durable=file://{tmp_path / 'refs'}"
    with open_store(url) as writer, open_store(url) as reader:
        writer.publish(record_factory(seed=1))
        assert reader.get("widget").version == 1
        private_redis.client().flushall()
        writer.publish(record_factory(seed=2))  # numbered by the durable store, not Redis
        assert reader.get("widget").version == 2
        assert private_redis.client().get("adqc:product:widget:latest") == b"2"
        writer.remove("widget")
        assert reader.latest_version("widget") is None
        assert reader.list_products() == []


def test_redis_down_reads_fall_back_to_the_durable_copy(private_redis, tmp_path, record_factory):
    durable = FileStore(f"file://{tmp_path / 'refs'}")
    cache = RedisStore(private_redis.url, retries=0)
    store = TieredStore(durable, cache)
    store.publish(record_factory(seed=4))
    private_redis.stop()
    fresh = TieredStore(
        FileStore(f"file://{tmp_path / 'refs'}"), RedisStore(private_redis.url, retries=0)
    )
    assert fresh.get("widget").version == 1
    assert fresh.list_products() == ["widget"]
    private_redis.start()


def test_durable_option_validation(tmp_path):
    with pytest.raises(ValueError, match="durable store must be a file:///dir URL"):
        open_store("redis://127.0.0.1:1/0?durable=s3://bucket/refs")
    summary = json.dumps(
        {"url": str(open_store(f"redis://127.0.0.1:1/0?durable=file://{tmp_path}"))}
    )
    assert "durable" in summary
