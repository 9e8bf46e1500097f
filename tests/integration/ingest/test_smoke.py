"""`python -m ingest.smoke` (the chart's `helm test`) against a real Kafka and serve loop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from ingest_testkit import Topics, running_loop, serve_topics

from ingest import smoke
from ingest.settings import load_settings
from ingest.telemetry import Telemetry

pytestmark = pytest.mark.integration


def _env(monkeypatch: pytest.MonkeyPatch, bootstrap: str, topics: Topics) -> None:
    monkeypatch.setenv("ADQC_KAFKA__BOOTSTRAP", bootstrap)
    for role, name in topics.settings().items():
        monkeypatch.setenv(f"ADQC_TOPICS__{role.upper()}", name)


def test_smoke_frame_round_trips_through_the_loop(
    kafka_broker: Any,
    product: Any,
    scorer: Any,
    ingest_checkpoint: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topics, config = serve_topics(
        kafka_broker, "smoke", product.store_url, ingest_checkpoint, partitions=2
    )
    settings = load_settings(None, **config)
    _env(monkeypatch, kafka_broker.bootstrap, topics)
    with running_loop(settings, scorer, Telemetry(settings.telemetry)):
        result = smoke.run_smoke(settings.kafka, settings.topics, product.name, timeout_s=90)
        missing = smoke.run_smoke(settings.kafka, settings.topics, None, timeout_s=60)
        assert smoke.main(["--product", product.name, "--timeout", "90"]) == 0
        assert smoke.main(["--timeout", "60"]) == 0  # no product: the DLQ record is expected
    assert result is not None and result.kind == "result"
    assert result.detail.split()[0] in {"ok", "defect"} and "threshold=" in result.detail
    assert missing is not None and missing.kind == "dlq"
    assert missing.detail.startswith("unknown_product")
    out = capsys.readouterr().out
    assert out.count("OK") == 2 and "dlq: unknown_product" in out


def test_smoke_fails_when_nothing_answers(
    kafka_broker: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    topics = Topics.unique("smoke-idle")
    kafka_broker.create_topics(topics.names(), partitions=1)
    _env(monkeypatch, kafka_broker.bootstrap, topics)
    assert smoke.main(["--product", "bottle", "--timeout", "3"]) == 1  # no worker running
    assert "FAIL: no result or DLQ record" in capsys.readouterr().out
