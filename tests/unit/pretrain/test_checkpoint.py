"""The one-file projector checkpoint: round trip, validation errors, untrained files, model ids."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest
import torch

from pretrain import checkpoint as ck
from pretrain.checkpoint import (
    CheckpointError,
    default_checkpoint,
    load_checkpoint,
    load_feature_model,
    model_id,
    save_checkpoint,
    save_untrained,
)
from pretrain.projector import FeatureProjector

CHANNELS = (64, 96, 320)  # mobilenet_v2


def untrained_checkpoint(tmp_path: Path, backbone: str = "mobilenet_v2") -> Path:
    """A small untrained checkpoint file (helper for tests that need one)."""
    return save_untrained(tmp_path / f"{backbone}-untrained.pt", backbone, num_tokens=16)


def trained_like(tmp_path: Path, **overrides) -> tuple[Path, FeatureProjector]:
    torch.manual_seed(4)
    projector = FeatureProjector(CHANNELS, num_tokens=16)
    path = tmp_path / "ckpt.pt"
    save_checkpoint(
        path,
        projector,
        {"backbone": "mobilenet_v2", "epochs": 3, **overrides},
        [torch.full((c,), 0.5) for c in CHANNELS],
        data_summary={"datasets": ["magnetic_tile/tile"], "images": 12},
        history=[{"epoch": 0, "loss": 1.5}],
    )
    return path, projector


def test_round_trip(tmp_path):
    path, projector = trained_like(tmp_path)
    raw = torch.load(path, weights_only=True)  # plain tensors/dicts only
    assert raw["format_version"] == ck.FORMAT_VERSION
    ckpt = load_checkpoint(path, expect_backbone="mobilenet_v2")
    assert ckpt.trained and ckpt.backbone == "mobilenet_v2"
    cfg = ckpt.config
    assert cfg["levels"] == ["features.10", "features.13", "features.17"]
    assert cfg["channels"] == list(CHANNELS) and cfg["image_size"] == 224
    assert cfg["num_tokens"] == 16 and cfg["num_heads"] == [8, 12, 16] and cfg["epochs"] == 3
    assert [c.shape for c in ckpt.centres] == [(c,) for c in CHANNELS]
    assert ckpt.data_summary["images"] == 12 and ckpt.history[0]["loss"] == 1.5
    rebuilt = ckpt.build_projector()
    assert not rebuilt.training
    xs = [torch.randn(1, c, 2, 2) for c in CHANNELS]
    projector.eval()
    with torch.no_grad():
        for a, b in zip(rebuilt(xs), projector(xs), strict=True):
            torch.testing.assert_close(a, b)


def test_validation_errors_name_the_file(tmp_path):
    path, _ = trained_like(tmp_path)
    with pytest.raises(CheckpointError, match=r"ckpt\.pt.*'mobilenet_v2'.*'efficientnet_lite0'"):
        load_checkpoint(path, expect_backbone="efficientnet_lite0")
    raw = torch.load(path, weights_only=True)
    raw["format_version"] = 99
    torch.save(raw, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match=r"future\.pt.*version 99"):
        load_checkpoint(tmp_path / "future.pt")
    raw = torch.load(path, weights_only=True)
    raw["config"]["channels"] = [32, 96, 320]
    torch.save(raw, tmp_path / "widths.pt")
    with pytest.raises(CheckpointError, match=r"widths\.pt.*mobilenet_v2"):
        load_checkpoint(tmp_path / "widths.pt")
    raw = torch.load(path, weights_only=True)
    raw["config"]["backbone"] = "resnet9000"
    torch.save(raw, tmp_path / "unknown.pt")
    with pytest.raises(CheckpointError, match=r"unknown\.pt.*resnet9000"):
        load_checkpoint(tmp_path / "unknown.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"junk\.pt"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"a": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not an adqc projector checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        load_checkpoint(tmp_path / "absent.pt")


def test_save_rejects_bad_inputs(tmp_path):
    projector = FeatureProjector(CHANNELS, num_tokens=4)
    centres = [torch.zeros(c) for c in CHANNELS]
    with pytest.raises(ValueError, match="backbone"):
        save_checkpoint(tmp_path / "a.pt", projector, {}, centres)
    with pytest.raises(CheckpointError, match="efficientnet_lite0"):
        save_checkpoint(tmp_path / "a.pt", projector, {"backbone": "efficientnet_lite0"}, centres)
    with pytest.raises(ValueError, match="centres"):
        save_checkpoint(tmp_path / "a.pt", projector, {"backbone": "mobilenet_v2"}, centres[:2])
    with pytest.raises(CheckpointError, match="image_size"):
        save_checkpoint(
            tmp_path / "a.pt", projector, {"backbone": "mobilenet_v2", "image_size": 256}, centres
        )
    with pytest.raises(TypeError, match="data_summary"):
        save_checkpoint(
            tmp_path / "a.pt", projector, {"backbone": "mobilenet_v2"}, centres, {"p": Path("x")}
        )
    assert not (tmp_path / "a.pt").exists()


def test_untrained_checkpoint_warns_and_loads_a_model(tmp_path, caplog):
    path = untrained_checkpoint(tmp_path)
    with caplog.at_level(logging.WARNING, logger="pretrain.checkpoint"):
        ckpt = load_checkpoint(path)
    assert not ckpt.trained and ckpt.config["trained"] is False
    assert "UNTRAINED" in caplog.text
    assert all(torch.count_nonzero(c) == 0 for c in ckpt.centres)
    # Same seed, same bytes, same model id.
    again = save_untrained(tmp_path / "again.pt", "mobilenet_v2", num_tokens=16)
    assert again.read_bytes() == path.read_bytes()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    assert model_id(path) == f"mobilenet_v2:{digest}"
    model = load_feature_model("mobilenet_v2", checkpoint=path)
    assert model.model_id == model_id(path)
    assert model.checkpoint.path == path
    assert model.projector is not None and not model.projector.training
    with pytest.raises(CheckpointError, match="efficientnet_lite0"):
        load_feature_model("efficientnet_lite0", checkpoint=path)


def test_default_checkpoint_location(monkeypatch, tmp_path):
    monkeypatch.setattr(ck, "CHECKPOINT_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="make pretrain"):
        default_checkpoint("mobilenet_v2")
    with pytest.raises(FileNotFoundError, match="make pretrain"):
        load_feature_model("mobilenet_v2")
    save_untrained(tmp_path / "mobilenet_v2.pt", num_tokens=8)
    assert default_checkpoint("mobilenet_v2") == tmp_path / "mobilenet_v2.pt"
    assert load_feature_model().model_id.startswith("mobilenet_v2:")
    with pytest.raises(KeyError):
        default_checkpoint("nope")
