"""Switching the engine kind of the example config (issue 13: `engine.backbone: Extra inputs
are not permitted` when Triton was switched on)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ingest.settings import SettingsError, example_yaml, load_settings


def _example(tmp_path: Path, **engine: object) -> Path:
    data = yaml.safe_load(example_yaml())
    data["engine"].update(engine)
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_example_switched_to_triton_in_the_file(tmp_path: Path) -> None:
    settings = load_settings(_example(tmp_path, kind="triton", url="triton:8001"))
    assert settings.engine.kind == "triton"
    assert settings.engine.url == "triton:8001"


def test_example_switched_to_triton_by_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ADQC_ENGINE__KIND", "triton")
    monkeypatch.setenv("ADQC_ENGINE__URL", "10.0.0.7:8001")
    settings = load_settings(_example(tmp_path))
    assert (settings.engine.kind, settings.engine.url) == ("triton", "10.0.0.7:8001")


def test_a_changed_setting_of_the_other_kind_is_still_an_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(_example(tmp_path, kind="triton", backbone="resnet18"))
    assert "engine.backbone: Extra inputs are not permitted: a setting of engine kind 'local'" in (
        str(err.value)
    )
    with pytest.raises(SettingsError, match="engine.url: .*engine kind 'triton', not 'local'"):
        load_settings(None, engine={"kind": "local", "url": "elsewhere:8001"})


def test_unknown_engine_keys_are_still_rejected(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="engine.bogus"):
        load_settings(_example(tmp_path, kind="triton", bogus=1))


def test_example_says_how_to_switch() -> None:
    text = example_yaml()
    assert "# engine.kind: local" in text and "triton" in text
    assert yaml.safe_load(text)["engine"]["kind"] == "local"


def test_triton_stride8_model_setting(tmp_path: Path) -> None:
    """The default detector's stride-8 features come from Triton unless switched off ('')."""
    settings = load_settings(_example(tmp_path, kind="triton", url="t:8001"))
    assert settings.engine.stride8_model == "adqc_stride8"
    off = load_settings(_example(tmp_path, kind="triton", url="t:8001", stride8_model=""))
    assert off.engine.stride8_model == ""
