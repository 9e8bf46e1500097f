"""Secrets are never printed or written, and /metrics binds where the log says it does."""

from __future__ import annotations

import logging
import socket
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adqc.cli import build_app
from inference.store.urls import redact, split_password, with_secret_password
from ingest.settings import TelemetrySettings
from ingest.telemetry import Telemetry

runner = CliRunner()
SECRET = "Zq8-very-secret-pw"


def test_print_example_never_shows_passwords_from_the_environment(tmp_path: Path) -> None:
    env = {
        "ADQC_STORE__URL": f"redis://:{SECRET}@redis.internal:6379/0",
        "ADQC_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
        "ADQC_KAFKA__SASL_MECHANISM": "PLAIN",
        "ADQC_KAFKA__SASL_USERNAME": "svc",
        "ADQC_KAFKA__SASL_PASSWORD": SECRET + "-kafka",
    }
    example = runner.invoke(build_app(), ["serve", "--print-example"], env=env)
    assert example.exit_code == 0, example.output
    assert SECRET not in example.output
    assert "password" not in example.output
    assert "redis://127.0.0.1:6379/0" in example.output  # the defaults, not the environment
    path = tmp_path / "serve.yaml"
    path.write_text(example.output)
    check = runner.invoke(build_app(), ["serve", "--config", str(path), "--check"])
    assert check.exit_code == 0, check.output


def test_password_helpers(tmp_path: Path) -> None:
    url = f"rediss://:{SECRET}@h:6380/1?ssl_ca_certs=/ca.pem"
    assert split_password(url) == ("rediss://h:6380/1?ssl_ca_certs=/ca.pem", SECRET)
    assert split_password("redis://user:pw@h/0") == ("redis://user@h/0", "pw")
    assert redact(url) == "rediss://:***@h:6380/1?ssl_ca_certs=/ca.pem"
    assert with_secret_password("redis://h:1/0", {}) == "redis://h:1/0"
    assert with_secret_password("redis://h:1/0", {"ADQC_REDIS_PASSWORD": "a/b"}) == (
        "redis://:a%2Fb@h:1/0"
    )
    secret_file = tmp_path / "password"
    secret_file.write_text("from-file\n")
    env = {"ADQC_REDIS_PASSWORD_FILE": str(secret_file)}
    assert with_secret_password("redis://u@h:1/0", env) == "redis://u:from-file@h:1/0"
    assert with_secret_password("redis://:given@h:1/0", env) == "redis://:given@h:1/0"
    with pytest.raises(ValueError, match="ADQC_REDIS_PASSWORD_FILE"):
        with_secret_password("redis://h:1/0", {"ADQC_REDIS_PASSWORD_FILE": str(tmp_path / "x")})


def test_export_triton_never_writes_the_redis_password(tmp_path: Path) -> None:
    from deploy import triton_repo as tr
    from pretrain.checkpoint import save_untrained

    checkpoint = tmp_path / "untrained.pt"
    save_untrained(checkpoint, "mobilenet_v2", num_tokens=64)
    out = tmp_path / "repo"
    result = runner.invoke(
        build_app(),
        ["export", "triton", "--out", str(out), "--checkpoint", str(checkpoint), "--kind", "cpu",
         "--redis-url", f"redis://:{SECRET}@redis.internal:6379/2"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert SECRET not in result.output
    assert "password was NOT written" in result.output
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) >= 4
    for path in files:
        assert SECRET.encode() not in path.read_bytes(), path
    config = tr.read_config(out / "adqc_features" / "config.pbtxt")
    assert config.parameters["redis_url"].string_value == "redis://redis.internal:6379/2"


def _outside_address() -> str | None:
    """This machine's non-loopback IPv4 address, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("192.0.2.254", 9))  # no packet is sent for UDP connect
            address = sock.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_metrics_bind_loopback_by_default_and_the_log_says_so(caplog) -> None:
    settings = TelemetrySettings(prometheus_port=0)
    assert settings.prometheus_addr == "127.0.0.1"
    telemetry = Telemetry(settings)
    with caplog.at_level(logging.INFO, logger="ingest.telemetry"):
        port = telemetry.start_metrics_server()
    try:
        assert f"http://127.0.0.1:{port}/metrics" in caplog.text
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            assert response.status == 200
        outside = _outside_address()
        if outside is not None:  # not reachable from another interface
            with pytest.raises(OSError):
                socket.create_connection((outside, port), timeout=2).close()
    finally:
        telemetry.shutdown()
