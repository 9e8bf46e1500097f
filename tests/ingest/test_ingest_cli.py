"""The ingest commands' argument handling and errors (no servers)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from adqc.cli import build_app
from ingest.camera import CameraSimulator, list_images

runner = CliRunner()


def test_serve_check_reports_bad_settings_by_field(tmp_path: Path) -> None:
    path = tmp_path / "serve.yaml"
    path.write_text("batch:\n  size: -1\n")
    result = runner.invoke(build_app(), ["serve", "--config", str(path), "--check"])
    assert result.exit_code == 2
    assert "batch.size" in result.output and str(path) in result.output


def test_serve_example_config_checks_ok(tmp_path: Path) -> None:
    example = runner.invoke(build_app(), ["serve", "--print-example"])
    assert example.exit_code == 0
    path = tmp_path / "serve.yaml"
    path.write_text(example.output)
    result = runner.invoke(build_app(), ["serve", "--config", str(path), "--check"])
    assert result.exit_code == 0, result.output
    assert "settings OK" in result.output


def test_camera_simulate_rejects_an_empty_source(tmp_path: Path) -> None:
    result = runner.invoke(
        build_app(), ["camera", "simulate", "--source", str(tmp_path), "--product", "p"]
    )
    assert result.exit_code == 2
    assert "no .png/.jpg/.jpeg images" in result.output


def test_camera_messages_carry_headers_and_bytes(tmp_path: Path) -> None:
    for i, suffix in enumerate((".png", ".jpg")):
        Image.fromarray(np.full((20, 30, 3), i * 50, np.uint8)).save(tmp_path / f"{i}{suffix}")
    (tmp_path / "notes.txt").write_text("not an image")
    paths = list_images(tmp_path)
    assert [p.name for p in paths] == ["0.png", "1.jpg"]
    sim = CameraSimulator(None, "frames", "bottle", line="l2", camera="cam-9")  # type: ignore[arg-type]
    key, value, headers = sim.message(paths[1], 5)
    assert key == b"cam-9" and value == paths[1].read_bytes()
    assert headers.content_type == "image/jpeg" and (headers.width, headers.height) == (30, 20)
    assert headers.product == "bottle" and headers.line == "l2"
    assert headers.frame_id.endswith("0000005") and headers.traceparent
    claim = CameraSimulator(None, "frames", "bottle", claim_check=True)  # type: ignore[arg-type]
    _, uri, hdrs = claim.message(paths[0], 0)
    assert uri == paths[0].resolve().as_uri().encode() and hdrs.content_type == "text/uri-list"


def test_serve_check_loads_the_checkpoint_and_fails_when_it_is_unloadable(tmp_path: Path) -> None:
    from pretrain.checkpoint import save_untrained

    good = tmp_path / "good.pt"
    save_untrained(good, "mobilenet_v2", num_tokens=64)
    path = tmp_path / "serve.yaml"
    path.write_text(f"engine:\n  kind: local\n  checkpoint: {good}\n")
    ok = runner.invoke(build_app(), ["serve", "--config", str(path), "--check"])
    assert ok.exit_code == 0, ok.output
    assert "engine loads (mobilenet_v2:" in ok.output

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch checkpoint at all")
    for checkpoint, backbone, expected in (
        (garbage, "mobilenet_v2", "cannot be read"),
        (good, "wide_resnet50_2", "expected 'wide_resnet50_2'"),
    ):
        path.write_text(
            f"engine:\n  kind: local\n  backbone: {backbone}\n  checkpoint: {checkpoint}\n"
        )
        bad = runner.invoke(build_app(), ["serve", "--config", str(path), "--check"])
        assert bad.exit_code == 2, bad.output
        assert "engine.checkpoint" in bad.output and expected in bad.output
        assert str(checkpoint) in bad.output.replace("\n", "")


def test_tools_refuse_incomplete_kafka_security_settings(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "0.png")
    result = runner.invoke(
        build_app(),
        ["camera", "simulate", "--source", str(tmp_path), "--product", "p"]
        + ["--security-protocol", "SASL_SSL", "--sasl-username", "u"],
        env={"ADQC_KAFKA__SASL_PASSWORD": ""},
    )
    assert result.exit_code == 2, result.output
    assert "needs sasl_mechanism" in result.output
    missing = runner.invoke(
        build_app(),
        ["alarms", "tail", "--security-protocol", "SSL", "--ssl-cafile", str(tmp_path / "no.pem")],
    )
    assert missing.exit_code == 2, missing.output
    assert "ssl_cafile" in missing.output and "does not exist" in missing.output
