"""Product records: what onboarding produces and every scorer reads.

A :class:`ProductRecord` holds everything needed to score frames of one product with one model:
the K-shot reference pool per feature level (raw backbone patch features, the residual basis),
the detector as a typed config plus its ``state_dict()`` (PatchCore: the memory bank; PaDiM:
the per-position Gaussians; FeatureNorm: nothing), the calibrated threshold, and the identity of
the model that produced the features (``model_id``). A record is immutable (frozen model,
read-only arrays) and versioned: the store stamps ``version`` when it publishes it; an
unpublished record carries ``version=0``.

Arrays never travel as JSON: :func:`encode_record` splits a record into a small JSON metadata
document and one ``.npy`` byte string per array (dtype and shape in the npy header), and
:func:`decode_record` reverses it. Both are what every store backend persists. The metadata
carries the layout's ``format``: format 2 (this one) is written; format 1 (``detector`` name,
``detector_options`` and a ``memory`` array) is converted on read; anything else is refused with
the command that re-onboards the product.
"""

from __future__ import annotations

import io
import json
import re
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pretrain.detectors import AnyDetectorConfig, detector_config, make_detector

#: Version of the stored metadata layout; bump on incompatible changes.
RECORD_FORMAT = 2
#: Older layouts this adqc still reads (converted to the current one on read).
READABLE_FORMATS = (1, RECORD_FORMAT)
#: Blob-name prefix of the detector's state-dict entries.
STATE_PREFIX = "detector."

#: Product names become Redis keys and directory names: keep them to a safe alphabet.
PRODUCT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

DetectorName = Literal["s8-patchcore", "ensemble", "featurenorm", "patchcore", "padim"]


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


def _frozen_state(value: Any) -> dict[str, np.ndarray]:
    """Owned, read-only numpy copies of a state dict (tensors or arrays), floats finite."""
    out = {}
    for key, item in dict(value).items():
        if hasattr(item, "detach"):  # a torch tensor
            item = item.detach().cpu().numpy()
        array = np.array(item, order="C", copy=True)
        if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
            raise ValueError(f"detector state {key!r} must be numeric, got {array.dtype}")
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            raise ValueError(f"detector state {key!r} contains NaN or infinite values")
        array.flags.writeable = False
        out[str(key)] = array
    return out


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


class Provenance(BaseModel):
    """How a version came to be: onboarded, recalibrated, or a threshold override; who/why."""

    model_config = ConfigDict(frozen=True)

    action: Literal["onboard", "recalibrate", "threshold-override"] = "onboard"
    #: the version this one was derived from (recalibrate, threshold override)
    from_version: int | None = None
    by: str = ""
    reason: str = ""
    #: the threshold before an override
    previous_threshold: float | None = None


