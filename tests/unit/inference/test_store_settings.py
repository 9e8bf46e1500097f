"""One store-URL setting for every entry point: ADQC_STORE__URL; the old names still work
with a one-line deprecation warning that names the new one."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from adqc.cli import build_app
from inference.store import open_store
from inference.store import settings as store_settings
from inference.store.settings import store_url


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in ("ADQC_STORE__URL", "ADQC_STORE", "ADQC_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(store_settings, "_warned", set())


def test_the_one_name_wins_over_the_default(monkeypatch, capfd):
    assert store_url(None, "file:///default") == "file:///default"
    monkeypatch.setenv("ADQC_STORE__URL", "memory://one")
    assert store_url(None, "file:///default") == "memory://one"
    assert store_url("memory://explicit", "file:///default") == "memory://explicit"
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize("old", ["ADQC_STORE", "ADQC_REDIS_URL"])
def test_old_names_are_read_with_a_one_line_warning(monkeypatch, capfd, old):
    monkeypatch.setenv(old, "memory://old")
    assert store_url(None, "file:///default") == "memory://old"
    assert store_url(None, "file:///default") == "memory://old"
    warning = capfd.readouterr().err
    assert warning == f"warning: {old} is deprecated; use ADQC_STORE__URL\n"  # once, one line


def test_new_name_wins_over_an_old_one(monkeypatch, capfd):
    monkeypatch.setenv("ADQC_STORE", "memory://old")
    monkeypatch.setenv("ADQC_STORE__URL", "memory://new")
    assert store_url(None, "x://") == "memory://new"
    assert "ADQC_STORE__URL is set and wins" in capfd.readouterr().err


def test_bad_scheme_names_the_variable(monkeypatch):
    monkeypatch.setenv("ADQC_STORE__URL", "ftp://x")
    with pytest.raises(ValueError, match="ADQC_STORE__URL: .*expected redis://"):
        store_url(None, "memory://")


def test_serve_settings_read_the_old_name_too(monkeypatch, capfd):
    """`adqc serve` used to fail on ADQC_STORE (parsed as the JSON of the store section)."""
    from ingest.settings import load_settings

    monkeypatch.setenv("ADQC_STORE", "file:///var/adqc")
    assert load_settings().store.url == "file:///var/adqc"
    assert "use ADQC_STORE__URL" in capfd.readouterr().err
    monkeypatch.setenv("ADQC_STORE__URL", "memory://x")
    assert load_settings().store.url == "memory://x"


def test_product_commands_use_the_serve_settings_name(monkeypatch, record_factory):
    monkeypatch.setenv("ADQC_STORE__URL", "memory://shared-with-serve")
    with open_store("memory://shared-with-serve") as store:
        store.publish(record_factory())
    result = CliRunner().invoke(build_app(), ["product", "list", "--json"])
    assert result.exit_code == 0, result.output
    assert [row["product"] for row in json.loads(result.output)] == ["widget"]
