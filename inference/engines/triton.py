"""TritonEngine: the Engine protocol over gRPC to the `adqc` ensemble of a Triton server.

    engine = TritonEngine("127.0.0.1:8001")            # reads model_id/image size from the config
    levels = engine.features(images_uint8, record)      # [B,S,S,3] -> per level [B,C,h,w]

- Payloads are the uint8 images (4x smaller than float input); preprocessing runs in the server.
- Every call has a deadline (``timeout_s``, gRPC ``client_timeout``).
- UNAVAILABLE (server starting, restarting, or its store unreachable), a crashed python-backend
  stub (INTERNAL "Stub process ... is not healthy", seen under CPU starvation: the server's
  fault, not the frame's) and overload (DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED) are retried
  with exponential backoff (``retries`` times, ``backoff_s`` doubling:
  ``inference.errors.retrying``) and then raised as TritonUnavailableError /
  TritonOverloadedError, TransientErrors (the serve loop waits them out with back-pressure,
  never dead-letters the frames); other errors are not retried.
- ``model_id`` comes from the served model's config (parameter ``model_id``, written by
  `adqc export triton`); a record built with another model raises ModelMismatchError before any
  request is sent.
- Each request names the record by (product, version) and sends its ``created_at``: the server
  reads the pool from its own store and refuses a record that differs from the client's
  (ReferenceMismatchError: client and server configured with different stores).
- Server-side per-request errors come back as the exception the in-process engine would raise
  (ProductNotFoundError, ModelMismatchError, StoreUnavailableError), else TritonEngineError.
- Batches larger than the model's max_batch_size are split into several requests.
- ``stride8(images)`` serves the raw stride-8 features of the default detector from the
  stateless ``adqc_stride8`` model of the same repository (``stride8_model``), so the Scorer
  runs no backbone on the worker's CPU. A server without that model (a repository exported
  before it existed) is logged once and the features run in the worker
  (``inference.stride8.shared_stride8``), as they did before.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from inference.engines.base import check_batch
from inference.errors import TransientError, retrying
from inference.records import ModelMismatchError, ProductRecord

DEFAULT_URL = "127.0.0.1:8001"
DEFAULT_MODEL = "adqc"
DEFAULT_STRIDE8_MODEL = "adqc_stride8"
log = logging.getLogger(__name__)


#: INTERNAL messages that mean the server's python stub died, not that the request was bad
#: (triton-inference-server/server#8882: stubs crash under CPU starvation)
_SERVER_FAULTS = ("Stub process", "is not healthy", "lock_exception")


class TritonEngineError(RuntimeError):
    """The Triton server could not serve a request (message says which server and why)."""

    def __init__(self, message: str, status: str | None = None) -> None:
        super().__init__(message)
        self.status = status


class TritonUnavailableError(TritonEngineError, TransientError):
    """The server stayed unreachable/unavailable after all retries."""


class TritonOverloadedError(TritonUnavailableError):
    """The server is overloaded (deadline exceeded, resource exhausted) after all retries: an
    outage to wait out with back-pressure, not a fault of the frames."""


class ReferenceMismatchError(TritonEngineError):
    """The server's store holds another record under this (product, version)."""


_ERROR_PREFIX = re.compile(r"(?:in ensemble '[^']*', )?(?P<kind>[A-Za-z_]\w*(?:Error|Exception)): ")


def _strip_url(url: str) -> str:
    for prefix in ("grpc://", "grpcs://"):
        if url.startswith(prefix):
            return url[len(prefix) :]
    if "://" in url:
        raise ValueError(
            f"TritonEngine speaks gRPC: use host:port or grpc://host:port, not {url!r}"
        )
    return url


