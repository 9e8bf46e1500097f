"""LocalEngine: the feature model in this process (torch), no server.

Same code path as training and evaluation: ``to_model_input`` -> backbone -> cosine 1-NN
residual against the record's K-shot pool -> projector. ``runtime``: "onnxruntime" (the default
on CPU) runs backbone and projector as ONNX Runtime sessions exported from the same model
(inference/engines/onnx_runtime.py; outputs equal to ~1e-5, ~2-3x faster on CPU); "torch" runs
them in torch (the default on CUDA). Reference pools are rebuilt from a
record once and cached by (product, version) (bounded LRU); unpublished records (version 0,
during onboarding) are never cached.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from inference.engines.base import check_batch
from inference.records import ProductRecord
from inference.store.base import LruCache
from pretrain.checkpoint import load_feature_model
from pretrain.model import FeatureModel
from pretrain.residual import ReferencePool

logger = logging.getLogger(__name__)
RUNTIMES = ("torch", "onnxruntime")


class LocalEngine:
    """In-process engine over a :class:`pretrain.model.FeatureModel`."""

    def __init__(
        self,
        checkpoint: Path | str | None = None,
        backbone: str = "mobilenet_v2",
        *,
        device: str = "cpu",
        weights: Path | str | None = None,
        pool_cache: int = 8,
        model: FeatureModel | None = None,
        runtime: str = "auto",
    ) -> None:
        """Load ``checkpoint`` (default: the shipped checkpoint of ``backbone``), or wrap an
        already loaded ``model`` (which must carry ``model_id``, as load_feature_model sets)."""
        if model is None:
            model = load_feature_model(backbone, checkpoint, weights=weights, device=device)
        if model.projector is None or not getattr(model, "model_id", None):
            raise ValueError("LocalEngine needs a FeatureModel with a projector and a model_id")
        self.model = model
        self.model_id: str = model.model_id
        self.image_size: int = int(model.spec.image_size)
        self._pools: LruCache[tuple[str, int, str], ReferencePool] = LruCache(pool_cache)
        auto = runtime == "auto"
        if auto:
            runtime = "onnxruntime" if model.device.type == "cpu" else "torch"
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be auto, {' or '.join(RUNTIMES)}, not {runtime!r}")
        self._onnx = None
        if runtime == "onnxruntime":
            try:
                from inference.engines.onnx_runtime import OnnxFeatureRunner

                self._onnx = OnnxFeatureRunner(model)
            except (ImportError, OSError) as exc:
                if not auto:
                    raise
                # "auto" prefers the faster runtime, never at the price of not serving: an
                # image without onnxruntime, or without a writable export cache, runs torch
                logger.warning("onnxruntime unavailable (%s); the local engine runs torch", exc)
                runtime = "torch"
        self.runtime = runtime

    @property
    def backbone(self) -> str:
        return self.model.spec.name

    def pool(self, record: ProductRecord) -> ReferencePool:
        """The record's reference pool on the model's device (cached for published records)."""
        cached = self._pools.get(record.cache_key)
        if cached is not None:
            return cached
        pool = ReferencePool([torch.from_numpy(np.array(a)) for a in record.pool])
        pool = pool.to(self.model.device)
        if pool.channels != tuple(self.model.spec.channels):
            raise ValueError(
                f"record of {record.product!r} has pool widths {pool.channels}, the model "
                f"expects {tuple(self.model.spec.channels)}"
            )
        if record.version > 0:  # unpublished records (onboarding) are never cached
            self._pools.put(record.cache_key, pool)
        return pool

    def raw(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Normalised float [B,3,S,S] -> backbone level maps, in this engine's runtime (in
        batches of the model's ``batch_size``)."""
        if self._onnx is None:
            return self.model.raw(x)
        step = self.model.batch_size
        parts = [self._onnx.raw(x[s : s + step]) for s in range(0, x.shape[0], step)]
        return [torch.cat(level) for level in zip(*parts, strict=True)]

    def project(self, residuals: list[torch.Tensor]) -> list[torch.Tensor]:
        """Residual level maps -> projected level maps, in this engine's runtime."""
        if self._onnx is None:
            with torch.inference_mode():
                return self.model.projector(residuals)
        return [torch.from_numpy(a) for a in self._onnx.project(residuals)]

    def features(self, images: np.ndarray, record: ProductRecord) -> list[np.ndarray]:
        """uint8 [B,S,S,3] -> projected features per level [B,C,h,w] (float32 numpy)."""
        record.check_model(self.model_id)
        check_batch(images, self.image_size)
        pool = self.pool(record)
        with torch.inference_mode():
            x = self.model.preprocess(torch.from_numpy(np.ascontiguousarray(images)))
            if self._onnx is not None:
                return self._onnx.projected(x, pool, self.model.chunk)
            levels = self.model.projected(x, pool)
        return [level.float().cpu().numpy() for level in levels]
