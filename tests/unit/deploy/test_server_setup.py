"""deploy/servers.py without starting a server: the missing-install message and Kafka
cluster ids (the real servers are run in tests/integration/deploy/test_servers.py)."""

from __future__ import annotations

import uuid

import pytest

from deploy.servers import (
    KafkaBroker,
    ServersNotInstalledError,
    TritonServer,
)


def test_missing_install_says_run_make_servers(tmp_path, monkeypatch):
    monkeypatch.setenv("ADQC_CACHE_DIR", str(tmp_path / "empty-cache"))
    with pytest.raises(ServersNotInstalledError, match="make servers"):
        KafkaBroker()
    with pytest.raises(ServersNotInstalledError, match="make servers"):
        TritonServer(tmp_path)


def test_kafka_cluster_ids_never_start_with_a_dash(monkeypatch) -> None:
    """The storage tool reads an id starting with "-" as an option; such ids are redrawn."""

    from deploy import servers

    dash_first = uuid.UUID(bytes=bytes([0xF8]) + bytes(15))  # base64 "-A..."
    draws = iter([dash_first, uuid.UUID(int=1)])
    monkeypatch.setattr(servers.uuid, "uuid4", lambda: next(draws))
    assert servers._kafka_cluster_id() == "AAAAAAAAAAAAAAAAAAAAAQ"


def test_free_port_never_hands_out_the_same_port_twice(monkeypatch) -> None:
    """The kernel may offer a just-closed port again; Triton once got it as both its gRPC and
    its metrics port and refused to start."""
    import socket

    from deploy import servers

    offered = iter([41001, 41001, 41001, 41002])

    class OneEphemeralPort:
        def __init__(self, *args) -> None:
            self.port = next(offered)

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            return None

        def bind(self, address) -> None:
            pass

        def getsockname(self):
            return ("127.0.0.1", self.port)

    monkeypatch.setattr(servers, "_HANDED_OUT", servers.collections.deque(maxlen=8))
    monkeypatch.setattr(socket, "socket", OneEphemeralPort)
    assert [servers.free_port(), servers.free_port()] == [41001, 41002]
