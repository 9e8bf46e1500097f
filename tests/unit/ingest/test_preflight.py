"""Start-up checks without servers: the tools' Kafka settings and what counts as fatal."""

from __future__ import annotations

import logging
import threading
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


def test_a_refusal_ends_the_check_before_the_bootstrap_gives_up(monkeypatch) -> None:
    """A logged refusal is fatal at once; the attempt ends on its own and then stops the
    watcher (the fake client stands for kafka-python retrying until its bootstrap timeout)."""
    import kafka
    from kafka.errors import KafkaTimeoutError

    from ingest.preflight import CredentialsError

    release, finished = threading.Event(), threading.Event()

    class RetryingAdmin:
        def __init__(self, **_config: object) -> None:
            logging.getLogger("kafka.net.connection").error(
                "<BrokerConnection node_id=bootstrap-0>: SaslAuthenticationFailedError: "
                "Authentication failed: Invalid username or password"
            )
            release.wait(10)
            finished.set()
            raise KafkaTimeoutError("Unable to bootstrap")

    monkeypatch.setattr(kafka, "KafkaAdminClient", RetryingAdmin)
    settings = kafka_settings(
        bootstrap=["broker:9093"],
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_username="alice",
        sasl_password="not-the-password",
    )
    watchers = len(logging.getLogger("kafka").handlers)
    with pytest.raises(CredentialsError, match="refused the PLAIN login of user 'alice'"):
        check_kafka(settings, timeout_s=10)
    assert not finished.is_set()  # the check did not wait for the attempt
    assert len(logging.getLogger("kafka").handlers) == watchers + 1  # still listening
    release.set()
    assert finished.wait(5)
    deadline = time.monotonic() + 5
    while len(logging.getLogger("kafka").handlers) > watchers and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(logging.getLogger("kafka").handlers) == watchers


def test_a_failure_that_is_not_kafkas_is_raised_not_taken_for_an_outage(monkeypatch) -> None:
    import kafka

    def broken(**_config: object) -> None:
        raise TypeError("unexpected keyword argument 'sasl_plain_pasword'")

    monkeypatch.setattr(kafka, "KafkaAdminClient", broken)
    with pytest.raises(TypeError, match="sasl_plain_pasword"):
        check_kafka(kafka_settings(bootstrap=["broker:9092"]), timeout_s=1)


def test_another_clients_refusal_does_not_fail_this_check(monkeypatch) -> None:
    """The watcher hears only its own check's threads (an earlier check may still retry)."""
    import kafka

    class AnsweringAdmin:
        def __init__(self, **_config: object) -> None:
            other = threading.Thread(
                target=logging.getLogger("kafka.net.manager").error,
                args=("Bootstrap connection failed: SaslAuthenticationFailedError: bad login",),
                name="kafka-io-adqc-serve-preflight-0123456789ab",
            )
            other.start()
            other.join()

        def describe_cluster(self) -> dict:
            return {"brokers": [{"node_id": 1}]}

        def close(self) -> None:
            pass

    monkeypatch.setattr(kafka, "KafkaAdminClient", AnsweringAdmin)
    assert check_kafka(kafka_settings(bootstrap=["broker:9092"]), timeout_s=5) is True
