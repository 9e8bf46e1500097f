"""`adqc pretrain`: options documented, clear errors, a tiny run on generated folders."""

from __future__ import annotations

import re

from typer.testing import CliRunner

from adqc.cli import build_app
from pretrain.checkpoint import load_checkpoint
from pretrain.data.toy import write_toy_category

runner = CliRunner()

OPTIONS = (
    "--data", "--backbone", "--out", "--epochs", "--batch-size", "--image-size",
    "--synthetic-ratio", "--max-images-per-class", "--num-tokens", "--workers", "--seed",
    "--device", "--weights", "--val-fraction", "--resume", "--time-limit",
)  # fmt: skip


def _plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def test_help_documents_every_option():
    result = runner.invoke(build_app(), ["pretrain", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    text = _plain(result.output)
    for option in OPTIONS:
        assert option in text, option


def test_missing_folder_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope"
    result = runner.invoke(
        build_app(), ["pretrain", "--data", str(missing), "--out", str(tmp_path / "x.pt")]
    )
    assert result.exit_code == 2
    assert "nope" in _plain(result.output)
    assert not (tmp_path / "x.pt").exists()


def test_tiny_pretraining_run(tmp_path):
    a = write_toy_category(tmp_path / "d1" / "a", n_train=10, defects={"x": 3}, size=(32, 32))
    b = write_toy_category(tmp_path / "d2" / "b", n_train=10, defects={"y": 3}, style=1, seed=1)
    out = tmp_path / "out.pt"
    args = [
        "pretrain", "--data", str(a), "--data", str(b), "--out", str(out), "--epochs", "1",
        "--batch-size", "4", "--image-size", "32", "--num-tokens", "8", "--device", "cpu",
        "--val-fraction", "0.2", "--max-images-per-class", "6", "--seed", "3", "--no-progress",
    ]  # fmt: skip
    result = runner.invoke(build_app(), args)
    assert result.exit_code == 0, result.output
    ckpt = load_checkpoint(out, expect_backbone="mobilenet_v2")
    assert ckpt.config["selected_epoch"] == 1
    assert ckpt.config["training"]["seed"] == 3
    assert ckpt.data_summary["n_train"] + ckpt.data_summary["n_val"] == 12
