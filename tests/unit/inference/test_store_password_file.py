"""Every process that opens a Redis store takes a password missing from the URL from
``ADQC_REDIS_PASSWORD`` or from the file ``ADQC_REDIS_PASSWORD_FILE`` (a mounted Kubernetes
Secret: the Helm chart passes the password that way), never printing it."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference.store import open_store
from ingest.preflight import CredentialsError, check_store

SECRET = "s3cret/pw:@x"


def _password(store: object) -> str | None:
    cache = getattr(store, "cache", store)  # a TieredStore's Redis is its cache
    return cache._client.connection_pool.connection_kwargs.get("password")


@pytest.fixture
def password_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "password"
    path.write_text(SECRET + "\n")  # a Secret's file may end with a newline
    monkeypatch.delenv("ADQC_REDIS_PASSWORD", raising=False)
    monkeypatch.setenv("ADQC_REDIS_PASSWORD_FILE", str(path))
    return path


def test_a_redis_url_without_password_reads_it_from_the_file(password_file, tmp_path) -> None:
    with open_store("redis://127.0.0.1:1/0?prefix=p") as store:
        assert _password(store) == SECRET
        assert SECRET not in store.url
    durable = f"redis://redis:6379/0?durable=file://{tmp_path / 'refs'}"
    with open_store(durable) as store:  # the chart's tiered URL
        assert _password(store) == SECRET
        assert SECRET not in store.url


def test_a_password_in_the_url_wins(password_file) -> None:
    with open_store("redis://:inline@127.0.0.1:1/0") as store:
        assert _password(store) == "inline"


def test_an_unreadable_password_file_is_a_credentials_error(password_file) -> None:
    password_file.unlink()
    with pytest.raises(ValueError, match="ADQC_REDIS_PASSWORD_FILE"):
        open_store("redis://127.0.0.1:1/0")
    with pytest.raises(CredentialsError, match="ADQC_REDIS_PASSWORD_FILE"):
        check_store("redis://127.0.0.1:1/0")
