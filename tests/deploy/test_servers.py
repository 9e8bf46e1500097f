"""Real Redis, Kafka and Triton started by deploy/servers.py (no mocks)."""

from __future__ import annotations

import textwrap
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from deploy.servers import (
    KafkaBroker,
    RedisServer,
    ServersNotInstalledError,
    ServerStartError,
    TritonServer,
    port_open,
)

ADD_ONE_CONFIG = """
name: "add_one"
backend: "python"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
dynamic_batching { max_queue_delay_microseconds: 1000 }
"""

ADD_ONE_MODEL = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            out = pb_utils.Tensor("OUTPUT0", (x + 1).astype(np.float32))
            responses.append(pb_utils.InferenceResponse([out]))
        return responses
"""

BROKEN_MODEL = """
class TritonPythonModel:
    def initialize(self, args):
        raise RuntimeError("adqc-test: this model refuses to load")

    def execute(self, requests):
        return []
"""


def _python_model(repo: Path, name: str, code: str) -> Path:
    """Write a one-version python-backend model `name` into `repo`."""
    (repo / name / "1").mkdir(parents=True)
    config = ADD_ONE_CONFIG.replace('name: "add_one"', f'name: "{name}"')
    (repo / name / "config.pbtxt").write_text(config)
    (repo / name / "1" / "model.py").write_text(textwrap.dedent(code))
    return repo


def _read(consumer, n: int, timeout_s: float = 30.0) -> list[bytes]:
    """Poll until n messages arrived (or the timeout passed); returns their values."""
    got: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < n and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=200, max_records=n - len(got)).values():
            got += [r.value for r in records]
    return got


@pytest.fixture(scope="module")
def add_one_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _python_model(tmp_path_factory.mktemp("triton_repo"), "add_one", ADD_ONE_MODEL)


def test_missing_install_says_run_make_servers(tmp_path, monkeypatch):
    monkeypatch.setenv("ADQC_CACHE_DIR", str(tmp_path / "empty-cache"))
    with pytest.raises(ServersNotInstalledError, match="make servers"):
        KafkaBroker()
    with pytest.raises(ServersNotInstalledError, match="make servers"):
        TritonServer(tmp_path)


def test_triton_rejects_missing_repository(tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such-repo"):
        TritonServer(tmp_path / "no-such-repo")


# -- Redis ----------------------------------------------------------------------------------------
@pytest.mark.integration
def test_redis_server_serves_and_stops(redis_server):
    client = redis_server.client()
    key = f"adqc-test:{uuid.uuid4().hex}"
    client.set(key, b"\x00\x01payload")
    assert client.get(key) == b"\x00\x01payload"
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    client.delete(key)
    client.close()


@pytest.mark.integration
def test_redis_appendonly_survives_crash_and_restart(tmp_path):
    with RedisServer(appendonly=True, workdir=tmp_path / "redis") as server:
        client = server.client()
        client.hset("product:bottle", mapping={"version": 3, "threshold": "0.42"})
        client.close()
        port = server.port
        server.kill()  # a crash: no shutdown, no save
        assert not server.running and not port_open(port)
        server.start()
        assert server.port == port
        client = server.client()
        assert client.hgetall("product:bottle") == {b"version": b"3", b"threshold": b"0.42"}
        client.close()
        pid = server.pid
    assert not server.running and pid is not None
    assert not port_open(port)


@pytest.mark.integration
def test_redis_without_appendonly_keeps_nothing(tmp_path):
    with RedisServer(workdir=tmp_path / "redis") as server:
        client = server.client()
        client.set("k", "v")
        client.close()
        server.restart()
        client = server.client()
        assert client.get("k") is None
        client.close()


# -- Kafka ----------------------------------------------------------------------------------------
@pytest.mark.integration
def test_kafka_create_topics_produce_consume(kafka_broker):
    from kafka import KafkaConsumer, KafkaProducer

    topic = f"frames-{uuid.uuid4().hex[:8]}"
    kafka_broker.create_topics([topic], partitions=3)
    kafka_broker.create_topics([topic], partitions=3)  # existing topics are left alone
    assert topic in kafka_broker.list_topics()
    admin = kafka_broker.admin()
    (described,) = admin.describe_topics([topic])
    admin.close()
    assert len(described["partitions"]) == 3

    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap, acks="all")
    for i in range(30):
        producer.send(topic, key=f"cam{i % 3}".encode(), value=f"frame-{i}".encode())
    producer.flush()
    producer.close()

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=kafka_broker.bootstrap,
        group_id=f"g-{topic}",
        auto_offset_reset="earliest",
        session_timeout_ms=6000,
    )
    values = sorted(int(v.decode().split("-")[1]) for v in _read(consumer, 30))
    consumer.close()
    assert values == list(range(30))


@pytest.mark.integration
def test_kafka_auto_creates_topics_and_supports_transactions(kafka_broker):
    from kafka import KafkaConsumer, KafkaProducer

    topic = f"results-{uuid.uuid4().hex[:8]}"
    producer = KafkaProducer(
        bootstrap_servers=kafka_broker.bootstrap, transactional_id=f"tx-{topic}"
    )
    producer.init_transactions()
    producer.begin_transaction()
    producer.send(topic, b"aborted")
    producer.flush()
    producer.abort_transaction()
    producer.begin_transaction()
    producer.send(topic, b"committed")
    producer.commit_transaction()
    producer.close()

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=kafka_broker.bootstrap,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
    )
    # The aborted record precedes the committed one: read_committed must skip it.
    assert _read(consumer, 1) == [b"committed"]
    consumer.close()


@pytest.mark.integration
def test_kafka_restart_keeps_messages_and_committed_offsets(kafka_broker_factory):
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    broker = kafka_broker_factory(partitions=2)
    bootstrap = broker.bootstrap
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for i in range(10):
        producer.send("frames", f"m{i}".encode())
    producer.flush()
    producer.close()
    partitions = [TopicPartition("frames", p) for p in range(2)]

    def consumer() -> KafkaConsumer:
        return KafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id="line-1",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            session_timeout_ms=6000,
        )

    def consume(n: int) -> list[bytes]:
        """Read exactly n messages as group line-1 (manual assignment), then commit."""
        c = consumer()
        c.assign(partitions)
        got = _read(c, n)
        c.commit()
        c.close()
        return got

    first = consume(4)
    broker.restart()  # SIGTERM, then the same ports and log dir
    assert broker.bootstrap == bootstrap
    second = consume(6)
    assert sorted(first + second) == sorted(f"m{i}".encode() for i in range(10))

    broker.kill()  # a crash, then recovery from the same log dir
    broker.start()
    c = consumer()
    committed = {tp.partition: c.committed(tp) for tp in partitions}
    ends = {tp.partition: off for tp, off in c.end_offsets(partitions).items()}
    c.close()
    assert committed == ends  # offsets and messages survived: nothing to deliver twice
    assert sum(ends.values()) == 10


# -- Triton ---------------------------------------------------------------------------------------
@pytest.mark.integration
def test_triton_add_one_over_http_and_grpc(triton_server_factory, add_one_repo):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    server = triton_server_factory(add_one_repo)
    x = np.arange(12, dtype=np.float32).reshape(3, 4)

    http = httpclient.InferenceServerClient(server.http_url)
    assert http.is_model_ready("add_one")
    request = httpclient.InferInput("INPUT0", list(x.shape), "FP32")
    request.set_data_from_numpy(x)
    np.testing.assert_array_equal(http.infer("add_one", [request]).as_numpy("OUTPUT0"), x + 1)
    http.close()

    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    request = grpcclient.InferInput("INPUT0", list(x.shape), "FP32")
    request.set_data_from_numpy(x)
    np.testing.assert_array_equal(grpc.infer("add_one", [request]).as_numpy("OUTPUT0"), x + 1)
    grpc.close()

    # Triton refreshes its metrics every 2 s (--metrics-interval-ms): poll for the two requests.
    deadline = time.monotonic() + 15
    while True:
        lines = server.metrics().splitlines()
        success = [
            ln for ln in lines if ln.startswith('nv_inference_request_success{model="add_one"')
        ]
        if (success and float(success[0].split()[-1]) >= 2) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert success and float(success[0].split()[-1]) == 2


@pytest.mark.integration
def test_triton_explicit_mode_stop_cleans_shared_memory(tmp_path, add_one_repo):
    import tritonclient.http as httpclient

    with TritonServer(add_one_repo, model_control_mode="explicit", workdir=tmp_path) as server:
        assert not server.model_ready("add_one")  # explicit: nothing loaded yet
        server.load_model("add_one")
        assert server.model_ready("add_one")
        client = httpclient.InferenceServerClient(server.http_url)
        request = httpclient.InferInput("INPUT0", [1, 4], "FP32")
        request.set_data_from_numpy(np.full((1, 4), 41, np.float32))
        assert client.infer("add_one", [request]).as_numpy("OUTPUT0").tolist() == [[42] * 4]
        client.close()
        regions = list(Path("/dev/shm").glob(f"{server.shm_prefix}*"))
        assert regions, "the python backend should have created its shared-memory region"
        http_port = server.http_port
    assert not server.running and not port_open(http_port)
    assert not any(r.exists() for r in regions)


@pytest.mark.integration
def test_triton_start_failure_reports_the_model_error(tmp_path):
    repo = _python_model(tmp_path / "repo", "broken", BROKEN_MODEL)
    server = TritonServer(repo, workdir=tmp_path / "log", startup_timeout=60)
    with pytest.raises(ServerStartError, match="refuses to load"):
        server.start()
    assert not server.running
    server.close()


def test_kafka_cluster_ids_never_start_with_a_dash(monkeypatch) -> None:
    """The storage tool reads an id starting with "-" as an option; such ids are redrawn."""
    import uuid

    from deploy import servers

    dash_first = uuid.UUID(bytes=bytes([0xF8]) + bytes(15))  # base64 "-A..."
    draws = iter([dash_first, uuid.UUID(int=1)])
    monkeypatch.setattr(servers.uuid, "uuid4", lambda: next(draws))
    assert servers._kafka_cluster_id() == "AAAAAAAAAAAAAAAAAAAAAQ"
