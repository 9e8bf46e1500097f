"""TorchScript and ONNX exports of the backbone and the projector (dynamic batch).

The residual step between them (cosine 1-NN against a product's reference pool) depends on
per-product data fetched at run time, so it is not part of either graph: a serving stack that
uses these files runs backbone -> residual (against the pool) -> projector, as
``inference/triton/features.py`` does in one python model.

``export_onnx(out)`` writes a Triton-style model repository for the onnxruntime backend::

    OUT/adqc_backbone/config.pbtxt      platform onnxruntime_onnx, dynamic batching
    OUT/adqc_backbone/1/model.onnx      input  "input"        FP32 [B,3,S,S] (normalised)
                                        output "level_<l>"    FP32 [B,C_l,h_l,w_l]
    OUT/adqc_projector/config.pbtxt
    OUT/adqc_projector/1/model.onnx     input  "residual_<l>" FP32 [B,C_l,h_l,w_l]
                                        output "projected_<l>"
    OUT/export.json                     model_id, shapes, names, sha256 of each file

The tritonserver bundled with nvidia-pytriton (what tests run here) has only the python
backend, so these configs are checked by parsing, and the graphs by onnxruntime parity; they are
not served here.

``export_torchscript(out)`` writes ``OUT/backbone.pt`` and ``OUT/projector.pt`` (traced, load
with ``torch.jit.load``; the projector takes one tensor per level) and ``OUT/export.json``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from deploy.triton_repo import Kind, resolve_kind, write_config
from pretrain.backbones.base import sha256_file

BACKBONE_MODEL = "adqc_backbone"
PROJECTOR_MODEL = "adqc_projector"
ONNX_OPSET = 17


class BackboneGraph(nn.Module):
    """Backbone with a tuple of level maps as output (what tracing and ONNX want)."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.backbone(x))


class ProjectorGraph(nn.Module):
    """Projector taking one residual tensor per level as separate inputs."""

    def __init__(self, projector: nn.Module) -> None:
        super().__init__()
        self.projector = projector

    def forward(self, *levels: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.projector(list(levels)))


@dataclass(frozen=True)
class ExportSpec:
    model_id: str
    backbone: str
    image_size: int
    level_shapes: tuple[tuple[int, int, int], ...]
    files: dict[str, str]  # relative path -> sha256

    def write(self, out: Path) -> Path:
        path = out / "export.json"
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path


def _load(backbone: str, checkpoint: Path | None, weights: Path | None):
    from pretrain.checkpoint import default_checkpoint, load_feature_model, model_id

    checkpoint = Path(checkpoint) if checkpoint is not None else default_checkpoint(backbone)
    model = load_feature_model(backbone=backbone, checkpoint=checkpoint, weights=weights)
    model.eval()
    if model.projector is None:
        raise ValueError(f"{checkpoint} has no projector to export")
    return model, model_id(checkpoint)


def example_inputs(model, batch: int = 2, seed: int = 0) -> tuple[Tensor, list[Tensor]]:
    """A normalised image batch and residual-like tensors of the right per-level shapes."""
    generator = torch.Generator().manual_seed(seed)
    size = int(model.backbone.spec.image_size)
    x = torch.randn(batch, 3, size, size, generator=generator)
    with torch.inference_mode():
        levels = model.raw(x)
    residuals = [torch.randn(t.shape, generator=generator) for t in levels]
    return x, residuals


def _graphs(model) -> tuple[BackboneGraph, ProjectorGraph]:
    return BackboneGraph(model.backbone).eval(), ProjectorGraph(model.projector).eval()


