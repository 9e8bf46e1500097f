"""Product records: what onboarding produces and every scorer reads.

A :class:`ProductRecord` holds everything needed to score frames of one product with one model:
the K-shot reference pool per feature level (raw backbone patch features, the residual basis),
the detector's normal memory (PatchCore bank; ``None`` for FeatureNorm), the calibrated threshold,
and the identity of the model that produced the features (``model_id``). A record is immutable
(frozen model, read-only arrays) and versioned: the store stamps ``version`` when it publishes it;
an unpublished record carries ``version=0``.

Arrays never travel as JSON: :func:`encode_record` splits a record into a small JSON metadata
document and one ``.npy`` byte string per array (dtype and shape in the npy header), and
:func:`decode_record` reverses it. Both are what every store backend persists.
"""

from __future__ import annotations

import io
import json
import re
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: Version of the stored metadata layout; bump on incompatible changes.
RECORD_FORMAT = 1

#: Product names become Redis keys and directory names: keep them to a safe alphabet.
PRODUCT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

Detector = Literal["featurenorm", "patchcore"]


class ModelMismatchError(ValueError):
    """A record built with one model was about to be used with another."""

    def __init__(self, product: str, record_model_id: str, expected_model_id: str) -> None:
        self.product = product
        self.record_model_id = record_model_id
        self.expected_model_id = expected_model_id
        super().__init__(
            f"product {product!r} was onboarded with model {record_model_id!r}, but this scorer "
            f"runs model {expected_model_id!r}; its references are features of the other model. "
            f"Re-onboard it with `adqc product add {product} ...` for this model."
        )


class RecordFormatError(ValueError):
    """Stored bytes that do not decode into a valid record."""


def check_product_name(name: str) -> str:
    """Return ``name`` if it is a valid product name, else raise ``ValueError`` saying why."""
    if not isinstance(name, str) or not PRODUCT_NAME.match(name):
        raise ValueError(
            f"invalid product name {name!r}: use 1-128 characters from letters, digits, '.', '_' "
            "and '-', starting with a letter or digit"
        )
    return name


def _frozen_array(value: Any, *, ndim: int, what: str) -> np.ndarray:
    array = np.asarray(value)
    if array.ndim != ndim:
        raise ValueError(f"{what} must have {ndim} dimensions, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{what} must be floating point, got {array.dtype}")
    if array.size == 0:
        raise ValueError(f"{what} is empty (shape {array.shape})")
    # an owned, read-only copy: the caller's array can change, the record's cannot
    array = np.array(array, dtype=np.float32, order="C", copy=True)
    if not np.isfinite(array).all():
        raise ValueError(f"{what} contains NaN or infinite values")
    array.flags.writeable = False
    return array


class Calibration(BaseModel):
    """A product's decision threshold and the normal-score statistics it came from."""

    model_config = ConfigDict(frozen=True)

    threshold: float
    target_far: float = Field(gt=0.0, lt=1.0)
    method: Literal["leave-one-out", "held-out"]
    n_normals: int = Field(ge=1)
    normal_scores: list[float]
    score_mean: float
    score_std: float = Field(ge=0.0)
    #: which branch of the threshold rule produced ``threshold`` (see inference/calibration.py)
    rule: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> Calibration:
        if len(self.normal_scores) != self.n_normals:
            raise ValueError(
                f"n_normals={self.n_normals} but {len(self.normal_scores)} normal scores given"
            )
        values = [self.threshold, self.score_mean, self.score_std, *self.normal_scores]
        if not all(np.isfinite(values)):
            raise ValueError("calibration contains NaN or infinite values")
        return self


