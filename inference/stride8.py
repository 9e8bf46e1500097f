"""Raw stride-8 backbone features for ensemble members (``pretrain.detectors.ensemble``).

MobileNetV2 with the shipped ImageNet weights, tapped at ``features.6`` + ``features.13``
(strides 8 and 16: the layers anomalib's PatchCore uses, a 28x28 grid at 224): the ``stride8``
feature source of the default detector (docs/BACKBONES.md).

Where it runs: an engine that serves it (a :class:`Stride8Engine`, e.g. the Triton engine with
the ``adqc_stride8`` model of `adqc export triton`) computes it beside the projected features;
otherwise it runs in the worker's process (:func:`shared_stride8`), in ONNX Runtime on CPU when
available (exported once into the same cache as the engine's graphs), else torch.
:func:`stride8_source` picks one for an engine.
"""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from pretrain.backbones.mobilenet_variants import S8_TAPS
from pretrain.detectors.ensemble import S8_BASE_SIZE  # the tapped backbone's own 224 px
from pretrain.model import FeatureModel
from pretrain.preprocess import check_frames, to_model_input

logger = logging.getLogger(__name__)
STRIDE8_TAPS = S8_TAPS  # the `mobilenet_v2_s8` backbone's levels
#: anything mapping uint8 [B,S,S,3] to the stride-8 level maps (a Stride8Features)
Stride8Source = Callable[[np.ndarray], list[torch.Tensor]]


@runtime_checkable
class Stride8Engine(Protocol):
    """An engine that computes the stride-8 features itself (e.g. on a Triton server)."""

    def stride8(self, images: np.ndarray) -> list[torch.Tensor]:
        """uint8 [B,S,S,3] -> raw level maps [B,32,S/8,S/8] and [B,96,S/16,S/16]."""
        ...


def stride8_model(weights: Path | str | None = None, device: str = "cpu") -> FeatureModel:
    """The tapped MobileNetV2 (no projector) every stride-8 source runs: its ``preprocess`` is
    ``pretrain.preprocess.to_model_input`` with the tapped spec, its ``raw`` the level maps."""
    from pretrain.backbones.mobilenet_variants import tapped_mobilenet_v2

    backbone = tapped_mobilenet_v2(STRIDE8_TAPS, Path(weights) if weights else None)
    return FeatureModel(backbone, None, device=device)


class Stride8Features:
    """uint8 [B,S,S,3] -> raw level maps [B,32,S/8,S/8] and [B,96,S/16,S/16] (torch).

    ``image_size``: the S it is fed (default the backbone's 224); the ONNX graph is exported
    for that size (torch takes any size).
    """

    def __init__(
        self,
        weights: Path | str | None = None,
        runtime: str = "auto",
        cache_dir: Path | str | None = None,
        image_size: int | None = None,
    ) -> None:
        if runtime not in ("auto", "torch", "onnxruntime"):
            raise ValueError(f"runtime must be auto, torch or onnxruntime, not {runtime!r}")
        self.model = stride8_model(weights)
        self.image_size = int(image_size or self.model.spec.image_size)
        if self.image_size % 16:
            raise ValueError(f"the stride-8 input size must be a multiple of 16, not {image_size}")
        self._session = None
        if runtime != "torch":
            try:
                self._session = self._onnx_session(cache_dir)
            except (ImportError, OSError) as exc:
                if runtime == "onnxruntime":
                    raise
                logger.warning("onnxruntime unavailable (%s); stride-8 features run torch", exc)
        self.runtime = "onnxruntime" if self._session is not None else "torch"

    def _onnx_session(self, cache_dir: Path | str | None):
        import onnxruntime as ort

        from inference.engines.onnx_runtime import OPSET, _export, default_cache_dir

        folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        tag = f"{self.model.spec.name}-torch{torch.__version__.split('+')[0]}-op{OPSET}"
        size = self.image_size
        if size != int(self.model.spec.image_size):
            tag += f"-{size}px"
        path = folder / f"{tag}-uint8-backbone.onnx"
        if not path.is_file():
            names = [f"level_{i}" for i in range(len(STRIDE8_TAPS))]
            images = torch.zeros(2, size, size, 3, dtype=torch.uint8)
            with warnings.catch_warnings():  # the spec's mean/std are constants of the graph
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                _export(_FromUint8(self.model), (images,), path, ["images"], names)
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # no spinning after a run: the detector's torch ops and search follow at once
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, images: np.ndarray) -> list[torch.Tensor]:
        if self._session is None:
            with torch.inference_mode():
                x = self.model.preprocess(torch.from_numpy(np.ascontiguousarray(images)))
                return [f.float() for f in self.model.raw(x)]
        batch = np.ascontiguousarray(images)
        check_frames(batch)
        if batch.shape[1:3] != (self.image_size, self.image_size):
            raise ValueError(
                f"stride-8 features were exported for {self.image_size} px images, "
                f"got {tuple(batch.shape[1:3])}"
            )
        out = self._session.run(None, {"images": batch})
        return [torch.from_numpy(a) for a in out]


class _FromUint8(torch.nn.Module):
    """uint8 [B,S,S,3] -> the tapped levels, ``to_model_input`` inside the graph: ONNX Runtime
    converts and normalises in its own pool (in torch it took 7 % of the serve worker's
    inference thread, and its OpenMP workers spin after it)."""

    def __init__(self, model: FeatureModel) -> None:
        super().__init__()
        self.backbone, self.spec = model.backbone, model.spec

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.backbone(to_model_input(images, self.spec)))


def in_batches(source: Stride8Source, images: np.ndarray, batch: int) -> list[torch.Tensor]:
    """``source`` over uint8 ``images`` ``batch`` at a time, each level concatenated."""
    parts = [source(images[s : s + batch]) for s in range(0, len(images), batch)]
    return [torch.cat(level) for level in zip(*parts, strict=True)]


def shared_stride8(image_size: int | None = None) -> Stride8Features:
    """One extractor per process and input size (default 224 px; loaded on first use)."""
    return _shared(int(image_size or S8_BASE_SIZE))


@functools.lru_cache(maxsize=4)
def _shared(image_size: int) -> Stride8Features:
    return Stride8Features(image_size=image_size)


def any_size_stride8(images: np.ndarray) -> list[torch.Tensor]:
    """The in-process stride-8 features of uint8 [B,S,S,3] at whatever S they come in."""
    return shared_stride8(int(images.shape[1]))(images)


def stride8_source(engine: object) -> Stride8Source:
    """The engine's own stride-8 features when it serves them, else in process at any size."""
    if isinstance(engine, Stride8Engine):
        return engine.stride8
    return any_size_stride8