class ProductRecord(BaseModel):
    """One published (or about-to-be published) version of a product's references."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True, extra="forbid")

    product: str
    version: int = Field(default=0, ge=0)
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    model_id: str
    backbone: str
    image_size: int = Field(gt=0)
    shots: int = Field(ge=1)
    pool: list[np.ndarray]
    #: the detector's settings as resolved by its fit (``pretrain.detectors``)
    detector_config: AnyDetectorConfig
    #: the fitted detector's ``state_dict()`` as read-only arrays (empty for FeatureNorm), so
    #: that ``load_detector(detector_config, detector_state)`` rebuilds it exactly
    detector_state: dict[str, np.ndarray] = Field(default_factory=dict)
    calibration: Calibration
    provenance: Provenance = Field(default_factory=Provenance)

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

    @field_validator("detector_state", mode="before")
    @classmethod
    def _state(cls, value: Any) -> dict[str, np.ndarray]:
        return _frozen_state(value)

    @model_validator(mode="after")
    def _consistent(self) -> ProductRecord:
        if self.model_id.partition(":")[0] != self.backbone:
            raise ValueError(
                f"model_id {self.model_id!r} does not belong to backbone {self.backbone!r}"
            )
        expected = set(make_detector(self.detector_config).state_dict())
        missing = sorted(expected - set(self.detector_state))
        unexpected = sorted(set(self.detector_state) - expected)
        if missing or unexpected:
            raise ValueError(
                f"a {self.detector} record's detector state must hold {sorted(expected)}: "
                f"missing {missing}, unexpected {unexpected}"
            )
        return self

    @property
    def detector(self) -> str:
        """The detector's name: its method ('featurenorm', 'patchcore', 'padim'), or for an
        ensemble its preset ('s8-patchcore', 'ensemble')."""
        return getattr(self.detector_config, "preset", None) or self.detector_config.method

    @property
    def nbytes(self) -> int:
        """Bytes of array payload (what dominates the stored size)."""
        arrays = [*self.pool, *self.detector_state.values()]
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
            "detector_config": self.detector_config.model_dump(mode="json"),
            "detector_state": {k: list(a.shape) for k, a in self.detector_state.items()},
            "bytes": self.nbytes,
            "calibration": self.calibration.model_dump(),
            "provenance": self.provenance.model_dump(),
        }


# --------------------------------------------------------------------------- binary encoding


def array_to_bytes(array: np.ndarray) -> bytes:
    """``np.save`` bytes (npy header carries dtype and shape); never pickled."""
    buffer = io.BytesIO()
    # np.asarray keeps 0-d arrays 0-d (np.ascontiguousarray would make them 1-d)
    np.save(buffer, np.asarray(array, order="C"), allow_pickle=False)
    return buffer.getvalue()


def array_from_bytes(blob: bytes, what: str) -> np.ndarray:
    """Inverse of :func:`array_to_bytes`; refuses pickled payloads."""
    try:
        return np.load(io.BytesIO(blob), allow_pickle=False)
    except Exception as exc:  # numpy raises ValueError/OSError/EOFError variants
        message = f"stored array {what!r} is not a valid .npy payload: {exc}"
        raise RecordFormatError(message) from exc


def encode_record(record: ProductRecord) -> tuple[bytes, dict[str, bytes]]:
    """Split a record into JSON metadata (no arrays, no version) and named ``.npy`` blobs
    (``pool.<level>`` and ``detector.<state key>``).

    The version is not part of the metadata: stores keep it in the key or path the blobs live
    under, so the same bytes can be written before the version pointer is flipped.
    """
    arrays = {f"pool.{i}": array_to_bytes(a) for i, a in enumerate(record.pool)}
    for key, value in record.detector_state.items():
        arrays[STATE_PREFIX + key] = array_to_bytes(value)
    exclude = {"pool", "detector_state", "version"}
    if record.provenance == Provenance():
        # a plain onboarding stores no provenance: readers older than the product lifecycle
        # commands (extra fields forbidden) still read it during a rolling upgrade
        exclude.add("provenance")
    meta = record.model_dump(mode="json", exclude=exclude)
    meta["format"] = RECORD_FORMAT
    meta["levels"] = len(record.pool)
    meta["arrays"] = sorted(arrays)
    return json.dumps(meta, sort_keys=True).encode(), arrays


def _reonboard(meta: dict[str, Any]) -> str:
    product = meta.get("product") or "PRODUCT"
    return (
        f"re-onboard it with `adqc product add {product} --images GOOD_IMAGES --shots K "
        "[--detector NAME]` (the same images and options as before)"
    )


def _upgrade_v1(meta: dict[str, Any], arrays: dict[str, bytes]) -> dict[str, bytes]:
    """Convert format-1 metadata in place (``detector`` name + ``detector_options`` + a
    ``memory`` array) to format 2; returns the arrays under their format-2 names."""
    name = meta.pop("detector", None)
    options = meta.pop("detector_options", None) or {}
    names = set(meta.get("arrays", []))
    try:
        if name == "featurenorm":
            config = detector_config("featurenorm")
            state: dict[str, bytes] = {}
        elif name == "patchcore" and "memory" in names:
            config = detector_config("patchcore", **options)
            memory = array_from_bytes(arrays["memory"], "memory")
            rows = np.array(memory.shape[0] if memory.ndim == 2 else 0, dtype=np.int64)
            state = {"memory": arrays["memory"], "n_patches_seen": array_to_bytes(rows)}
        else:
            raise ValueError(f"detector {name!r} with arrays {sorted(names)}")
    except (ValueError, TypeError, KeyError) as exc:
        if isinstance(exc, RecordFormatError):
            raise
        raise RecordFormatError(
            f"record of {meta.get('product')!r} is in the old format 1 and cannot be converted "
            f"({exc}); {_reonboard(meta)}"
        ) from exc
    meta["detector_config"] = config.model_dump(mode="json")
    out = {k: v for k, v in arrays.items() if k.startswith("pool.")}
    out.update({STATE_PREFIX + k: v for k, v in state.items()})
    meta["arrays"] = sorted(n for n in names if n.startswith("pool.")) + sorted(
        STATE_PREFIX + k for k in state
    )
    return out


def decode_record(meta_bytes: bytes, arrays: dict[str, bytes], version: int) -> ProductRecord:
    """Rebuild a record from :func:`encode_record` output (or a format-1 record, converted);
    raises :class:`RecordFormatError` saying what is wrong and, for a layout this adqc cannot
    read, how to re-onboard the product."""
    try:
        meta = json.loads(meta_bytes)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RecordFormatError(f"record metadata is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") not in READABLE_FORMATS:
        found = meta.get("format") if isinstance(meta, dict) else None
        product = meta if isinstance(meta, dict) else {}
        raise RecordFormatError(
            f"record format {found!r} is not supported (this adqc reads formats "
            f"{', '.join(map(str, READABLE_FORMATS))}); {_reonboard(product)}"
        )
    missing = sorted(set(meta.get("arrays", [])) - set(arrays))
    if missing:
        raise RecordFormatError(f"record of {meta.get('product')!r} lacks arrays {missing}")
    if meta["format"] == 1:
        arrays = _upgrade_v1(meta, arrays)
    names = meta.pop("arrays", [])
    levels = meta.pop("levels", 0)
    meta.pop("format")
    state = {
        name[len(STATE_PREFIX) :]: array_from_bytes(arrays[name], name)
        for name in names
        if name.startswith(STATE_PREFIX)
    }
    try:
        return ProductRecord(
            **meta,
            version=version,
            pool=[array_from_bytes(arrays[f"pool.{i}"], f"pool.{i}") for i in range(levels)],
            detector_state=state,
        )
    except (ValueError, TypeError, KeyError) as exc:
        if isinstance(exc, RecordFormatError):
            raise
        raise RecordFormatError(f"stored record does not validate: {exc}") from exc
