"""ReferenceStore on the in-process backends (memory, file), and store URL handling."""

from __future__ import annotations

import socket
import time

import pytest

from inference.records import RecordFormatError
from inference.store import (
    StoreUnavailableError,
    open_store,
)


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


from store_contract import *  # noqa: E402,F401,F403  (the backend contract, on memory and file)
