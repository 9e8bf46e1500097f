"""Kafka over TLS and SASL for every tool (camera simulate, alarms tail, serve start-up), on a
real KRaft broker with SSL (mutual TLS), SASL_SSL and SASL_PLAINTEXT listeners and
certificates generated for the test session (tests/integration/conftest.py `tls_material`)."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kafka import KafkaConsumer
from PIL import Image
from typer.testing import CliRunner

from adqc.cli import build_app
from ingest.alarms import AlarmTail
from ingest.camera import make_producer
from ingest.preflight import EXIT_CREDENTIALS, CredentialsError, check_kafka, kafka_settings
from ingest.schemas import AlarmMessage, Source, alarm_id_for, utc_now

pytestmark = pytest.mark.integration
runner = CliRunner()
USER, PASSWORD = "alice", "alice-s3cret-pw"


@pytest.fixture(scope="module")
def secure_broker(kafka_broker_factory: Any, tls_material: Any) -> Any:
    return kafka_broker_factory(
        tls=tls_material.server, tls_ca=tls_material.ca.cert, sasl_users={USER: PASSWORD}
    )


def _options(broker: Any, tls: Any, protocol: str) -> list[str]:
    """Command-line options of the tools for ``protocol`` (the password comes from env)."""
    args = ["--bootstrap", broker.bootstrap_for(protocol), "--security-protocol", protocol]
    if protocol.endswith("SSL"):
        args += ["--ssl-cafile", str(tls.ca.cert)]
    if protocol == "SSL":  # the SSL listener requires a client certificate (mutual TLS)
        args += ["--ssl-certfile", str(tls.client.cert), "--ssl-keyfile", str(tls.client.key)]
    if protocol.startswith("SASL"):
        args += ["--sasl-mechanism", "PLAIN", "--sasl-username", USER]
    return args


def _settings(broker: Any, tls: Any, protocol: str, **extra: Any) -> Any:
    options: dict[str, Any] = {
        "bootstrap": [broker.bootstrap_for(protocol)],
        "security_protocol": protocol,
    }
    if protocol.endswith("SSL"):
        options["ssl_cafile"] = tls.ca.cert
    if protocol == "SSL":
        options |= {"ssl_certfile": tls.client.cert, "ssl_keyfile": tls.client.key}
    if protocol.startswith("SASL"):
        options |= {"sasl_mechanism": "PLAIN", "sasl_username": USER, "sasl_password": PASSWORD}
    return kafka_settings(**(options | extra))


def _alarm(frame_id: str) -> AlarmMessage:
    now = utc_now()
    return AlarmMessage(
        alarm_id=alarm_id_for(frame_id, "m:1"),
        frame_id=frame_id,
        line="l1",
        camera="cam-1",
        product="bottle",
        capture_time=now,
        detected_at=now,
        score=2.0,
        threshold=1.0,
        severity="major",
        regions=[],
        heatmap=None,
        model_id="m:1",
        reference_version=1,
        source=Source(topic="frames", partition=0, offset=0),
    )


@pytest.mark.parametrize("protocol", ["SSL", "SASL_SSL", "SASL_PLAINTEXT", "SASL_SSL-SCRAM"])
def test_camera_simulate_and_alarms_tail_over_secure_listeners(
    secure_broker: Any, tls_material: Any, tmp_path: Path, protocol: str
) -> None:
    protocol, _, scram = protocol.partition("-")
    env = {"ADQC_KAFKA__SASL_PASSWORD": PASSWORD}  # never on the command line
    options = _options(secure_broker, tls_material, protocol)
    if scram:
        options[options.index("PLAIN")] = "SCRAM-SHA-512"
    frames, alarms = f"frames-{uuid.uuid4().hex[:8]}", f"alarms-{uuid.uuid4().hex[:8]}"
    # topics with a leader before anyone writes: auto-creation under load answered
    # NotLeaderForPartition for longer than the consumer waited
    secure_broker.create_topics([frames, alarms])
    for i in range(3):
        Image.fromarray(np.full((24, 24, 3), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")

    sim = runner.invoke(
        build_app(),
        ["camera", "simulate", "--source", str(tmp_path), "--product", "bottle"]
        + ["--topic", frames, "--fps", "0", *options],
        env=env,
    )
    assert sim.exit_code == 0, sim.output
    assert "published 3 frame(s)" in sim.output

    kafka = _settings(secure_broker, tls_material, protocol)
    consumer = KafkaConsumer(
        frames, **kafka.client_config(), auto_offset_reset="earliest", group_id=None
    )
    got: list[bytes] = []
    deadline = time.monotonic() + 30
    while len(got) < 3 and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            got += [r.value for r in records]
    consumer.close()
    assert sorted(got) == sorted((tmp_path / f"{i}.png").read_bytes() for i in range(3))

    producer = make_producer(kafka=kafka)
    sent = [_alarm(f"{protocol}-{i}") for i in range(2)]
    for alarm in sent:
        producer.send(alarms, value=alarm.to_bytes()).get(timeout=30)
    producer.send(alarms, value=sent[0].to_bytes()).get(timeout=30)  # a repeat
    producer.close()

    tail = runner.invoke(
        build_app(),
        ["alarms", "tail", "--topic", alarms, "--from-beginning", "--json", "--limit", "2"]
        + ["--idle-timeout", "20", *options],
        env=env,
    )
    assert tail.exit_code == 0, tail.output
    lines = [json.loads(x) for x in tail.stdout.splitlines() if x.startswith("{")]
    assert [x["alarm_id"] for x in lines] == [a.alarm_id for a in sent]


def test_alarm_tail_class_takes_the_security_settings(secure_broker: Any, tls_material: Any):
    kafka = _settings(secure_broker, tls_material, "SASL_SSL")
    topic = f"alarms-{uuid.uuid4().hex[:8]}"
    secure_broker.create_topics([topic])
    producer = make_producer(kafka=kafka)
    producer.send(topic, value=_alarm("x").to_bytes()).get(timeout=30)
    producer.close()
    with AlarmTail(topic=topic, from_beginning=True, kafka=kafka) as tail:
        assert [a.frame_id for a in tail.alarms(idle_timeout_s=15, limit=1)] == ["x"]


def test_wrong_sasl_password_is_a_fatal_start_up_error(
    secure_broker: Any, tls_material: Any, tmp_path: Path
) -> None:
    Image.fromarray(np.zeros((24, 24, 3), np.uint8)).save(tmp_path / "0.png")
    env = {"ADQC_KAFKA__SASL_PASSWORD": "not-the-password"}
    options = _options(secure_broker, tls_material, "SASL_SSL")
    started = time.monotonic()
    sim = runner.invoke(
        build_app(),
        ["camera", "simulate", "--source", str(tmp_path), "--product", "p", *options],
        env=env,
    )
    assert sim.exit_code == EXIT_CREDENTIALS == 3, sim.output
    assert "refused the PLAIN login of user 'alice'" in sim.output
    assert "not-the-password" not in sim.output
    tail = runner.invoke(build_app(), ["alarms", "tail", "--idle-timeout", "5", *options], env=env)
    assert tail.exit_code == EXIT_CREDENTIALS, tail.output
    assert time.monotonic() - started < 60  # bounded: no endless retry


def test_a_refused_login_ends_the_check_before_its_bootstrap_timeout(
    secure_broker: Any, tls_material: Any
) -> None:
    bad = _settings(secure_broker, tls_material, "SASL_SSL", sasl_password="not-the-password")
    started = time.monotonic()
    with pytest.raises(CredentialsError, match="refused the PLAIN login"):
        check_kafka(bad, timeout_s=60)
    assert time.monotonic() - started < 30  # the refusal, not the 60 s bootstrap, ended it

    serve_env = {
        "ADQC_KAFKA__BOOTSTRAP": secure_broker.bootstrap_for("SASL_SSL"),
        "ADQC_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
        "ADQC_KAFKA__SSL_CAFILE": str(tls_material.ca.cert),
        "ADQC_KAFKA__SASL_MECHANISM": "PLAIN",
        "ADQC_KAFKA__SASL_USERNAME": USER,
        "ADQC_KAFKA__SASL_PASSWORD": "not-the-password",
        "ADQC_STORE__URL": "memory://",
        "ADQC_TELEMETRY__PROMETHEUS_PORT": "0",
    }
    serve = runner.invoke(build_app(), ["serve"], env=serve_env)
    assert serve.exit_code == EXIT_CREDENTIALS, serve.output
    assert "refused" in serve.output and "not-the-password" not in serve.output


def test_untrusted_broker_certificate_is_fatal_and_good_settings_pass(
    secure_broker: Any, tls_material: Any
) -> None:
    good = _settings(secure_broker, tls_material, "SASL_SSL")
    assert check_kafka(good) is True
    bad = _settings(secure_broker, tls_material, "SASL_SSL", ssl_cafile=tls_material.other_ca.cert)
    with pytest.raises(CredentialsError, match="could not verify the broker's certificate"):
        check_kafka(bad)


def test_serve_consumes_and_publishes_over_sasl_ssl(
    secure_broker: Any,
    tls_material: Any,
    product: Any,
    frame_images: Any,
    ingest_checkpoint: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import signal

    from ingest_testkit import ServeProcess, Topics, read_all, serve_config, write_config

    from ingest.camera import CameraSimulator
    from ingest.schemas import ResultMessage

    topics = Topics.unique("sasl")
    secure_broker.create_topics(topics.names(), partitions=1)
    config = serve_config(
        secure_broker.bootstrap_for("SASL_SSL"),
        topics,
        product.store_url,
        ingest_checkpoint,
        kafka={
            "security_protocol": "SASL_SSL",
            "ssl_cafile": str(tls_material.ca.cert),
            "sasl_mechanism": "SCRAM-SHA-256",
            "sasl_username": USER,
        },
    )
    path = write_config(tmp_path / "serve.yaml", config)
    assert PASSWORD not in path.read_text()
    monkeypatch.setenv("ADQC_KAFKA__SASL_PASSWORD", PASSWORD)  # the worker's environment
    kafka = _settings(secure_broker, tls_material, "SASL_SSL")
    producer = make_producer(kafka=kafka)
    camera = CameraSimulator(producer, topics.frames, product.name)
    sent = [camera.publish(p, i)[1].frame_id for i, p in enumerate(frame_images.good[:4])]
    producer.flush()
    worker = ServeProcess(path, tmp_path / "serve.log")
    try:
        records = read_all(secure_broker.bootstrap, topics.results, 4, timeout_s=120)
        assert {ResultMessage.from_bytes(r.value).frame_id for r in records} == set(sent)
        worker.signal(signal.SIGTERM)
        assert worker.wait(60) == 0, worker.output()[-3000:]
    finally:
        worker.stop()
        producer.close()
