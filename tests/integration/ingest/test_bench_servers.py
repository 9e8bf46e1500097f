"""The server-facing parts of `adqc bench io` and `adqc bench scaling` on real Kafka and Redis,
at sizes that take seconds (the benchmarks themselves are not tests)."""

from __future__ import annotations

import time
import uuid

from kafka import KafkaConsumer

from benchmarks.io_limits import run_io
from benchmarks.scaling import _wait_stable


def test_bench_io_tiny(redis_server, kafka_broker):
    result = run_io(
        redis_server.url, kafka_broker.bootstrap, shots=(1,), repeats=2, messages=20,
        message_bytes=20_000, partitions=2,
    )  # fmt: skip
    (fetch,) = result["redis_reference_fetch"]
    assert fetch["pool_rows"] == [196, 196, 49]
    assert fetch["cold_ms_p50"] > 0 and fetch["warm_ms_p50"] > 0
    kafka = result["kafka_raw"]
    assert kafka["consumed"] == 21  # the warm-up message and the 20 timed ones
    assert kafka["produce_msgs_per_s"] > 0 and kafka["consume_msgs_per_s"] > 0
    assert kafka["message_bytes"] == 20_000


def test_scaling_waits_for_a_stable_group_and_reads_its_assignment(kafka_broker):
    topic, group = f"scale-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    kafka_broker.create_topics([topic], partitions=4)
    # as serve's consumer (ingest/consumer.py): fresh metadata, and the topic's partitions
    # known before the first poll joins the group (a join on bootstrap metadata alone can be
    # assigned nothing on a busy shared broker and never rebalance)
    consumers = [
        KafkaConsumer(topic, bootstrap_servers=kafka_broker.bootstrap, group_id=group,
                      client_id=f"member-{i}", metadata_max_age_ms=2000)
        for i in range(2)
    ]  # fmt: skip
    for c in consumers:
        deadline = time.monotonic() + 30
        while not c.partitions_for_topic(topic) and time.monotonic() < deadline:
            time.sleep(0.2)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(c.assignment() for c in consumers):
            for c in consumers:
                c.poll(timeout_ms=100)
        client = {"bootstrap_servers": kafka_broker.bootstrap}

        def keep_polling() -> None:  # as live serve workers do: a member that stops polling
            for c in consumers:  # during a rebalance is dropped from the group
                c.poll(timeout_ms=100)

        assigned = _wait_stable(client, group, topic, 2, deadline, keep_polling)
    finally:
        for c in consumers:
            c.close()
    assert sorted(p for parts in assigned.values() for p in parts) == [0, 1, 2, 3]
    assert sorted(name.split("/")[0] for name in assigned) == ["member-0", "member-1"]
    assert all(len(parts) == 2 for parts in assigned.values())
