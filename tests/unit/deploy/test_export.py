"""TorchScript and ONNX exports of backbone and projector: parity with the torch model.

ONNX runs in onnxruntime here (< 1e-4); the config.pbtxt written for Triton's onnxruntime backend
is parsed back with Triton's protobuf schema (that backend is not in the tritonserver available
on this machine, so it is not served).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from tritonclient.grpc import model_config_pb2 as mc
from typer.testing import CliRunner

from deploy.export import example_inputs, export_onnx, export_torchscript
from deploy.triton_repo import read_config
from pretrain.checkpoint import load_feature_model, model_id, save_untrained

BACKBONE = "mobilenet_v2"
TOL = 1e-4


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "untrained.pt"
    # smaller than the shipped projector (256 reference tokens instead of 2048): same graph
    save_untrained(path, BACKBONE, num_tokens=256)
    return path


@pytest.fixture(scope="module")
def model(checkpoint):
    return load_feature_model(backbone=BACKBONE, checkpoint=checkpoint)


@pytest.fixture(scope="module")
def inputs(model):
    # batch 3: not the batch the graphs were traced with (2), so the batch axis must be dynamic
    return example_inputs(model, batch=3, seed=7)


@pytest.fixture(scope="module")
def reference(model, inputs):
    x, residuals = inputs
    with torch.inference_mode():
        levels = [t.numpy() for t in model.backbone(x)]
        projected = [t.numpy() for t in model.projector(residuals)]
    return levels, projected


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory, checkpoint) -> Path:
    out = tmp_path_factory.mktemp("onnx")
    export_onnx(out, backbone=BACKBONE, checkpoint=checkpoint, max_batch=8, kind="cpu")
    return out


def _max_abs(got: list[np.ndarray], want: list[np.ndarray]) -> float:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
    return max(float(np.abs(g - w).max()) for g, w in zip(got, want, strict=True))


def test_onnx_backbone_parity(onnx_dir, inputs, reference):
    x, _ = inputs
    session = ort.InferenceSession(
        str(onnx_dir / "adqc_backbone/1/model.onnx"), providers=["CPUExecutionProvider"]
    )
    assert [i.name for i in session.get_inputs()] == ["input"]
    assert session.get_inputs()[0].shape[0] == "batch"
    got = session.run(None, {"input": x.numpy()})
    assert _max_abs(got, reference[0]) < TOL


def test_onnx_projector_parity(onnx_dir, inputs, reference):
    _, residuals = inputs
    session = ort.InferenceSession(
        str(onnx_dir / "adqc_projector/1/model.onnx"), providers=["CPUExecutionProvider"]
    )
    names = [i.name for i in session.get_inputs()]
    assert names == [f"residual_{i}" for i in range(len(residuals))]
    got = session.run(None, {n: r.numpy() for n, r in zip(names, residuals, strict=True)})
    assert _max_abs(got, reference[1]) < TOL


def test_onnx_triton_configs(onnx_dir, checkpoint, reference):
    manifest = json.loads((onnx_dir / "export.json").read_text())
    assert manifest["model_id"] == model_id(checkpoint)
    backbone = read_config(onnx_dir / "adqc_backbone/config.pbtxt")
    projector = read_config(onnx_dir / "adqc_projector/config.pbtxt")
    for config in (backbone, projector):
        assert config.platform == "onnxruntime_onnx"
        assert config.max_batch_size == 8
        assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
        assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
        assert config.parameters["model_id"].string_value == manifest["model_id"]
    assert [list(t.dims) for t in backbone.input] == [[3, 224, 224]]
    shapes = [list(a.shape[1:]) for a in reference[0]]
    assert [list(t.dims) for t in backbone.output] == shapes
    assert [list(t.dims) for t in projector.input] == shapes
    assert [t.name for t in projector.output] == [f"projected_{i}" for i in range(len(shapes))]


def test_torchscript_parity(tmp_path, checkpoint, inputs, reference):
    spec = export_torchscript(tmp_path, backbone=BACKBONE, checkpoint=checkpoint)
    assert set(spec.files) == {"backbone.pt", "projector.pt"}
    x, residuals = inputs
    backbone = torch.jit.load(str(tmp_path / "backbone.pt"))
    projector = torch.jit.load(str(tmp_path / "projector.pt"))
    with torch.inference_mode():
        got_b = [t.numpy() for t in backbone(x)]
        got_p = [t.numpy() for t in projector(*residuals)]
    assert _max_abs(got_b, reference[0]) < TOL
    assert _max_abs(got_p, reference[1]) < TOL


def test_cli_exports(tmp_path, checkpoint):
    from adqc.cli import build_app

    runner = CliRunner()
    result = runner.invoke(
        build_app(),
        ["export", "torchscript", "--out", str(tmp_path / "ts"), "--checkpoint", str(checkpoint)],
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "ts" / "projector.pt").is_file()
    missing = runner.invoke(
        build_app(),
        ["export", "onnx", "--out", str(tmp_path / "x"), "--checkpoint", str(tmp_path / "no.pt")],
    )
    assert missing.exit_code == 1
    assert "no.pt" in missing.output
