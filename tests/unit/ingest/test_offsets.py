"""The offset tracker commits only finished prefixes of each partition."""

from __future__ import annotations

from kafka.structs import TopicPartition

from ingest.consumer import OffsetTracker, commit_map

A = TopicPartition("frames", 0)
B = TopicPartition("frames", 1)


def test_commit_point_is_the_first_unfinished_offset() -> None:
    tracker = OffsetTracker()
    for off in range(10, 15):
        tracker.add(A, off)
    assert tracker.committable() == {A: 10}
    tracker.done(A, 12)
    tracker.done(A, 11)
    assert tracker.committable() == {A: 10}  # 10 is still in flight
    tracker.done(A, 10)
    assert tracker.committable() == {A: 13}
    assert tracker.in_flight() == 2
    tracker.done(A, 14)
    tracker.done(A, 13)
    assert tracker.committable() == {A: 15}
    assert tracker.in_flight() == 0


def test_only_changes_are_reported_and_partitions_are_independent() -> None:
    tracker = OffsetTracker()
    tracker.add(A, 0)
    tracker.add(B, 100)
    tracker.done(B, 100)
    offsets = tracker.committable()
    assert offsets == {A: 0, B: 101}
    tracker.mark_committed(offsets)
    assert tracker.committable() == {}
    tracker.done(A, 0)
    assert tracker.committable() == {A: 1}
    assert commit_map({A: 1})[A].offset == 1


def test_gaps_in_offsets_and_revoked_partitions() -> None:
    tracker = OffsetTracker()
    for off in (5, 7, 9):  # compacted topic / transaction markers: offsets need not be dense
        tracker.add(A, off)
    tracker.done(A, 5)
    tracker.done(A, 7)
    assert tracker.committable() == {A: 9}
    tracker.forget([A])
    tracker.done(A, 9)  # late completion of a revoked partition is ignored
    assert tracker.committable() == {}


def test_serve_consumer_refreshes_metadata_within_seconds(monkeypatch) -> None:
    """The serve consumer loads its topic's metadata before the first poll joins the group (a
    join on bootstrap metadata alone was assigned nothing) and refreshes it every few seconds."""
    import ingest.consumer as consumer_module
    from ingest.settings import load_settings

    made: dict = {}

    class FakeConsumer:
        def __init__(self, **config) -> None:
            made.update(config)

        def subscribe(self, topics, listener=None) -> None:
            made["topics"] = topics

        def partitions_for_topic(self, topic):
            made.setdefault("metadata_loaded_for", []).append(topic)
            return {0}

    monkeypatch.setattr(consumer_module, "KafkaConsumer", FakeConsumer)
    consumer_module.create_consumer(load_settings(None))
    assert made["metadata_max_age_ms"] <= 10_000
    frames = load_settings(None).topics.frames
    assert made["topics"] == [frames] and made["metadata_loaded_for"] == [frames]
