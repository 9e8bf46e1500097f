"""``adqc_features``: the python-backend model of the Triton repository.

Per request: uint8 images [B,S,S,3] (or, in the split layout, already normalised float
[B,3,S,S]), the product name and reference version per image -> backbone -> residual against the
product's reference pool -> projector -> projected features per level [B,C_l,h_l,w_l]. On CPU
the backbone and projector run in ONNX Runtime, as the worker's in-process engine does
(``runtime`` parameter; torch on GPU or when onnxruntime is missing).

The pools come from the reference store (Redis) by (product, version) and are cached in the
model instance in a bounded LRU (entries and bytes). Versions are immutable and never reused
(inference.store), so a cached version never goes stale.

Errors are per request: an unknown product/version, a record built with another model or an
invalid input fails that request only (one response per request, in order); the other requests
of the same batch are served. Error messages start with the exception's class name
(``ProductNotFoundError: ...``) so :class:`inference.engines.triton.TritonEngine` can raise the
same exception type the in-process engine would.

The code that does the work, :class:`FeaturesService`, has no Triton dependency (unit-tested in
process); :class:`TritonPythonModel` adapts it to the python backend's API.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inference.store.urls import redact as _redact
from inference.store.urls import with_secret_password
from inference.triton.instance import execute_batch, instance_from_args, serve_together
from inference.triton.instance import param as _param

try:  # only importable inside the Triton python-backend stub
    import triton_python_backend_utils as pb_utils
except ImportError:  # pragma: no cover - exercised only inside tritonserver
    pb_utils = None

LOG = logging.getLogger("adqc.triton.features")
REDIS_URL_ENV = "ADQC_STORE__URL"  # the one store-URL name (inference/store/settings.py)


class InvalidRequestError(ValueError):
    """A request whose inputs cannot be served (shapes, product names, versions)."""


class ReferenceMismatchError(ValueError):
    """The server's store holds another record under the client's (product, version).

    The client sends its record's ``created_at`` with each request; a different one means the
    client and the server read different stores (or a store was rebuilt): scoring would use
    one pool and another threshold.
    """


@dataclass(frozen=True)
class Reference:
    """What the model keeps of a product record: its pool and its identity."""

    pool: object  # pretrain.residual.ReferencePool on the model's device
    created_at: str  # ISO-8601, as ProductRecord.created_at.isoformat()


@dataclass
class _CachedPool:
    pool: object  # a Reference
    nbytes: int


class PoolCache:
    """LRU of reference pools keyed by (product, version), bounded by entries and bytes."""

    def __init__(self, max_entries: int = 64, max_bytes: int = 1 << 30) -> None:
        self.max_entries = max(1, int(max_entries))
        self.max_bytes = max(1, int(max_bytes))
        self._items: OrderedDict[tuple[str, int], _CachedPool] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple[str, int]):
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item.pool

    def put(self, key: tuple[str, int], pool, nbytes: int) -> None:
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._items[key] = _CachedPool(pool, int(nbytes))
            self._bytes += int(nbytes)
            # keep at least the newest entry even when it alone exceeds the byte bound
            while len(self._items) > 1 and (
                len(self._items) > self.max_entries or self._bytes > self.max_bytes
            ):
                _, dropped = self._items.popitem(last=False)
                self._bytes -= dropped.nbytes

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def keys(self) -> list[tuple[str, int]]:
        with self._lock:
            return list(self._items)


def error_message(exc: BaseException) -> str:
    """``ClassName: message``, the form TritonEngine maps back to an exception type."""
    return f"{type(exc).__name__}: {exc}"


def pool_from_record(record, device: str = "cpu"):
    """The record's per-level [M, C] reference features as a ReferencePool on ``device``."""
    import torch

    from pretrain.residual import ReferencePool

    return ReferencePool([torch.from_numpy(np.array(a)) for a in record.pool]).to(device)


