"""FeatureModel: frozen backbone + optional projector, with raw / residual / projected features."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from .backbones import Backbone, BackboneSpec
from .preprocess import to_model_input
from .projector import FeatureProjector
from .residual import ReferencePool, pool_residuals


class FeatureModel(nn.Module):
    """Backbone (frozen) + per-level projector.

    All inputs `x` are normalised float batches [B,3,S,S] (see `preprocess`). Outside training
    everything runs under torch.inference_mode; in training mode the backbone and residual
    steps run under no_grad and only the projector records gradients.
    """

    def __init__(
        self,
        backbone: Backbone,
        projector: FeatureProjector | None = None,
        device: torch.device | str = "cpu",
        chunk: int = 4096,
        batch_size: int = 32,
    ) -> None:
        super().__init__()
        if projector is not None and list(projector.channels) != list(backbone.spec.channels):
            raise ValueError(
                f"projector widths {projector.channels} do not match backbone "
                f"{backbone.spec.name} widths {list(backbone.spec.channels)}"
            )
        self.backbone = backbone
        self.projector = projector
        self.chunk = chunk
        self.batch_size = batch_size
        # Set by checkpoint.load_feature_model; "<backbone>:raw" identifies raw features.
        self.checkpoint = None
        self.model_id = f"{backbone.spec.name}:raw" if projector is None else None
        self.to(device)
        self.eval()

    @property
    def spec(self) -> BackboneSpec:
        return self.backbone.spec

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    def _frozen(self) -> contextlib.AbstractContextManager:
        return torch.no_grad() if self.training else torch.inference_mode()

    def _batches(self, x: Tensor) -> Iterator[Tensor]:
        for s in range(0, x.shape[0], self.batch_size):
            yield x[s : s + self.batch_size].to(self.device, non_blocking=True)

    def preprocess(self, images: Tensor) -> Tensor:
        """uint8 [B,S,S,3] -> normalised float [B,3,S,S] on this model's device."""
        return to_model_input(torch.as_tensor(images).to(self.device), self.spec)

    def raw(self, x: Tensor) -> list[Tensor]:
        """Backbone feature maps per level, [B,C_l,h_l,w_l] (run in batches of `batch_size`)."""
        with self._frozen():
            parts = [self.backbone(b) for b in self._batches(x)]
            if len(parts) == 1:
                return parts[0]
            return [torch.cat(level, 0) for level in zip(*parts, strict=True)]

    def build_pool(self, x_refs: Tensor) -> ReferencePool:
        """The K reference images' patch features per level (all positions, all images)."""
        return ReferencePool.from_features(self.raw(x_refs))

    def residual(self, x: Tensor, pool: ReferencePool) -> list[Tensor]:
        """Per level f - p*, p* the cosine nearest reference patch (un-normalised)."""
        with self._frozen():
            return pool_residuals(self.raw(x), pool.to(self.device), self.chunk)

    def projected(self, x: Tensor, pool: ReferencePool) -> list[Tensor]:
        """Projector(residual): the pretrained anomaly representation, per level [B,C,h,w]."""
        if self.projector is None:
            raise RuntimeError("this FeatureModel has no projector: use raw() or residual()")
        res = self.residual(x, pool)
        if self.training:
            return self.projector(res)
        with torch.inference_mode():
            return self.projector(res)

    def train(self, mode: bool = True) -> FeatureModel:
        super().train(mode)
        self.backbone.train(False)  # always frozen
        return self
