"""Serve settings: YAML + environment, tagged engine union, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest.settings import (
    LocalEngineSettings,
    SettingsError,
    TritonEngineSettings,
    example_yaml,
    load_settings,
)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "serve.yaml"
    path.write_text(text)
    return path


def test_yaml_then_env_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(
        tmp_path,
        "kafka:\n  bootstrap: 'a:9092,b:9093'\nbatch:\n  size: 4\n  max_wait_ms: 10\n"
        "engine:\n  kind: triton\n  url: 'triton:8001'\n",
    )
    monkeypatch.setenv("ADQC_BATCH__MAX_WAIT_MS", "25")
    monkeypatch.setenv("ADQC_STORE__URL", "redis://redis:6379/1")
    settings = load_settings(path)
    assert settings.kafka.bootstrap == ["a:9092", "b:9093"]
    assert (settings.batch.size, settings.batch.max_wait_ms) == (4, 25)
    assert isinstance(settings.engine, TritonEngineSettings)
    assert settings.engine.url == "triton:8001"
    assert settings.store.url == "redis://redis:6379/1"


def test_env_alone_and_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADQC_KAFKA__BOOTSTRAP", "k1:9092,k2:9092")
    settings = load_settings()
    assert settings.kafka.bootstrap == ["k1:9092", "k2:9092"]
    assert isinstance(settings.engine, LocalEngineSettings)
    assert settings.topics.dlq == "frames.dlq"


def test_invalid_fields_are_named_with_file_and_env(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "kafka:\n  bootstrap: 'nohostport'\nbatch:\n  size: 0\nengine:\n  kind: local\n"
        "  url: 'x'\ntypo_section: 1\n",
    )
    with pytest.raises(SettingsError) as err:
        load_settings(path)
    text = str(err.value)
    assert str(path) in text
    assert "kafka.bootstrap" in text and "ADQC_KAFKA__BOOTSTRAP" in text
    assert "batch.size" in text
    assert "engine.url" in text  # the local engine has no url
    assert "typo_section" in text


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[1, 2]", "mapping"),
        ("kafka: [unclosed", "not valid YAML"),
        ("engine:\n  kind: gpu\n", "engine"),
        ("batch:\n  size: 32\n  max_in_flight: 8\n", "max_in_flight"),
        ("alarms:\n  heatmap: uri\n", "heatmap_dir"),
        ("kafka:\n  security_protocol: SASL_SSL\n", "sasl_username"),
        ("kafka:\n  ssl_cafile: /nonexistent/ca.pem\n", "/nonexistent/ca.pem"),
        ("store:\n  url: 'mongodb://x'\n", "store.url"),
    ],
)
def test_bad_configs_fail_at_start_up(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(SettingsError, match=None) as err:
        load_settings(_write(tmp_path, text))
    assert fragment in str(err.value)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="config file not found"):
        load_settings(tmp_path / "nope.yaml")


def test_sasl_settings_reach_the_kafka_client(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "kafka:\n  bootstrap: 'k:9093'\n  security_protocol: SASL_SSL\n"
        "  sasl_mechanism: SCRAM-SHA-512\n  sasl_username: adqc\n  sasl_password: s3cret\n",
    )
    settings = load_settings(path)
    config = settings.kafka.client_config()
    assert config["security_protocol"] == "SASL_SSL"
    assert config["sasl_mechanism"] == "SCRAM-SHA-512"
    assert config["sasl_plain_password"] == "s3cret"
    assert "s3cret" not in repr(settings)


def test_example_config_is_valid(tmp_path: Path) -> None:
    settings = load_settings(_write(tmp_path, example_yaml()))
    assert settings.group == "adqc-serve"
