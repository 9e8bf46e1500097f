"""Start-up checks without servers: the tools' Kafka settings and what counts as fatal."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from deploy.servers import free_port
from ingest.preflight import check_kafka, check_store, kafka_settings
from ingest.settings import SettingsError


def test_kafka_settings_come_from_the_env_and_options_win(monkeypatch) -> None:
    monkeypatch.setenv("ADQC_KAFKA__BOOTSTRAP", "a:1,b:2")
    monkeypatch.setenv("ADQC_KAFKA__SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("ADQC_KAFKA__SASL_MECHANISM", "SCRAM-SHA-256")
    monkeypatch.setenv("ADQC_KAFKA__SASL_USERNAME", "cam")
    monkeypatch.setenv("ADQC_KAFKA__SASL_PASSWORD", "pw")
    monkeypatch.setenv("ADQC_ENGINE__KIND", "not-a-kind")  # other sections are not read here
    kafka = kafka_settings()
    assert kafka.bootstrap == ["a:1", "b:2"] and kafka.sasl_username == "cam"
    config = kafka_settings(bootstrap=["c:3"], sasl_username="mes").client_config()
    assert config["bootstrap_servers"] == ["c:3"] and config["sasl_plain_username"] == "mes"
    assert config["sasl_plain_password"] == "pw" and config["sasl_mechanism"] == "SCRAM-SHA-256"
    with pytest.raises(SettingsError, match="kafka.security_protocol"):
        kafka_settings(security_protocol="TLS")


def test_an_unreachable_server_is_not_fatal(tmp_path: Path) -> None:
    started = time.monotonic()
    assert check_kafka(kafka_settings(bootstrap=[f"127.0.0.1:{free_port()}"]), 2.0) is False
    assert time.monotonic() - started < 15
    assert check_store(f"redis://127.0.0.1:{free_port()}/0") is False
    assert check_store(f"file://{tmp_path / 'refs'}") is True
    assert check_store("memory://") is True
