"""ingest.kafka_fix: bytes that arrive together with the peer's close reach the protocol, and
the requests they answer finish before the connection is reported lost."""

from __future__ import annotations

import socket
from typing import Any

import kafka
import pytest
from kafka.future import Future
from kafka.net.selector import NetworkSelector
from kafka.net.transport import KafkaTCPTransport

from ingest import kafka_fix


class _Protocol:
    """Records what the transport hands it; resolves ``answer`` with the first bytes."""

    _sensors = None

    def __init__(self, events: list[Any], answer: Future) -> None:
        self.events, self.answer = events, answer

    def data_received(self, data: bytes) -> None:
        self.events.append(("data", data))
        if data and not self.answer.is_done:
            self.answer.success(data)

    def connection_lost(self, error: Exception | None) -> None:
        self.events.append(("lost", type(error).__name__))


def test_an_answer_sent_with_the_close_is_read_before_the_connection_is_lost() -> None:
    assert kafka_fix.install()
    net = NetworkSelector()
    client, broker = socket.socketpair()
    client.setblocking(False)
    broker.sendall(b"login refused")  # a broker's answer and close, both already waiting:
    broker.close()  # what a client busy for longer than the broker's close delay reads
    events: list[Any] = []
    answer = Future()

    async def request() -> None:
        events.append(("answered", await answer))

    transport = KafkaTCPTransport(net, client)
    transport.set_protocol(_Protocol(events, answer))
    transport.resume_reading()
    net.call_soon(request)
    for _ in range(10):  # bounded: without the fix the request is never answered
        net.poll(timeout_ms=20)
    net.close()
    assert events == [
        ("data", b"login refused"),
        ("answered", b"login refused"),
        ("lost", "KafkaConnectionError"),
    ]


def test_install_is_idempotent_and_leaves_other_series_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert kafka_fix.install() and kafka_fix.install()
    assert KafkaTCPTransport._read_from_sock is kafka_fix._read_from_sock
    monkeypatch.setattr(kafka, "__version__", "3.1.0")
    monkeypatch.setattr(KafkaTCPTransport, "_read_from_sock", "the library's own")
    assert kafka_fix.install() is False
    assert KafkaTCPTransport._read_from_sock == "the library's own"
