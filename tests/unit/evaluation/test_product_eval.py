"""`adqc eval` of the presets: onboarded exactly as `adqc product add` does, with the calibrated
operating point (a small synthetic category, the shipped checkpoint and weights)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from evaluation.product_eval import binomial_interval, operating_point


def test_binomial_interval_is_clopper_pearson() -> None:
    low, high = binomial_interval(1, 20)
    assert low == pytest.approx(0.001265, abs=1e-5) and high == pytest.approx(0.248730, abs=1e-5)
    assert binomial_interval(0, 20) == (0.0, pytest.approx(1 - 0.025 ** (1 / 20)))
    assert binomial_interval(20, 20) == (pytest.approx(0.025 ** (1 / 20)), 1.0)
    assert binomial_interval(0, 0) is None


def test_operating_point_counts_scores_above_the_threshold() -> None:
    scores = np.array([0.1, 0.5, 0.9, 0.4, 0.6, 2.0])
    labels = np.array([0, 0, 0, 1, 1, 1])
    point = operating_point(scores, labels, threshold=0.5)  # 0.5 itself does not alarm
    assert (point["false_alarms"], point["normals"]) == (1, 3)
    assert (point["detections"], point["defectives"]) == (2, 3)
    assert point["false_alarm_rate"] == pytest.approx(1 / 3)
    assert point["detection_rate_95"][0] < 2 / 3 < point["detection_rate_95"][1]
    empty = operating_point(scores[:3], labels[:3], 0.5)
    assert empty["detection_rate"] is None and empty["detection_rate_95"] is None


def _category(root: Path) -> Path:
    """MVTec layout: 6 good train images (smooth gradients with noise), 3 good and 3 defective
    test images (a bright square, with its mask)."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(40, 200, 128)[None, :, None] * np.ones((128, 1, 3))

    def image() -> np.ndarray:
        return np.clip(ramp + rng.normal(0, 4, ramp.shape), 0, 255).astype(np.uint8)

    for sub in ("train/good", "test/good", "test/spot", "ground_truth/spot"):
        (root / sub).mkdir(parents=True)
    for i in range(6):
        Image.fromarray(image()).save(root / "train/good" / f"{i:03d}.png")
    for i in range(3):
        Image.fromarray(image()).save(root / "test/good" / f"{i:03d}.png")
        spotted, mask = image(), np.zeros((128, 128), np.uint8)
        y, x = 20 + 30 * i, 30 + 25 * i
        spotted[y : y + 24, x : x + 24] = 255
        mask[y : y + 24, x : x + 24] = 255
        Image.fromarray(spotted).save(root / "test/spot" / f"{i:03d}.png")
        Image.fromarray(mask).save(root / "ground_truth/spot" / f"{i:03d}_mask.png")
    return root


def _said(output: str) -> str:
    """The CLI's output as one line, without the error box's borders."""
    return " ".join(output.replace("│", " ").split())


@pytest.fixture(scope="module")
def category(tmp_path_factory) -> Path:
    return _category(tmp_path_factory.mktemp("synthetic") / "part")


@pytest.mark.parametrize(("held_out", "size"), [(0, None), (2, None), (0, 96)])
def test_preset_eval_reports_the_threshold_product_add_sets(
    category: Path, tmp_path: Path, held_out: int, size: int | None
) -> None:
    from adqc.cli import build_app
    from inference.engines.local import LocalEngine
    from inference.onboarding import onboard
    from inference.store.embedded import MemoryStore

    out = tmp_path / "eval.json"
    args = ["eval", str(category), "--detector", "s8-patchcore", "--shots", "4"]
    args += ["--calibration-images", str(held_out), "--json", str(out), "--quiet"]
    args += ["--report", str(tmp_path / "report")]
    args += ["--image-size", str(size)] if size else []  # the product's own input size
    result = CliRunner().invoke(build_app(), args)
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    point = doc["operating_point"]

    good = sorted((category / "train/good").glob("*.png"))
    onboarded = onboard(
        LocalEngine(),
        MemoryStore(),
        "part",
        good[:4],
        shots=4,
        calibration_images=good[4 : 4 + held_out] or None,
        detector="s8-patchcore",
        image_size=size,
    )
    assert doc["detector"]["image_size"] == onboarded.record.image_size == (size or 256)
    assert point["threshold"] == pytest.approx(onboarded.record.calibration.threshold)
    assert point["method"] == ("held-out" if held_out else "leave-one-out")
    assert (point["normals"], point["defectives"]) == (3, 3)
    assert point["detections"] == 3 and doc["image_auroc"] == 1.0  # bright squares
    assert doc["pixel_auroc"] > 0.9 and doc["n_train"] == 4
    assert "calibrated threshold" in result.output
    page = (tmp_path / "report" / "index.html").read_text()
    assert "false-alarm rate at the calibrated threshold" in page


def test_preset_eval_refuses_what_the_preset_chooses_itself(category: Path, tmp_path: Path):
    from adqc.cli import build_app

    base = ["eval", str(category), "--shots", "4", "--json", str(tmp_path / "x.json")]
    cases = [
        (["--detector", "s8-patchcore", "--features", "raw"], "leave --features out"),
        (["--detector", "ensemble", "--image-size", "96"], "leave --image-size out"),
        (["--detector", "s8-patchcore", "--image-size", "100"], "a multiple of 16 from 64"),
        (["--detector", "patchcore"], "--features is required for patchcore"),
        (
            ["--detector", "patchcore", "--features", "raw", "--calibration-images", "2"],
            "--calibration-images is for the presets",
        ),
    ]
    for extra, message in cases:
        result = CliRunner().invoke(build_app(), base + extra)
        assert result.exit_code == 2 and message in _said(result.output), extra
    too_many = CliRunner().invoke(
        build_app(), base + ["--detector", "s8-patchcore", "--calibration-images", "5"]
    )
    assert too_many.exit_code == 2
    assert "--calibration-images 5 needs 9 train/good images" in _said(too_many.output)
    assert not (tmp_path / "x.json").exists()
