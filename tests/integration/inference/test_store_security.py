"""Redis over TLS (``rediss://``) and with a password, on a real redis-server 7 started with
TLS and certificates made for the test session; wrong credentials are fatal, not retried."""

from __future__ import annotations

import time
from urllib.parse import quote

import pytest
from typer.testing import CliRunner

from adqc.cli import build_app
from inference.store import StoreAuthError, StoreUnavailableError, open_store
from ingest.preflight import EXIT_CREDENTIALS, CredentialsError, check_store

pytestmark = pytest.mark.integration
PASSWORD = "redis-s3cret/pw"


@pytest.fixture(scope="module")
def tls_redis(redis_server_factory, tls_material):
    return redis_server_factory(
        password=PASSWORD, tls=tls_material.server, tls_ca=tls_material.ca.cert
    )


def test_rediss_store_round_trip_over_tls(tls_redis, tls_material, record_factory):
    url = tls_redis.tls_url
    assert url.startswith(f"rediss://:{quote(PASSWORD, safe='')}@127.0.0.1:{tls_redis.tls_port}/")
    with open_store(f"{url}&prefix=tls") as store:
        assert store.publish(record_factory(seed=7)) == 1
        assert store.get("widget").version == 1
        assert PASSWORD not in store.url and quote(PASSWORD, safe="") not in store.url
    assert check_store(url) is True
    # the TLS port really speaks TLS: a plain client gets nowhere
    plain = f"redis://:{quote(PASSWORD, safe='')}@127.0.0.1:{tls_redis.tls_port}/0?retries=0"
    with open_store(plain) as store, pytest.raises(StoreUnavailableError):
        store.latest_version("widget")


def test_rediss_with_an_untrusted_ca_is_fatal(tls_redis, tls_material):
    url = tls_redis.tls_url.split("?")[0] + f"?ssl_ca_certs={tls_material.other_ca.cert}"
    with pytest.raises(CredentialsError, match="CERTIFICATE_VERIFY_FAILED"):
        check_store(url)


def test_mutual_tls_redis_needs_the_client_certificate(redis_server_factory, tls_material):
    server = redis_server_factory(
        tls=tls_material.server, tls_ca=tls_material.ca.cert, tls_client_auth=True
    )
    base = server.tls_url + "&retries=0"
    with open_store(base) as store, pytest.raises(StoreUnavailableError):
        store.latest_version("widget")
    client = f"&ssl_certfile={tls_material.client.cert}&ssl_keyfile={tls_material.client.key}"
    with open_store(base + client) as store:
        assert store.latest_version("widget") is None


def test_wrong_redis_password_is_fatal_at_once(tls_redis):
    wrong = f"redis://:nope@127.0.0.1:{tls_redis.port}/0"
    started = time.monotonic()
    with open_store(wrong) as store, pytest.raises(StoreAuthError, match="refused the credentials"):
        store.latest_version("widget")  # no retries with back-off: retrying cannot help
    assert time.monotonic() - started < 5.0  # only redis-py's few bounded retries
    with pytest.raises(CredentialsError) as caught:
        check_store(wrong)
    assert "nope" not in str(caught.value)
    missing = f"redis://127.0.0.1:{tls_redis.port}/0"  # no password at all
    with pytest.raises(CredentialsError):
        check_store(missing)


def test_serve_exits_3_on_a_wrong_redis_password(tls_redis):
    env = {
        "ADQC_STORE__URL": f"redis://:wrong-pw@127.0.0.1:{tls_redis.port}/0",
        "ADQC_KAFKA__BOOTSTRAP": "127.0.0.1:1",  # never reached: the store is checked first
        "ADQC_TELEMETRY__PROMETHEUS_PORT": "0",
    }
    result = CliRunner().invoke(build_app(), ["serve"], env=env)
    assert result.exit_code == EXIT_CREDENTIALS, result.output
    assert "refused the credentials" in result.output and "wrong-pw" not in result.output


def test_product_commands_exit_3_on_a_wrong_redis_password(tls_redis):
    url = f"redis://:wrong-pw@127.0.0.1:{tls_redis.port}/0"
    result = CliRunner().invoke(build_app(), ["product", "list", "--store", url])
    assert result.exit_code == EXIT_CREDENTIALS, result.output
    assert "refused the credentials" in result.output and "wrong-pw" not in result.output


def test_an_acl_change_that_revokes_our_commands_is_a_credentials_refusal(redis_server):
    """ACL changed while a process holds a connection: NOPERM is a refusal (StoreAuthError,
    fatal for serve: exit 3), not a bad frame or an outage."""
    import uuid

    user = f"adqc-{uuid.uuid4().hex[:6]}"
    admin = redis_server.client()
    admin.execute_command("ACL", "SETUSER", user, "on", ">user-pw", "~*", "+@all")
    url = f"redis://{user}:user-pw@127.0.0.1:{redis_server.port}/0?prefix={user}"
    try:
        with open_store(url) as store:
            assert store.latest_version("widget") is None
            admin.execute_command("ACL", "SETUSER", user, "-@all")
            with pytest.raises(StoreAuthError, match="refused the credentials") as caught:
                store.latest_version("widget")
            assert "user-pw" not in str(caught.value)
    finally:
        admin.execute_command("ACL", "DELUSER", user)
        admin.close()
