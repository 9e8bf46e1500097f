"""The benchmark suite's smoke mode (what CI runs): every stage and table is produced, from
synthetic images, with a small untrained checkpoint (timings are not asserted, only shape)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from adqc.cli import build_app
from pretrain.checkpoint import save_untrained

STAGES = {
    "decode+resize",
    "normalise",
    "backbone",
    "residual",
    "projector",
    "detector:featurenorm",
    "detector:patchcore",
    "maps+regions",
}


def test_bench_all_smoke_writes_every_stage(tmp_path):
    ckpt = save_untrained(tmp_path / "untrained.pt", num_tokens=16)
    from benchmarks import stages as stages_bench

    out = tmp_path / "perf"
    cfg = stages_bench.StagesConfig.smoke_config(data=None, checkpoint=str(ckpt), batches=(2,))
    result = stages_bench.run_stages(cfg)
    stages = {r["stage"] for r in result["stages"] if "ms_per_batch" in r}
    assert stages == STAGES
    assert all(r["images_per_s"] > 0 for r in result["stages"] if "ms_per_batch" in r)
    assert {r["stage"] for r in result["totals"]} == {"engine", "frame (featurenorm)"}
    assert result["images"] == "synthetic"
    assert result["search"]["residual"][0]["pool_patches"] == [196, 196, 49]
    assert 0.0 <= min(result["search"]["residual"][0]["same_neighbour_fraction"]) <= 1.0
    assert result["search"]["bank"][0]["max_rel_error"] < 0.1
    default = {r["stage"]: r for r in result["default_stages"]}  # the default's frame, CPU
    assert set(default) == {*stages_bench.DEFAULT_STAGES, "frame (s8-patchcore)"}
    frame = default["frame (s8-patchcore)"]
    parts = sum(default[s]["ms_per_batch"] for s in stages_bench.DEFAULT_STAGES)
    assert frame["ms_per_batch"] == pytest.approx(parts, abs=0.01) and frame["image_size"] == 256
    default_shape = result["search"]["bank"][-1]  # the default detector's search
    assert (default_shape["dim"], default_shape["bank_size"]) == (128, 512)
    assert default_shape["onnxruntime_max_abs_diff"] < 1e-3
    assert result["peak_rss_mb"] > 0 and len(result["load_average_start"]) == 3
    stages_bench.write_json(result, out / "stages-smoke.json")
    assert json.loads((out / "stages-smoke.json").read_text())["config"]["smoke"] is True


def test_bench_all_smoke_cli(tmp_path, monkeypatch):
    """`adqc bench all --smoke` end to end through the CLI (shipped checkpoint)."""
    out = tmp_path / "perf"
    result = CliRunner().invoke(
        build_app(), ["bench", "all", "--smoke", "--out", str(out), "--data", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    suite = json.loads((out / "suite-smoke.json").read_text())
    assert suite["runs"]["stages"]["rc"] == 0
    assert (out / "stages-smoke.json").is_file()
    bad = CliRunner().invoke(build_app(), ["bench", "all", "--smoke", "--out", str(out),
                                           "--with", "nope"])  # fmt: skip
    assert bad.exit_code != 0
    assert "scaling" in bad.output and "io" in bad.output  # the suite knows the new benches


def test_bench_onboarding_refuses_a_detector_it_does_not_time(tmp_path):
    """A usage error naming the choices, before any image or model is loaded (no traceback)."""
    result = CliRunner().invoke(
        build_app(),
        ["bench", "onboarding", "--detector", "ensemble", "--json", str(tmp_path / "o.json")],
    )
    assert result.exit_code == 2
    assert "s8-patchcore" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o.json").exists()
