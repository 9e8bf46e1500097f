"""A seconds-long pretraining run on generated MVTec-layout folders: loss, checkpoint, resume."""

from __future__ import annotations

import math

import pytest
import torch

from pretrain.checkpoint import load_checkpoint
from pretrain.data.toy import write_toy_category
from pretrain.train import TrainConfig, lr_milestones, resume_path, train


def test_lr_milestones_scale_with_epochs():
    assert lr_milestones(10) == [7, 9]
    assert lr_milestones(20) == [14, 18]
    assert lr_milestones(3) == [2]
    assert lr_milestones(1) == []


@pytest.fixture(scope="module")
def toy_roots(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    a = write_toy_category(root / "d1" / "a", n_train=12, defects={"x": 4}, size=(40, 32))
    b = write_toy_category(
        root / "d2" / "b", n_train=12, defects={"y": 4}, size=(36, 36), style=1, fmt="jpg", seed=1
    )
    return [a, b]


def _config(roots, out, **kw):
    base = dict(
        data=roots,
        out=out,
        epochs=2,
        batch_size=4,
        image_size=32,
        num_tokens=16,
        references_per_class=8,
        centre_images_per_class=8,
        val_fraction=0.25,
        device="cpu",
        progress=False,
    )
    return TrainConfig(**{**base, **kw})


def test_train_interrupt_then_resume(toy_roots, tmp_path):
    out = tmp_path / "ckpt" / "toy.pt"

    def stop_after_first_epoch(record):
        assert math.isfinite(record["train_loss"]) and record["train_loss"] > 0
        assert math.isfinite(record["val_loss"])
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_config(toy_roots, out), on_epoch=stop_after_first_epoch)
    assert out.is_file(), "the best checkpoint of epoch 1 must survive the interrupt"
    state = resume_path(out)
    assert state.is_file()
    assert not list(out.parent.glob("*.tmp")), "atomic writes leave no temporary file"
    first = torch.load(state, weights_only=True)
    assert first["epoch"] == 1

    result = train(_config(toy_roots, out, resume=True))
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert all(
        math.isfinite(h["train_loss"]) and math.isfinite(h["val_loss"]) for h in result.history
    )
    assert result.history[1]["lr"] == pytest.approx(1e-5)  # x0.1 at the scaled milestone
    assert result.best_epoch in (1, 2)

    raw = torch.load(out, map_location="cpu", weights_only=True)  # plain tensors and dicts only
    assert raw["config"]["selected_epoch"] == result.best_epoch
    ckpt = load_checkpoint(out, expect_backbone="mobilenet_v2")
    assert [h["epoch"] for h in ckpt.history] == [1, 2]
    assert [c["name"] for c in ckpt.data_summary["classes"]] == ["d1/a", "d2/b"]
    assert ckpt.config["training"]["image_size"] == 32
    assert ckpt.config["num_tokens"] == 16
    projector = ckpt.build_projector()
    assert all(torch.isfinite(p).all() for p in projector.parameters())
    assert len(ckpt.centres) == 3 and all(torch.isfinite(c).all() for c in ckpt.centres)


def test_resume_without_state_is_a_clear_error(toy_roots, tmp_path):
    with pytest.raises(FileNotFoundError, match="resume"):
        train(_config(toy_roots, tmp_path / "none.pt", resume=True))