def export_torchscript(
    out: Path,
    *,
    backbone: str = "mobilenet_v2",
    checkpoint: Path | None = None,
    weights: Path | None = None,
) -> ExportSpec:
    """Trace backbone and projector; the traced graphs accept any batch size."""
    model, mid = _load(backbone, checkpoint, weights)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    x, residuals = example_inputs(model)
    backbone_graph, projector_graph = _graphs(model)
    files = {}
    with torch.no_grad():
        traced = torch.jit.trace(backbone_graph, (x,), check_trace=False)
        traced.save(str(out / "backbone.pt"))
        traced = torch.jit.trace(projector_graph, tuple(residuals), check_trace=False)
        traced.save(str(out / "projector.pt"))
    for name in ("backbone.pt", "projector.pt"):
        files[name] = sha256_file(out / name)
    spec = ExportSpec(
        model_id=mid,
        backbone=backbone,
        image_size=int(model.backbone.spec.image_size),
        level_shapes=tuple(tuple(int(d) for d in r.shape[1:]) for r in residuals),
        files=files,
    )
    spec.write(out)
    return spec


def _onnx_config(
    name: str,
    inputs: list[tuple[str, list[int]]],
    outputs: list[tuple[str, list[int]]],
    *,
    max_batch: int,
    instances: int,
    kind: str,
    model_id: str,
):
    from tritonclient.grpc import model_config_pb2 as mc

    config = mc.ModelConfig(name=name, platform="onnxruntime_onnx", max_batch_size=max_batch)
    for tensor_name, dims in inputs:
        config.input.add(name=tensor_name, data_type=mc.TYPE_FP32, dims=dims)
    for tensor_name, dims in outputs:
        config.output.add(name=tensor_name, data_type=mc.TYPE_FP32, dims=dims)
    config.dynamic_batching.preferred_batch_size.extend(
        [s for s in (4, 8, 16, 32) if s <= max_batch] or [max_batch]
    )
    config.dynamic_batching.max_queue_delay_microseconds = 2000
    config.instance_group.add(
        count=instances,
        kind=mc.ModelInstanceGroup.KIND_GPU if kind == "gpu" else mc.ModelInstanceGroup.KIND_CPU,
    )
    config.parameters["model_id"].string_value = model_id
    return config


def export_onnx(
    out: Path,
    *,
    backbone: str = "mobilenet_v2",
    checkpoint: Path | None = None,
    weights: Path | None = None,
    max_batch: int = 16,
    instances: int = 1,
    kind: Kind = "auto",
    opset: int = ONNX_OPSET,
) -> ExportSpec:
    """ONNX graphs (dynamic batch axis) plus config.pbtxt for Triton's onnxruntime backend."""
    model, mid = _load(backbone, checkpoint, weights)
    out = Path(out)
    x, residuals = example_inputs(model)
    backbone_graph, projector_graph = _graphs(model)
    n = len(residuals)
    level_names = [f"level_{i}" for i in range(n)]
    residual_names = [f"residual_{i}" for i in range(n)]
    projected_names = [f"projected_{i}" for i in range(n)]
    shapes = [list(int(d) for d in r.shape[1:]) for r in residuals]
    size = int(model.backbone.spec.image_size)
    resolved = resolve_kind(kind)

    jobs = [
        (BACKBONE_MODEL, backbone_graph, (x,), ["input"], level_names, [[3, size, size]], shapes),
        (
            PROJECTOR_MODEL,
            projector_graph,
            tuple(residuals),
            residual_names,
            projected_names,
            shapes,
            shapes,
        ),
    ]
    files = {}
    for name, graph, args, input_names, output_names, input_dims, output_dims in jobs:
        path = out / name / "1" / "model.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        with torch.no_grad():
            torch.onnx.export(
                graph,
                args,
                str(path),
                input_names=input_names,
                output_names=output_names,
                dynamic_axes={t: {0: "batch"} for t in input_names + output_names},
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        files[f"{name}/1/model.onnx"] = sha256_file(path)
        config = _onnx_config(
            name,
            list(zip(input_names, input_dims, strict=True)),
            list(zip(output_names, output_dims, strict=True)),
            max_batch=max_batch,
            instances=instances,
            kind=resolved,
            model_id=mid,
        )
        write_config(config, out / name)
    spec = ExportSpec(
        model_id=mid,
        backbone=backbone,
        image_size=size,
        level_shapes=tuple(tuple(s) for s in shapes),
        files=files,
    )
    spec.write(out)
    return spec
