"""ProductRecord validation, immutability and the binary encoding."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from inference.records import (
    RECORD_FORMAT,
    ModelMismatchError,
    ProductRecord,
    RecordFormatError,
    array_from_bytes,
    array_to_bytes,
    decode_record,
    encode_record,
)
from inference.scorer import detector_for
from inference.store import open_store
from pretrain.detectors import PaDiMConfig, PatchCore, make_detector


def test_roundtrip_keeps_every_field_and_array(record_factory):
    record = record_factory(detector="patchcore")
    meta, arrays = encode_record(record)
    back = decode_record(meta, arrays, version=7)
    assert back.version == 7
    exclude = {"pool", "detector_state", "version"}
    assert back.model_dump(exclude=exclude) == record.model_dump(exclude=exclude)
    for a, b in zip(record.pool, back.pool, strict=True):
        np.testing.assert_array_equal(a, b)
    assert sorted(back.detector_state) == sorted(record.detector_state)
    for key, value in record.detector_state.items():
        np.testing.assert_array_equal(value, back.detector_state[key])
        assert back.detector_state[key].dtype == value.dtype
        assert back.detector_state[key].shape == value.shape


def test_arrays_travel_as_npy_bytes_never_json(record_factory):
    record = record_factory()
    meta, arrays = encode_record(record)
    assert sorted(arrays) == ["pool.0", "pool.1"]
    assert all(blob.startswith(b"\x93NUMPY") for blob in arrays.values())
    document = json.loads(meta)
    assert document["format"] == RECORD_FORMAT == 2
    assert document["detector_config"] == {"method": "featurenorm"}
    assert "pool" not in document and "detector_state" not in document
    assert "version" not in document
    assert len(meta) < 2048  # metadata only; the payload is in the blobs


def test_record_is_immutable_and_owns_its_arrays(record_factory):
    source = np.ones((4, 3), dtype=np.float64)
    record = record_factory().model_copy(update={})
    record = ProductRecord(**{**record.__dict__, "pool": [source]})
    source[:] = 5.0  # the caller's array changes, the record's does not
    assert record.pool[0].dtype == np.float32 and float(record.pool[0].max()) == 1.0
    with pytest.raises(ValueError):
        record.pool[0][0, 0] = 2.0
    with pytest.raises(ValidationError):
        record.version = 3


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"product": "bad name/../x"}, "invalid product name"),
        ({"detector_config": {"method": "patchcore"}}, "missing \\['memory', 'n_patches_seen'\\]"),
        ({"detector_state": {"memory": np.zeros((2, 2))}}, "unexpected \\['memory'\\]"),
        ({"detector_config": {"method": "knn"}}, "does not match any of the expected tags"),
        ({"detector_state": {"memory": np.full(2, np.inf)}}, "NaN or infinite"),
        ({"memory": np.zeros((2, 2))}, "Extra inputs are not permitted"),
        ({"model_id": "efficientnet_lite0:abc"}, "does not belong to backbone"),
        ({"model_id": "nocolon"}, "model_id must look like"),
        ({"pool": [np.full((2, 2), np.nan)]}, "NaN"),
        ({"pool": [np.zeros((2, 2, 2))]}, "dimensions"),
        ({"pool": []}, "at least one"),
        ({"image_size": 0}, "greater than 0"),
    ],
)
def test_invalid_records_are_refused_with_a_reason(record_factory, change, message):
    fields = {**record_factory().__dict__, **change}
    with pytest.raises(ValidationError, match=message):
        ProductRecord(**fields)


def test_model_mismatch_names_both_models(record_factory):
    record = record_factory(model_id="mobilenet_v2:aaaaaaaaaaaa")
    record.check_model("mobilenet_v2:aaaaaaaaaaaa")
    with pytest.raises(ModelMismatchError) as info:
        record.check_model("mobilenet_v2:bbbbbbbbbbbb")
    assert "mobilenet_v2:aaaaaaaaaaaa" in str(info.value)
    assert "mobilenet_v2:bbbbbbbbbbbb" in str(info.value)


def test_pickled_or_corrupt_payloads_are_refused(record_factory):
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(RecordFormatError, match="not a valid .npy"):
        array_from_bytes(buffer.getvalue(), "pool.0")
    meta, arrays = encode_record(record_factory())
    with pytest.raises(RecordFormatError, match="not valid JSON"):
        decode_record(b"{not json", arrays, 1)
    with pytest.raises(RecordFormatError, match="format 99 is not supported.*adqc product add"):
        decode_record(json.dumps({**json.loads(meta), "format": 99}).encode(), arrays, 1)
    with pytest.raises(RecordFormatError, match="lacks arrays"):
        decode_record(meta, {"pool.0": arrays["pool.0"]}, 1)


# ------------------------------------------------------------ detectors in records, old format


def _levels(n, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, c, s, s, generator=g) for c, s in ((8, 8), (16, 4), (12, 4))]


@pytest.mark.parametrize("method", ["featurenorm", "patchcore", "padim"])
def test_record_rebuilds_the_fitted_detector_exactly(record_factory, method):
    fitted = make_detector(method, **({"n_channels": 10} if method == "padim" else {}))
    fitted.fit(_levels(3, seed=0))
    record = record_factory().model_copy(update={})
    record = ProductRecord(
        **{
            **record.__dict__,
            "detector_config": fitted.config,
            "detector_state": fitted.state_dict(),
        }
    )
    meta, arrays = encode_record(record)
    back = decode_record(meta, arrays, version=1)
    assert back.detector == method and back.detector_config == fitted.config
    test = _levels(2, seed=1)
    assert torch.equal(detector_for(back).anomaly_maps(test, 32), fitted.anomaly_maps(test, 32))
    assert back.summary()["detector_config"]["method"] == method


def _format_1(record: ProductRecord, detector: PatchCore | None) -> tuple[bytes, dict]:
    """The bytes adqc wrote before record format 2: the detector as a name, its scalar
    settings as ``detector_options`` and the PatchCore bank as a ``memory`` array."""
    arrays = {f"pool.{i}": array_to_bytes(a) for i, a in enumerate(record.pool)}
    meta = record.model_dump(mode="json", exclude={"pool", "detector_state", "version"})
    del meta["detector_config"]
    meta.update(detector="featurenorm", detector_options={})
    if detector is not None:
        arrays["memory"] = array_to_bytes(detector.memory.numpy())
        options = detector.config.model_dump(exclude={"method"})
        meta.update(detector="patchcore", detector_options=options)
    meta.update(format=1, levels=len(record.pool), arrays=sorted(arrays))
    return json.dumps(meta, sort_keys=True).encode(), arrays


def test_format_1_records_in_a_store_are_converted_and_score_as_before(record_factory, tmp_path):
    old_bank = PatchCore()
    old_bank.fit(_levels(3, seed=0))
    store = open_store(f"file://{tmp_path / 'store'}")
    base = record_factory(product="legacy-pc")
    store._write("legacy-pc", *_format_1(base, old_bank))
    store._write("legacy-fn", *_format_1(record_factory(product="legacy-fn"), None))
    patchcore = open_store(f"file://{tmp_path / 'store'}").get("legacy-pc")
    assert patchcore.version == 1 and patchcore.detector == "patchcore"
    assert patchcore.detector_config == old_bank.config
    seen = patchcore.detector_state["n_patches_seen"]
    assert seen.shape == () and int(seen) == old_bank.memory.shape[0]
    test = _levels(2, seed=1)
    assert torch.equal(
        detector_for(patchcore).anomaly_maps(test, 32), old_bank.anomaly_maps(test, 32)
    )
    for a, b in zip(patchcore.pool, base.pool, strict=True):
        np.testing.assert_array_equal(a, b)
    featurenorm = store.get("legacy-fn")
    assert featurenorm.detector == "featurenorm" and featurenorm.detector_state == {}
    # published again, it is written in the current format
    meta, arrays = encode_record(patchcore)
    assert json.loads(meta)["format"] == 2 and "memory" not in arrays


def test_unconvertible_old_records_are_refused_with_how_to_reonboard(record_factory, tmp_path):
    meta, arrays = _format_1(record_factory(product="legacy"), None)
    document = json.loads(meta)
    document["detector"] = "patchcore"  # a patchcore record whose bank is gone
    with pytest.raises(RecordFormatError, match="old format 1 .*adqc product add legacy"):
        decode_record(json.dumps(document).encode(), arrays, 1)
    document["format"] = 0
    store = open_store(f"file://{tmp_path / 'store'}")
    store._write("legacy", json.dumps(document).encode(), arrays)
    with pytest.raises(RecordFormatError) as info:
        store.get("legacy")
    message = str(info.value)
    assert "format 0 is not supported" in message and "reads formats 1, 2" in message
    assert "`adqc product add legacy --images GOOD_IMAGES --shots K" in message


def test_padim_config_is_typed_in_the_record(record_factory):
    fitted = make_detector(PaDiMConfig(n_channels=6, eps=0.5))
    fitted.fit(_levels(2, seed=0))
    fields = {
        **record_factory().__dict__,
        "detector_config": fitted.config.model_dump(),
        "detector_state": fitted.state_dict(),
    }
    record = ProductRecord(**fields)
    assert isinstance(record.detector_config, PaDiMConfig) and record.detector_config.eps == 0.5
    assert all(not a.flags.writeable for a in record.detector_state.values())