class TritonEngine:
    """Engine protocol implementation backed by Triton (see module docstring)."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        model: str = DEFAULT_MODEL,
        *,
        timeout_s: float = 30.0,
        retries: int = 4,
        backoff_s: float = 0.2,
        max_backoff_s: float = 5.0,
        sleep: Callable[[float], None] = time.sleep,
        stride8_model: str | None = DEFAULT_STRIDE8_MODEL,
    ) -> None:
        from pretrain.extras import require

        self._grpc = grpcclient = require("tritonclient.grpc", "triton", why="the Triton engine")
        self.url = _strip_url(url)
        self.model = model
        self.timeout_s = float(timeout_s)
        self.retries = max(0, int(retries))
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self._sleep = sleep
        self._client = grpcclient.InferenceServerClient(self.url)
        try:
            self._read_config()
            self._read_stride8_config(stride8_model)
        except BaseException:
            self._client.close()
            raise

    def _read_config(self) -> None:
        model = self.model
        config = self._call(
            "read the model config",
            lambda: self._client.get_model_config(
                model, as_json=True, client_timeout=self.timeout_s
            ),
        )["config"]
        self.config = config
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        if not params.get("model_id"):
            raise TritonEngineError(
                f"model {model!r} at {self.url} has no 'model_id' parameter: it was not written "
                "by `adqc export triton`"
            )
        self.model_id: str = params["model_id"]
        self.backbone: str = params.get("backbone") or self.model_id.partition(":")[0]
        inputs = {item["name"]: item for item in config["input"]}
        try:
            dims = [int(d) for d in inputs["IMAGES"]["dims"]]
        except KeyError:
            raise TritonEngineError(
                f"model {model!r} at {self.url} has no IMAGES input (inputs: {sorted(inputs)})"
            ) from None
        self.image_size: int = dims[0]
        self.max_batch: int = int(config.get("max_batch_size", 0)) or 1
        self.output_names: list[str] = sorted(
            (item["name"] for item in config["output"] if item["name"].startswith("FEATURES_")),
            key=lambda name: int(name.rsplit("_", 1)[1]),
        )

    def _read_stride8_config(self, name: str | None) -> None:
        """The stride-8 model's input size, batch and outputs; ``stride8_model`` None when the
        server does not serve it (then ``stride8`` runs in this process)."""
        from tritonclient.utils import InferenceServerException

        self.stride8_model: str | None = None
        if not name:
            return

        def read() -> Any:
            return self._client.get_model_config(name, as_json=True, client_timeout=self.timeout_s)

        try:
            config = read()["config"]
        except InferenceServerException as exc:
            text = f"{exc.status()} {exc.message() or exc}"
            if "NOT_FOUND" not in text and "unknown model" not in text:
                # anything but "no such model" goes through the retry policy like every call
                config = self._call("read the stride-8 model config", read, model=name)["config"]
            else:
                log.warning(
                    "Triton %s serves no %r model (repository exported by an older adqc?): "
                    "stride-8 features run in this process; re-run `adqc export triton`",
                    self.url,
                    name,
                )
                return
        inputs = {item["name"]: item for item in config.get("input", [])}
        outputs = sorted(
            (
                item["name"]
                for item in config.get("output", [])
                if item["name"].startswith("STRIDE8_")
            ),
            key=lambda item: int(item.rsplit("_", 1)[1]),
        )
        if "IMAGES" not in inputs or not outputs:
            raise TritonEngineError(
                f"model {name!r} at {self.url} is not a stride-8 model written by "
                f"`adqc export triton` (inputs {sorted(inputs)}, outputs {outputs})"
            )
        self.stride8_model = name
        self.stride8_size: int = int(inputs["IMAGES"]["dims"][0])
        self.stride8_max_batch: int = int(config.get("max_batch_size", 0)) or 1
        self.stride8_outputs: list[str] = outputs

    # ------------------------------------------------------------------ Engine protocol
    def features(self, images: np.ndarray, record: ProductRecord) -> list[np.ndarray]:
        """uint8 [B,S,S,3] (already resized) -> projected features per level [B,C,h,w]."""
        record.check_model(self.model_id)
        check_batch(images, self.image_size)
        if record.version < 1:
            raise ValueError(
                f"record of {record.product!r} is not published (version 0): the server reads "
                "references from its store by (product, version); use LocalEngine for "
                "unpublished records"
            )
        chunks = [
            self._infer(images[i : i + self.max_batch], record)
            for i in range(0, len(images), self.max_batch)
        ]
        if len(chunks) == 1:
            return chunks[0]
        return [np.concatenate(level) for level in zip(*chunks, strict=True)]

    def stride8(self, images: np.ndarray) -> list:
        """uint8 [B,S,S,3] -> the raw stride-8 level maps (torch tensors [B,32,S/8,S/8] and
        [B,96,S/16,S/16]) from the server's ``adqc_stride8`` when it takes S px, else computed
        in this process."""
        import torch

        size = images.shape[1] if isinstance(images, np.ndarray) and images.ndim == 4 else -1
        check_batch(images, size)
        if self.stride8_model is None or size != self.stride8_size:
            # no adqc_stride8 on the server, or one exported for another input size
            from inference.stride8 import any_size_stride8

            return any_size_stride8(images)
        chunks = [
            self._infer_stride8(images[i : i + self.stride8_max_batch])
            for i in range(0, len(images), self.stride8_max_batch)
        ]
        if len(chunks) == 1:
            levels = chunks[0]
        else:
            levels = [np.concatenate(level) for level in zip(*chunks, strict=True)]
        # Triton's arrays are read-only: torch needs writable memory (a copy of each level)
        return [torch.from_numpy(np.array(level, dtype=np.float32)) for level in levels]

    # ------------------------------------------------------------------ helpers
    def _infer_stride8(self, images: np.ndarray) -> list[np.ndarray]:
        g = self._grpc
        name = self.stride8_model
        assert name is not None
        tensor = g.InferInput("IMAGES", list(images.shape), "UINT8")
        tensor.set_data_from_numpy(np.ascontiguousarray(images))
        outputs = [g.InferRequestedOutput(output) for output in self.stride8_outputs]
        result = self._call(
            f"compute stride-8 features of {len(images)} image(s)",
            lambda: self._client.infer(
                name, [tensor], outputs=outputs, client_timeout=self.timeout_s
            ),
            model=name,
        )
        return [result.as_numpy(output) for output in self.stride8_outputs]

    def _infer(self, images: np.ndarray, record: ProductRecord) -> list[np.ndarray]:
        g = self._grpc
        b = len(images)
        tensors = [
            (g.InferInput("IMAGES", list(images.shape), "UINT8"), np.ascontiguousarray(images)),
            (
                g.InferInput("PRODUCT", [b, 1], "BYTES"),
                np.full((b, 1), record.product.encode("utf-8"), dtype=object),
            ),
            (
                g.InferInput("REFERENCE_VERSION", [b, 1], "INT64"),
                np.full((b, 1), record.version, dtype=np.int64),
            ),
            (
                g.InferInput("REFERENCE_CREATED_AT", [b, 1], "BYTES"),
                np.full((b, 1), record.created_at.isoformat().encode(), dtype=object),
            ),
        ]
        inputs = []
        for tensor, value in tensors:
            tensor.set_data_from_numpy(value)
            inputs.append(tensor)
        outputs = [g.InferRequestedOutput(name) for name in self.output_names]
        result = self._call(
            f"score {b} image(s) of {record.product!r} v{record.version}",
            lambda: self._client.infer(
                self.model, inputs, outputs=outputs, client_timeout=self.timeout_s
            ),
        )
        return [result.as_numpy(name) for name in self.output_names]

    def _call(self, what: str, fn: Callable[[], Any], model: str | None = None) -> Any:
        from tritonclient.utils import InferenceServerException

        attempts = 0

        def attempt() -> Any:
            nonlocal attempts
            attempts += 1
            try:
                return fn()
            except InferenceServerException as exc:
                status = str(exc.status() or "")
                message = exc.message() or str(exc)
                raise self._translate(exc, what, status, message, attempts - 1, model) from exc

        policy = retrying(
            initial_s=self.backoff_s,
            max_s=self.max_backoff_s,
            attempts=self.retries + 1,
            retry_on=TritonUnavailableError,
            sleep=self._sleep,
        )
        return policy(attempt)

    def _translate(
        self,
        exc: Exception,
        what: str,
        status: str,
        message: str,
        attempt: int,
        model: str | None = None,
    ) -> Exception:
        from inference.store import ProductNotFoundError, StoreAuthError, StoreUnavailableError

        where = f"Triton {self.url} model {model or self.model!r}"
        match = _ERROR_PREFIX.match(message)
        if match:
            kind, detail = match.group("kind"), message[match.end() :]
            if kind == "ProductNotFoundError":
                return ProductNotFoundError(detail)
            if kind == "ModelMismatchError":
                error = ModelMismatchError.__new__(ModelMismatchError)
                ValueError.__init__(error, f"{where}: {detail}")
                error.product, error.record_model_id, error.expected_model_id = "", "", ""
                return error
            if kind == "StoreUnavailableError":
                return StoreUnavailableError(f"{where}: {detail}")
            if kind == "StoreAuthError":  # Triton's Redis refused its password: fatal for serve
                return StoreAuthError(f"{where}: {detail}")
            if kind == "ReferenceMismatchError":
                return ReferenceMismatchError(f"{where}: {detail}", status)
        if "DEADLINE_EXCEEDED" in status:
            return TritonOverloadedError(
                f"{where}: could not {what} within the {self.timeout_s:g} s deadline "
                f"({attempt + 1} attempt(s))",
                status,
            )
        if "RESOURCE_EXHAUSTED" in status:
            return TritonOverloadedError(
                f"{where}: overloaded after {attempt + 1} attempt(s) to {what}: {message}", status
            )
        if "UNAVAILABLE" in status or any(m in message for m in _SERVER_FAULTS):
            return TritonUnavailableError(
                f"{where}: unavailable after {attempt + 1} attempt(s) to {what}: {message}", status
            )
        return TritonEngineError(f"{where}: could not {what}: {message}", status)

    # ------------------------------------------------------------------ lifecycle
    def is_ready(self) -> bool:
        """The ensemble and, when served, the stride-8 model are ready."""
        models = [self.model] + ([self.stride8_model] if self.stride8_model else [])
        try:
            return all(
                self._client.is_model_ready(model, client_timeout=self.timeout_s)
                for model in models
            )
        except Exception:  # noqa: BLE001 - any failure means not ready
            return False

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> TritonEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"TritonEngine({self.url!r}, model={self.model!r}, model_id={self.model_id!r}, "
            f"stride8_model={self.stride8_model!r})"
        )
