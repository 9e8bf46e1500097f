"""ProductRecord validation, immutability and the binary encoding."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from pydantic import ValidationError

from inference.records import (
    ModelMismatchError,
    ProductRecord,
    RecordFormatError,
    array_from_bytes,
    decode_record,
    encode_record,
)


def test_roundtrip_keeps_every_field_and_array(record_factory):
    record = record_factory(detector="patchcore")
    meta, arrays = encode_record(record)
    back = decode_record(meta, arrays, version=7)
    assert back.version == 7
    assert back.model_dump(exclude={"pool", "memory", "version"}) == record.model_dump(
        exclude={"pool", "memory", "version"}
    )
    for a, b in zip(record.pool, back.pool, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(record.memory, back.memory)


def test_arrays_travel_as_npy_bytes_never_json(record_factory):
    record = record_factory()
    meta, arrays = encode_record(record)
    assert sorted(arrays) == ["pool.0", "pool.1"]
    assert all(blob.startswith(b"\x93NUMPY") for blob in arrays.values())
    document = json.loads(meta)
    assert "pool" not in document and "memory" not in document and "version" not in document
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
        ({"detector": "patchcore"}, "memory bank"),
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
    with pytest.raises(RecordFormatError, match="format"):
        decode_record(json.dumps({**json.loads(meta), "format": 99}).encode(), arrays, 1)
    with pytest.raises(RecordFormatError, match="lacks arrays"):
        decode_record(meta, {"pool.0": arrays["pool.0"]}, 1)
