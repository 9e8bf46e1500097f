"""``adqc_stride8``: the stateless python-backend model serving the stride-8 feature source.

uint8 images [B,S,S,3] -> ``STRIDE8_0`` FP32 [B,32,S/8,S/8] and ``STRIDE8_1`` FP32
[B,96,S/16,S/16]: the raw MobileNetV2 ``features.6`` + ``features.13`` maps the default detector
(``s8-patchcore``) reads, with the same preprocessing (``pretrain.preprocess.to_model_input``
with the tapped spec) and weights as the worker's in-process
:class:`inference.stride8.Stride8Features` (both build :func:`inference.stride8.stride8_model`).
No store, no product: any request with valid images is served.

Errors are per request (one response per request, in order): a request with invalid images fails
alone; the valid requests of a dynamic batch run the backbone in one pass. Messages start with
the exception's class name, as in ``adqc_features``.

:class:`Stride8Service` does the work without Triton imports (unit-tested in process);
:class:`TritonPythonModel` adapts it to the python backend's API.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from inference.triton.features import InvalidRequestError, error_message
from inference.triton.instance import execute_batch, instance_from_args, param, serve_together

try:  # only importable inside the Triton python-backend stub
    import triton_python_backend_utils as pb_utils
except ImportError:  # pragma: no cover - exercised only inside tritonserver
    pb_utils = None

LOG = logging.getLogger("adqc.triton.stride8")


class Stride8Service:
    """The tapped backbone on a device: uint8 batches -> raw stride-8 level maps (numpy).

    On CPU it runs what the worker runs in process (:class:`inference.stride8.Stride8Features`:
    ONNX Runtime, torch when onnxruntime is missing), so a Triton engine is not slower than the
    in-process default by its runtime; on CUDA, torch on the device."""

    def __init__(
        self, *, weights: Path | None = None, device: str = "cpu", image_size: int | None = None
    ) -> None:
        """``image_size``: the S it takes (default the backbone's 224; the repository exports
        the default detector's)."""
        import torch

        from inference.stride8 import Stride8Features, stride8_model

        self.device = torch.device(device)
        self.extractor: Stride8Features | None = None
        if self.device.type == "cpu":
            self.extractor = Stride8Features(weights, image_size=image_size)
            self.model = self.extractor.model
        else:
            self.model = stride8_model(weights, device=str(self.device))
        self.model.eval()
        self.runtime = self.extractor.runtime if self.extractor is not None else "torch"
        self.image_size = int(image_size or self.model.spec.image_size)

    def check_images(self, images: np.ndarray) -> None:
        s = self.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (s, s, 3) or images.dtype != np.uint8:
            raise InvalidRequestError(
                f"images must be uint8 [B,{s},{s},3], got {images.dtype} {list(images.shape)}"
            )

    def features(self, images: np.ndarray) -> list[np.ndarray]:
        """uint8 [B,S,S,3] -> float32 [B,32,S/8,S/8] and [B,96,S/16,S/16]."""
        import torch

        self.check_images(images)
        if self.extractor is not None:
            return [t.numpy() for t in self.extractor(images)]
        with torch.inference_mode():
            x = self.model.preprocess(torch.from_numpy(np.ascontiguousarray(images)))
            levels = self.model.raw(x)
            return [t.detach().to("cpu", torch.float32).numpy() for t in levels]

    def serve(self, requests: Sequence[np.ndarray]) -> list[list[np.ndarray] | BaseException]:
        """One result per request (its images): its level maps or the exception that failed it
        alone. Valid requests are computed in one pass."""
        return serve_together(
            requests,
            self.check_images,
            lambda images: images,
            lambda valid: self.features(np.concatenate(valid)),
            LOG,
            "adqc_stride8",
        )

    def warm_up(self) -> None:
        """One forward pass, so the first request does not pay for it."""
        s = self.image_size
        self.features(np.zeros((1, s, s, 3), dtype=np.uint8))


class TritonPythonModel:
    """Triton python-backend entry point (see module docstring)."""

    def initialize(self, args: dict) -> None:
        instance = instance_from_args(args)
        config, device = instance.config, instance.device
        started = time.perf_counter()
        size = int(param(config, "image_size", "0") or 0) or None
        self.service = Stride8Service(weights=instance.weights, device=device, image_size=size)
        self.service.warm_up()
        self.output_names = sorted(
            (o["name"] for o in config["output"]), key=lambda name: int(name.rsplit("_", 1)[1])
        )
        pb_utils.Logger.log_info(
            f"adqc_stride8 {args['model_instance_name']}: {self.service.model.spec.name} on "
            f"{device} ({self.service.runtime}), ready in {time.perf_counter() - started:.1f} s"
        )

    def execute(self, requests: list) -> list:
        return execute_batch(
            requests,
            lambda request: pb_utils.get_input_tensor_by_name(request, "IMAGES").as_numpy(),
            self.service.serve,
            self.output_names,
            _triton_error,
        )

    def finalize(self) -> None:
        self.service = None


def _triton_error(exc: BaseException):
    code = None
    if isinstance(exc, InvalidRequestError):
        code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    message = error_message(exc)
    return pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)
