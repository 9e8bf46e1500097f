"""Shared pytest fixtures: dataset location and real local servers (see deploy/servers.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DATASETS = REPO_ROOT.parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    """The shared real datasets; tests that need them skip cleanly when absent."""
    if not DATASETS.is_dir():
        pytest.skip(f"real datasets not found at {DATASETS}")
    return DATASETS


# -- real local servers ---------------------------------------------------------------------------
# Started from deploy/servers.py on free 127.0.0.1 ports, installed by `make servers`. They never
# skip: a server that cannot start fails the test (CI must not go green without the servers), and a
# machine where `make servers` was not run gets a failure that says so.


def _start_server(factory: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Construct and start a server, turning start-up problems into loud test failures."""
    from deploy.servers import ServersNotInstalledError, ServerStartError

    try:
        server = factory(*args, **kwargs)
    except ServersNotInstalledError as err:
        pytest.fail(f"{err}\n(`make test` runs `make servers` for you)", pytrace=False)
    try:
        server.start()
    except ServerStartError as err:
        server.close()
        pytest.fail(f"could not start {server.name}: {err}", pytrace=False)
    return server


@pytest.fixture(scope="session")
def redis_server_factory() -> Iterator[Callable[..., Any]]:
    """Start a fresh `RedisServer(**kwargs)` (e.g. appendonly=True); all are closed at the end."""
    from deploy.servers import RedisServer

    started: list[Any] = []

    def make(**kwargs: Any) -> Any:
        server = _start_server(RedisServer, **kwargs)
        started.append(server)
        return server

    yield make
    for server in reversed(started):
        server.close()


@pytest.fixture(scope="session")
def redis_server(redis_server_factory: Callable[..., Any]) -> Any:
    """A Redis shared by the session (`.url`, `.port`, `.client()`); flush keys you rely on."""
    return redis_server_factory()


@pytest.fixture(scope="session")
def kafka_broker_factory() -> Iterator[Callable[..., Any]]:
    """Start a private `KafkaBroker(**kwargs)`: use it for restart/kill tests; closed at the end."""
    from deploy.servers import KafkaBroker

    started: list[Any] = []

    def make(**kwargs: Any) -> Any:
        broker = _start_server(KafkaBroker, **kwargs)
        started.append(broker)
        return broker

    yield make
    for broker in reversed(started):
        broker.close()


@pytest.fixture(scope="session")
def kafka_broker(kafka_broker_factory: Callable[..., Any]) -> Any:
    """A single-node Kafka shared by the session (`.bootstrap`, `.create_topics`).

    Topics auto-create on first use; use unique topic and group names per test, and do not
    stop or restart this shared broker (take one from `kafka_broker_factory` for that).
    """
    return kafka_broker_factory()


@pytest.fixture(scope="session")
def triton_server_factory() -> Iterator[Callable[..., Any]]:
    """`factory(model_repo, **kwargs) -> TritonServer` started on the repository.

    The same repository and arguments give the same running server within a session (each
    python-backend model costs memory); all servers are closed at the end of the session.
    """
    from deploy.servers import TritonServer

    started: dict[tuple[str, str], Any] = {}

    def make(model_repo: str | Path, **kwargs: Any) -> Any:
        key = (str(Path(model_repo).resolve()), repr(sorted(kwargs.items())))
        server = started.get(key)
        if server is None or not server.running:
            if server is not None:
                server.close()  # a test stopped it: start a fresh one
            server = _start_server(TritonServer, model_repo, **kwargs)
            started[key] = server
        return server

    yield make
    for server in reversed(list(started.values())):
        server.close()


@pytest.fixture(scope="session")
def tls_material(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A throw-away CA with a server and a client certificate (deploy/tls.py), made per session:
    ``.ca`` (``.cert``), ``.server`` and ``.client`` (``.cert``, ``.key``), ``.other_ca`` (a CA
    nobody trusts). Never committed."""
    from types import SimpleNamespace

    from deploy.tls import make_ca

    root = tmp_path_factory.mktemp("tls")
    ca = make_ca(root / "ca")
    return SimpleNamespace(
        ca=ca,
        server=ca.issue("server"),
        client=ca.issue("client"),
        other_ca=make_ca(root / "other", name="adqc-untrusted-ca"),
    )


@pytest.fixture(scope="session")
def jaeger_server() -> Iterator[Any]:
    """Jaeger v2 on free ports (`.otlp_http_endpoint`, `.query_url`, `.trace(trace_id)`)."""
    from deploy.servers import JaegerServer

    server = _start_server(JaegerServer)
    yield server
    server.close()