class FeaturesService:
    """Model + pool cache + store: the work behind ``adqc_features`` (no Triton imports)."""

    def __init__(
        self,
        *,
        backbone: str,
        checkpoint: Path,
        model_id: str,
        store_url: str,
        weights: Path | None = None,
        device: str = "cpu",
        input_is_preprocessed: bool = False,
        pool_cache_entries: int = 64,
        pool_cache_bytes: int = 1 << 30,
        store=None,
        precision: str = "fp32",
        runtime: str = "auto",
    ) -> None:
        """``runtime``: ``auto`` runs the backbone and projector in ONNX Runtime on CPU (as the
        in-process engine does; torch when onnxruntime is missing) and torch on CUDA;
        ``torch`` / ``onnxruntime`` force one (``onnxruntime`` only on CPU)."""
        import torch

        from pretrain.checkpoint import load_feature_model
        from pretrain.checkpoint import model_id as checkpoint_model_id

        self.device = torch.device(device)
        if precision not in ("fp32", "fp16"):
            raise ValueError(f"precision must be fp32 or fp16, not {precision!r}")
        if precision == "fp16" and self.device.type != "cuda":
            raise ValueError(f"precision fp16 needs a CUDA device, this instance runs on {device}")
        self.precision = precision
        self.model = load_feature_model(
            backbone=backbone, checkpoint=checkpoint, weights=weights, device=str(self.device)
        )
        self.model.eval()
        actual = checkpoint_model_id(checkpoint)
        if actual != model_id:
            raise ValueError(
                f"config.pbtxt says model_id {model_id!r} but {checkpoint} is {actual!r}: "
                "the repository was edited by hand; re-run `adqc export triton`"
            )
        self.model_id = model_id
        self._onnx = self._onnx_runner(runtime)
        self.runtime = "onnxruntime" if self._onnx is not None else "torch"
        self.spec = self.model.backbone.spec
        self.image_size = int(self.spec.image_size)
        self.input_is_preprocessed = input_is_preprocessed
        self.store_url = store_url
        self._store = store
        self.pools = PoolCache(pool_cache_entries, pool_cache_bytes)
        self._store_lock = threading.Lock()

    def _onnx_runner(self, runtime: str):
        """An OnnxFeatureRunner when ``runtime`` asks for ONNX Runtime and it can run, else None."""
        if runtime not in ("auto", "torch", "onnxruntime"):
            raise ValueError(f"runtime must be auto, torch or onnxruntime, not {runtime!r}")
        if runtime == "torch" or (runtime == "auto" and self.device.type != "cpu"):
            return None
        if self.device.type != "cpu":
            raise ValueError(f"runtime onnxruntime runs on CPU, not on {self.device}")
        try:
            from inference.engines.onnx_runtime import OnnxFeatureRunner

            return OnnxFeatureRunner(self.model)
        except (ImportError, OSError) as exc:
            if runtime == "onnxruntime":
                raise
            LOG.warning("onnxruntime unavailable (%s); adqc_features runs torch", exc)
            return None

    # ------------------------------------------------------------------ store and pools
    @property
    def store(self):
        if self._store is None:
            from inference.store import open_store

            # the instance keeps its own pool LRU: the store's record cache would only
            # duplicate the arrays (and the detector memory this model never needs)
            self._store = open_store(self.store_url, cache_size=0)
        return self._store

    def reference(self, product: str, version: int) -> Reference:
        """The reference pool of (product, version); raises store errors as they come."""
        key = (product, int(version))
        cached = self.pools.get(key)
        if cached is not None:
            return cached
        with self._store_lock:  # one fetch per key even when requests race
            cached = self.pools.get(key)
            if cached is not None:
                return cached
            if version < 1:
                raise InvalidRequestError(
                    f"REFERENCE_VERSION must be a published version (>= 1), got {version} "
                    f"for product {product!r}"
                )
            record = self.store.get(product, int(version), model_id=self.model_id)
            if record.image_size != self.image_size:
                raise InvalidRequestError(
                    f"product {product!r} v{version} was onboarded at {record.image_size}px, "
                    f"this model takes {self.image_size}px"
                )
            reference = Reference(
                pool_from_record(record, device=str(self.device)), record.created_at.isoformat()
            )
            # pool + its unit-normalised copy
            self.pools.put(key, reference, sum(int(a.nbytes) for a in record.pool) * 2)
            return reference

    def check_reference(self, product: str, version: int, created_at: str) -> Reference:
        """The reference, after checking the client's record is the one the server reads."""
        reference = self.reference(product, version)
        if created_at and created_at != reference.created_at:
            raise ReferenceMismatchError(
                f"product {product!r} v{version} in the server's store "
                f"({_redact(self.store_url)}) was created at {reference.created_at}, the "
                f"client's record at {created_at}: client and server read different stores"
            )
        return reference

    # ------------------------------------------------------------------ compute
    def _model_input(self, images: np.ndarray):
        import torch

        from pretrain.preprocess import to_model_input

        tensor = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
        if self.input_is_preprocessed:
            return tensor.float()
        return to_model_input(tensor, self.spec)

    def check_images(self, images: np.ndarray) -> None:
        s = self.image_size
        if self.input_is_preprocessed:
            expected, dtype = (3, s, s), np.float32
        else:
            expected, dtype = (s, s, 3), np.uint8
        if images.ndim != 4 or tuple(images.shape[1:]) != expected or images.dtype != dtype:
            raise InvalidRequestError(
                f"images must be {np.dtype(dtype).name} [B,{','.join(map(str, expected))}], "
                f"got {images.dtype} {list(images.shape)}"
            )

    def features(
        self,
        images: np.ndarray,
        keys: Sequence[tuple[str, int]],
        references: dict[tuple[str, int], Reference] | None = None,
    ) -> list[np.ndarray]:
        """Projected features per level for images whose pools are ``keys`` (one per image).

        ``references`` holds already resolved keys (serve() passes them, so an LRU eviction in
        between cannot cause a second store read).
        """
        import torch

        self.check_images(images)
        if len(keys) != len(images):
            raise InvalidRequestError(f"{len(images)} images but {len(keys)} product keys")
        references = references or {}
        pools = {
            key: (references.get(key) or self.reference(*key)).pool for key in dict.fromkeys(keys)
        }
        outputs: list[np.ndarray] | None = None
        with torch.inference_mode(), self._autocast():
            for key, pool in pools.items():
                index = [i for i, k in enumerate(keys) if k == key]
                x = self._model_input(images[index])
                if self._onnx is not None:
                    levels = self._onnx.projected(x, pool, self.model.chunk)
                else:
                    levels = [
                        t.detach().to("cpu", torch.float32).numpy()
                        for t in self.model.projected(x, pool)
                    ]
                if outputs is None:
                    outputs = [
                        np.empty((len(images), *t.shape[1:]), dtype=np.float32) for t in levels
                    ]
                for out, level in zip(outputs, levels, strict=True):
                    out[index] = level
        assert outputs is not None
        return outputs

    def serve(
        self,
        requests: Sequence[tuple[np.ndarray, Sequence[tuple[str, int]], Sequence[str]]],
    ) -> list[list[np.ndarray] | BaseException]:
        """One result per request: its features or the exception that failed it alone.

        A request is (images, (product, version) per image, record created_at per image; ""
        skips that check).

        Requests are resolved (pools) individually, then every valid request is computed in one
        pass per (product, version), so a dynamic batch of single-image requests runs the
        backbone once.
        """
        resolved: dict[tuple[str, int], Reference] = {}

        def check(request) -> None:
            images, keys, created = request
            self.check_images(images)
            if len(keys) != len(images):
                raise InvalidRequestError(f"{len(images)} images but {len(keys)} product keys")
            if len(created) != len(keys):
                raise InvalidRequestError(f"{len(keys)} product keys but {len(created)} dates")
            found = {
                key: self.check_reference(*key, when)
                for key, when in dict.fromkeys(zip(keys, created, strict=True))
            }
            resolved.update(found)

        return serve_together(
            requests,
            check,
            lambda request: request[0],
            lambda valid: self.features(
                np.concatenate([r[0] for r in valid]), [k for r in valid for k in r[1]], resolved
            ),
            LOG,
            "adqc_features",
        )

    def _autocast(self):
        """CUDA float16 autocast for precision fp16, else a no-op context."""
        import contextlib

        import torch

        if self.precision == "fp16":
            return torch.autocast(device_type="cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def warm_up(self) -> None:
        """One forward pass without a pool, so the first request does not pay for it."""
        import torch

        s = self.image_size
        shape = (1, 3, s, s) if self.input_is_preprocessed else (1, s, s, 3)
        dtype = np.float32 if self.input_is_preprocessed else np.uint8
        with torch.inference_mode():
            x = self._model_input(np.zeros(shape, dtype=dtype))
            if self._onnx is not None:
                self._onnx.raw(x)
            else:
                self.model.raw(x)


def _text(value: object, name: str) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidRequestError(f"{name} is not UTF-8: {value!r}") from exc
    return str(value)


def decode_keys(
    products: np.ndarray, versions: np.ndarray, created: np.ndarray | None, batch: int
) -> tuple[list[tuple[str, int]], list[str]]:
    """(product, version) and record created_at per image from the request's tensors.

    PRODUCT BYTES [B,1], REFERENCE_VERSION INT64 [B,1], REFERENCE_CREATED_AT BYTES [B,1]
    (ISO-8601; empty or absent: not checked).
    """
    products = np.asarray(products).reshape(-1)
    versions = np.asarray(versions).reshape(-1)
    dates = np.full(batch, b"", dtype=object) if created is None else np.asarray(created)
    dates = dates.reshape(-1)
    if len(products) != batch or len(versions) != batch or len(dates) != batch:
        raise InvalidRequestError(
            f"PRODUCT, REFERENCE_VERSION and REFERENCE_CREATED_AT need one entry per image "
            f"({batch}), got {len(products)}, {len(versions)} and {len(dates)}"
        )
    keys = [(_text(p, "PRODUCT"), int(v)) for p, v in zip(products, versions, strict=True)]
    return keys, [_text(d, "REFERENCE_CREATED_AT") for d in dates]


class TritonPythonModel:
    """Triton python-backend entry point (see module docstring)."""

    def initialize(self, args: dict) -> None:
        instance = instance_from_args(args)
        config, version_dir, device = instance.config, instance.version_dir, instance.device
        from inference.store.settings import store_url as _store_url

        # ADQC_STORE__URL (or a deprecated ADQC_REDIS_URL) wins over the exported parameter
        store_url = _store_url(None, _param(config, "redis_url") or "")
        if not store_url:
            raise ValueError(f"no reference store: set {REDIS_URL_ENV} or parameter redis_url")
        # the repository holds no password: it comes from the environment or a mounted secret
        store_url = with_secret_password(store_url)
        started = time.perf_counter()
        self.service = FeaturesService(
            backbone=_param(config, "backbone"),
            checkpoint=version_dir / _param(config, "checkpoint", "checkpoint.pt"),
            model_id=_param(config, "model_id"),
            weights=instance.weights,
            store_url=store_url,
            device=device,
            input_is_preprocessed=_param(config, "input_is_preprocessed", "false") == "true",
            pool_cache_entries=int(_param(config, "pool_cache_entries", "64")),
            pool_cache_bytes=int(float(_param(config, "pool_cache_mb", "1024")) * 2**20),
            precision=_param(config, "precision", "fp32"),
            runtime=_param(config, "runtime", "auto"),
        )
        self.service.warm_up()
        self.images_input = "INPUT" if self.service.input_is_preprocessed else "IMAGES"
        self.output_names = [o["name"] for o in config["output"]]
        pb_utils.Logger.log_info(
            f"adqc_features {args['model_instance_name']}: {self.service.model_id} on {device} "
            f"({self.service.runtime}), "
            f"store {_redact(store_url)}, ready in {time.perf_counter() - started:.1f} s"
        )

    def execute(self, requests: list) -> list:
        return execute_batch(
            requests, self._parse, self.service.serve, self.output_names, _triton_error
        )

    def _parse(self, request) -> tuple:  # noqa: ANN001 - a pb_utils.InferenceRequest
        images = pb_utils.get_input_tensor_by_name(request, self.images_input).as_numpy()
        created = pb_utils.get_input_tensor_by_name(request, "REFERENCE_CREATED_AT")
        keys, dates = decode_keys(
            pb_utils.get_input_tensor_by_name(request, "PRODUCT").as_numpy(),
            pb_utils.get_input_tensor_by_name(request, "REFERENCE_VERSION").as_numpy(),
            None if created is None else created.as_numpy(),
            len(images),
        )
        return images, keys, dates

    def finalize(self) -> None:
        store = getattr(getattr(self, "service", None), "_store", None)
        if store is not None and hasattr(store, "close"):
            store.close()


def _triton_error(exc: BaseException):
    from inference.store import StoreUnavailableError

    code = None
    if isinstance(exc, StoreUnavailableError):
        code = getattr(pb_utils.TritonError, "UNAVAILABLE", None)
    elif isinstance(exc, InvalidRequestError | KeyError | ValueError):
        code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    message = error_message(exc)
    return pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)
