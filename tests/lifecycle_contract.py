"""Product lifecycle on every store backend: pin/unpin/rollback pointer, per-version removal,
threshold overrides and recalibration as new versions, history. Star-imported by
tests/unit/inference/test_lifecycle.py (memory and file) and
tests/integration/inference/test_lifecycle_redis.py (Redis and Redis+durable), whose
``store_url`` fixtures pick the backends."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from inference.lifecycle import history, override_threshold, recalibrate
from inference.scorer import Scorer
from inference.store import ProductNotFoundError, open_store


def test_pin_is_served_survives_publishes_and_is_never_pruned(store_url, record_factory):
    with open_store(f"{store_url}{'&' if '?' in store_url else '?'}keep=2") as store:
        for seed in range(2):
            store.publish(record_factory(seed=seed))
        store.pin("widget", 1)
        assert store.get("widget").version == 1
        assert store.serving_version("widget") == 1 and store.latest_version("widget") == 2
        for seed in range(2, 5):  # v3..v5: keep=2 prunes old versions, never the pinned v1
            store.publish(record_factory(seed=seed))
        assert store.get("widget").version == 1
        assert store.versions("widget") == [1, 4, 5]
        store.unpin("widget")
        assert store.get("widget").version == 5 and store.pinned_version("widget") is None


def test_another_reader_sees_the_pin_at_its_next_read(store_url, record_factory):
    with open_store(store_url) as writer, open_store(store_url) as reader:
        writer.publish(record_factory(seed=0))
        writer.publish(record_factory(seed=1))
        assert reader.get("widget").version == 2
        writer.pin("widget", 1)
        assert reader.get("widget").version == 1  # the scorer's per-batch read
        writer.unpin("widget")
        assert reader.get("widget").version == 2


def test_pin_refuses_unknown_products_and_versions(store, record_factory):
    with pytest.raises(ProductNotFoundError, match="unknown product 'widget'"):
        store.pin("widget", 1)
    store.publish(record_factory())
    with pytest.raises(ProductNotFoundError, match=r"no version 7 .*kept versions: \[1\]"):
        store.pin("widget", 7)


def test_remove_one_version_but_never_the_served_one(store, record_factory):
    for seed in range(3):
        store.publish(record_factory(seed=seed))
    with pytest.raises(ValueError, match="v3 is the version 'widget' serves"):
        store.remove_version("widget", 3)
    store.remove_version("widget", 2)
    assert store.versions("widget") == [1, 3]
    with pytest.raises(ProductNotFoundError):
        store.get("widget", 2)
    with pytest.raises(ProductNotFoundError, match="no version 2"):
        store.remove_version("widget", 2)
    store.pin("widget", 1)
    store.remove("widget")  # everything, the pin too
    assert store.list_products() == [] and store.pinned_version("widget") is None


def test_threshold_override_is_a_new_version_with_who_and_why(store, record_factory):
    store.publish(record_factory())
    before = store.get("widget")
    record = override_threshold(store, "widget", 2.5, "too many false alarms", by="ana")
    assert record.version == 2 and store.get("widget").calibration.threshold == 2.5
    p = store.get("widget").provenance
    assert (p.action, p.by, p.reason, p.from_version) == (
        "threshold-override",
        "ana",
        "too many false alarms",
        1,
    )
    assert p.previous_threshold == before.calibration.threshold
    assert store.get("widget").summary()["provenance"]["reason"] == "too many false alarms"
    np.testing.assert_array_equal(store.get("widget").pool[0], before.pool[0])
    with pytest.raises(ValueError, match="--reason is required"):
        override_threshold(store, "widget", 3.0, "  ")
    rows = history(store, "widget")
    assert [(r["version"], r["action"], r["marks"]) for r in rows] == [
        (1, "onboard", []),
        (2, "threshold-override", ["serving", "latest"]),
    ]


def test_recalibrate_keeps_pool_and_detector_and_sets_a_held_out_threshold(
    store, record_factory, brightness_engine, tmp_path
):
    store.publish(record_factory(detector="patchcore"))
    paths = []
    for i, level in enumerate((80, 90, 100, 110)):
        path = tmp_path / f"good_{i}.png"
        Image.fromarray(np.full((64, 64, 3), level, np.uint8)).save(path)
        paths.append(path)
    base = store.get("widget")
    record = recalibrate(brightness_engine, store, "widget", paths, reason="new lighting")
    assert record.version == 2 and record.provenance.action == "recalibrate"
    assert record.calibration.method == "held-out" and record.calibration.n_normals == 4
    for a, b in zip(record.pool, base.pool, strict=True):
        np.testing.assert_array_equal(a, b)
    for key, value in base.detector_state.items():
        np.testing.assert_array_equal(record.detector_state[key], value)
    # the stored normal scores are what serving computes for the same images
    images = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    served = Scorer(brightness_engine, store).score(images, "widget")
    np.testing.assert_allclose(
        record.calibration.normal_scores, [r.score for r in served], rtol=1e-5
    )
    assert all(r.threshold == record.calibration.threshold for r in served)


def test_the_scorer_serves_the_pinned_version(store, record_factory, brightness_engine):
    for seed in range(2):
        store.publish(record_factory(seed=seed))
    scorer = Scorer(brightness_engine, store)
    image = np.full((64, 64, 3), 100, np.uint8)
    assert scorer.score([image], "widget")[0].reference_version == 2
    store.pin("widget", 1)
    assert scorer.score([image], "widget")[0].reference_version == 1  # its next batch
    override_threshold(store, "widget", 9.0, "test")  # v3 published while pinned: not served
    result = scorer.score([image], "widget")[0]
    assert result.reference_version == 1 and result.threshold != 9.0
    store.unpin("widget")
    result = scorer.score([image], "widget")[0]
    assert result.reference_version == 3 and result.threshold == 9.0


def test_plain_onboarding_records_store_no_provenance(record_factory):
    """Readers older than the lifecycle commands forbid unknown fields: an onboarded record's
    metadata stays as it was; only derived versions carry provenance."""
    import json

    from inference.records import Provenance, decode_record, encode_record

    meta, arrays = encode_record(record_factory())
    assert "provenance" not in json.loads(meta)
    derived = record_factory().model_copy(update={"provenance": Provenance(action="recalibrate")})
    meta, arrays = encode_record(derived)
    assert json.loads(meta)["provenance"]["action"] == "recalibrate"
    assert decode_record(meta, arrays, 2).provenance.action == "recalibrate"