class ProductRecord(BaseModel):
    """One published (or about-to-be published) version of a product's references."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    product: str
    version: int = Field(default=0, ge=0)
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    model_id: str
    backbone: str
    image_size: int = Field(gt=0)
    shots: int = Field(ge=1)
    detector: Detector
    pool: list[np.ndarray]
    memory: np.ndarray | None = None
    #: the detector's scalar settings (PatchCore: n_levels, neighbourhood, embed_dim, ...), so
    #: that ``Detector.from_state({**detector_options, "memory": memory})`` rebuilds it exactly
    detector_options: dict[str, int | float | str | None] = Field(default_factory=dict)
    calibration: Calibration

    @field_validator("product")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_product_name(value)

    @field_validator("model_id")
    @classmethod
    def _model_id(cls, value: str) -> str:
        backbone, _, digest = value.partition(":")
        if not backbone or not digest:
            raise ValueError(f"model_id must look like '<backbone>:<hash>', got {value!r}")
        return value

    @field_validator("pool", mode="before")
    @classmethod
    def _pool(cls, value: Any) -> list[np.ndarray]:
        levels = list(value)
        if not levels:
            raise ValueError("pool needs at least one feature level")
        return [_frozen_array(a, ndim=2, what=f"pool level {i}") for i, a in enumerate(levels)]

    @field_validator("memory", mode="before")
    @classmethod
    def _memory(cls, value: Any) -> np.ndarray | None:
        return None if value is None else _frozen_array(value, ndim=2, what="detector memory")

    @model_validator(mode="after")
    def _consistent(self) -> ProductRecord:
        if self.model_id.partition(":")[0] != self.backbone:
            raise ValueError(
                f"model_id {self.model_id!r} does not belong to backbone {self.backbone!r}"
            )
        if self.detector == "patchcore" and self.memory is None:
            raise ValueError("a patchcore record needs its memory bank")
        if self.detector == "featurenorm" and self.memory is not None:
            raise ValueError("a featurenorm record has no detector memory")
        return self

    @property
    def nbytes(self) -> int:
        """Bytes of array payload (what dominates the stored size)."""
        arrays = [*self.pool, *([] if self.memory is None else [self.memory])]
        return int(sum(a.nbytes for a in arrays))

    @property
    def cache_key(self) -> tuple[str, int, str]:
        """(product, version, created_at): what caches of derived data (pools, detectors) key
        on. created_at tells apart equal (product, version) pairs of two different stores."""
        return (self.product, self.version, self.created_at.isoformat())

    def check_model(self, model_id: str) -> None:
        """Raise :class:`ModelMismatchError` unless this record was built with ``model_id``."""
        if self.model_id != model_id:
            raise ModelMismatchError(self.product, self.model_id, model_id)

    def summary(self) -> dict[str, Any]:
        """JSON-friendly description (no arrays) for `adqc product show` and logs."""
        return {
            "product": self.product,
            "version": self.version,
            "created_at": self.created_at.isoformat(),
            "model_id": self.model_id,
            "backbone": self.backbone,
            "image_size": self.image_size,
            "shots": self.shots,
            "detector": self.detector,
            "pool": [list(a.shape) for a in self.pool],
            "memory": None if self.memory is None else list(self.memory.shape),
            "detector_options": dict(self.detector_options),
            "bytes": self.nbytes,
            "calibration": self.calibration.model_dump(),
        }


# --------------------------------------------------------------------------- binary encoding


def array_to_bytes(array: np.ndarray) -> bytes:
    """``np.save`` bytes (npy header carries dtype and shape); never pickled."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def array_from_bytes(blob: bytes, what: str) -> np.ndarray:
    """Inverse of :func:`array_to_bytes`; refuses pickled payloads."""
    try:
        return np.load(io.BytesIO(blob), allow_pickle=False)
    except Exception as exc:  # numpy raises ValueError/OSError/EOFError variants
        message = f"stored array {what!r} is not a valid .npy payload: {exc}"
        raise RecordFormatError(message) from exc


def encode_record(record: ProductRecord) -> tuple[bytes, dict[str, bytes]]:
    """Split a record into JSON metadata (no arrays, no version) and named ``.npy`` blobs.

    The version is not part of the metadata: stores keep it in the key or path the blobs live
    under, so the same bytes can be written before the version pointer is flipped.
    """
    arrays = {f"pool.{i}": array_to_bytes(a) for i, a in enumerate(record.pool)}
    if record.memory is not None:
        arrays["memory"] = array_to_bytes(record.memory)
    meta = record.model_dump(mode="json", exclude={"pool", "memory", "version"})
    meta["format"] = RECORD_FORMAT
    meta["levels"] = len(record.pool)
    meta["arrays"] = sorted(arrays)
    return json.dumps(meta, sort_keys=True).encode(), arrays


def decode_record(meta_bytes: bytes, arrays: dict[str, bytes], version: int) -> ProductRecord:
    """Rebuild a record from :func:`encode_record` output; raises :class:`RecordFormatError`."""
    try:
        meta = json.loads(meta_bytes)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RecordFormatError(f"record metadata is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != RECORD_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise RecordFormatError(
            f"record format {found!r} is not supported (this adqc reads format {RECORD_FORMAT})"
        )
    names = meta.pop("arrays", [])
    levels = meta.pop("levels", 0)
    meta.pop("format")
    missing = sorted(set(names) - set(arrays))
    if missing:
        raise RecordFormatError(f"record of {meta.get('product')!r} lacks arrays {missing}")
    try:
        return ProductRecord(
            **meta,
            version=version,
            pool=[array_from_bytes(arrays[f"pool.{i}"], f"pool.{i}") for i in range(levels)],
            memory=array_from_bytes(arrays["memory"], "memory") if "memory" in names else None,
        )
    except (ValueError, TypeError, KeyError) as exc:
        if isinstance(exc, RecordFormatError):
            raise
        raise RecordFormatError(f"stored record does not validate: {exc}") from exc
