"""ONNX Runtime execution of a FeatureModel's backbone and projector (CPU).

The residual step between them stays in torch (it needs the product's pool). The graphs are
exported once per (model_id, torch version, opset) into a cache folder and loaded from there
afterwards. On the 2-core development VM, ``adqc bench stages`` measured ONNX Runtime ~3x
faster than torch for the MobileNetV2 backbone and ~2x for the projector, with outputs equal
to ~1e-5 (docs/PERFORMANCE.md), so it is the LocalEngine's default runtime on CPU.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from pretrain.model import FeatureModel
from pretrain.residual import ReferencePool, pool_residuals

OPSET = 17
CACHE_ENV = "ADQC_ONNX_CACHE"


def default_cache_dir() -> Path:
    """``$ADQC_ONNX_CACHE``, else ``~/.cache/adqc/onnx``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "adqc" / "onnx"


class _Backbone(nn.Module):
    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.backbone(x))


class _Projector(nn.Module):
    def __init__(self, projector: nn.Module) -> None:
        super().__init__()
        self.projector = projector

    def forward(self, *levels: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.projector(list(levels)))


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str]):
    """Export to a temporary file in the same folder, then rename (concurrent-safe)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".onnx.tmp", dir=path.parent)
    os.close(fd)
    try:
        with torch.no_grad():
            torch.onnx.export(
                module.eval(),
                args,
                tmp,
                input_names=inputs,
                output_names=outputs,
                dynamic_axes={n: {0: "batch"} for n in inputs + outputs},
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _quantize(source: Path, path: Path) -> None:
    """int8 dynamic quantisation of ``source``'s MatMul/Gemm weights into ``path`` (atomic)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fd, tmp = tempfile.mkstemp(suffix=".onnx.tmp", dir=path.parent)
    os.close(fd)
    try:
        quantize_dynamic(
            str(source), tmp, op_types_to_quantize=["MatMul", "Gemm"], weight_type=QuantType.QInt8
        )
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class OnnxFeatureRunner:
    """Backbone and projector of ``model`` as ONNX Runtime sessions (CPU)."""

    def __init__(
        self,
        model: FeatureModel,
        cache_dir: Path | str | None = None,
        threads: int = 0,
        projector_int8: bool = False,
    ):
        """``projector_int8``: run an int8 dynamically quantised copy of the projector (its
        MatMul/Gemm weights; ``onnxruntime.quantization.quantize_dynamic``). Off by default:
        measured in docs/PERFORMANCE.md, not kept."""
        import onnxruntime as ort

        if model.projector is None:
            raise ValueError("OnnxFeatureRunner needs a FeatureModel with a projector")
        if model.device.type != "cpu":
            raise ValueError("the onnxruntime runtime runs on CPU; use runtime 'torch' on GPU")
        model_id = getattr(model, "model_id", None) or "unnamed"
        tag = f"{model_id.replace(':', '_')}-torch{torch.__version__.split('+')[0]}-op{OPSET}"
        folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        n = len(model.spec.channels)
        self.level_names = [f"level_{i}" for i in range(n)]
        self.residual_names = [f"residual_{i}" for i in range(n)]
        self.projected_names = [f"projected_{i}" for i in range(n)]
        bb_path, pj_path = folder / f"{tag}-backbone.onnx", folder / f"{tag}-projector.onnx"
        if not (bb_path.is_file() and pj_path.is_file()):
            size = int(model.spec.image_size)
            x = torch.zeros(2, 3, size, size)
            with torch.inference_mode():
                levels = model.raw(x)
            residuals = tuple(torch.zeros(t.shape) for t in levels)
            _export(_Backbone(model.backbone), (x,), bb_path, ["input"], self.level_names)
            _export(
                _Projector(model.projector),
                residuals,
                pj_path,
                self.residual_names,
                self.projected_names,
            )
        if projector_int8:
            q_path = folder / f"{tag}-projector-int8.onnx"
            if not q_path.is_file():
                _quantize(pj_path, q_path)
            pj_path = q_path
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = ["CPUExecutionProvider"]
        self.backbone = ort.InferenceSession(str(bb_path), options, providers=providers)
        self.projector = ort.InferenceSession(str(pj_path), options, providers=providers)
        self.paths = (bb_path, pj_path)

    def raw(self, x: Tensor) -> list[Tensor]:
        """Normalised float [B,3,S,S] -> backbone level maps (torch tensors)."""
        out = self.backbone.run(None, {"input": np.ascontiguousarray(x.numpy())})
        return [torch.from_numpy(a) for a in out]

    def project(self, residuals: list[Tensor]) -> list[np.ndarray]:
        """Residual level maps -> projected level maps (float32 numpy)."""
        feed = {
            name: np.ascontiguousarray(r.numpy())
            for name, r in zip(self.residual_names, residuals, strict=True)
        }
        return self.projector.run(None, feed)

    def projected(self, x: Tensor, pool: ReferencePool, chunk: int) -> list[np.ndarray]:
        """Normalised float [B,3,S,S] -> backbone -> residual against ``pool`` (torch, in
        chunks of ``chunk`` patches) -> projector: the anomaly representation per level."""
        return self.project(pool_residuals(self.raw(x), pool, chunk))
