"""CLI conventions (docs/OPERATIONS.md "CLI conventions"): a light `adqc --help`, defaults and
choices in help, one option vocabulary, one-line failures with consistent exit codes."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap

import pytest
import typer
from typer.testing import CliRunner

from adqc.cli import build_app

runner = CliRunner()
WIDE = {"COLUMNS": "240"}
#: modules `adqc --help` must not import (each costs seconds or needs a server library)
HEAVY = ("torch", "torchvision", "scipy", "sklearn", "kafka", "tritonclient", "redis", "cv2")


def _commands() -> dict[str, object]:
    """Every leaf command of the app, by its full name ('product add', ...)."""
    root = typer.main.get_command(build_app())
    ctx = root.make_context("adqc", [], resilient_parsing=True)
    found: dict[str, object] = {}

    def walk(command, path):  # type: ignore[no-untyped-def]
        if hasattr(command, "list_commands"):
            for name in command.list_commands(ctx):
                walk(command.get_command(ctx, name), [*path, name])
        else:
            found[" ".join(path)] = command

    walk(root, [])
    return found


def test_help_imports_no_heavy_module():
    """Counted, not timed: building every command (what --help does) imports none of HEAVY."""
    code = textwrap.dedent(
        """
        import json, sys
        import typer
        import adqc.cli
        typer.main.get_command(adqc.cli.build_app())
        print(json.dumps(sorted(sys.modules)))
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    loaded = set(json.loads(done.stdout))
    assert not [m for m in HEAVY if m in loaded]
    assert len(loaded) < 600, f"{len(loaded)} modules imported by `adqc --help`"


def test_product_default_target_far_matches_calibration():
    from inference.calibration import DEFAULT_TARGET_FAR
    from inference.cli import DEFAULT_TARGET_FAR as CLI_DEFAULT

    assert CLI_DEFAULT == DEFAULT_TARGET_FAR


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (
            "product add",
            [
                "s8-patchcore|ensemble|featurenorm|patch",
                "[default: s8-patchcore]",
                "$ADQC_STORE__URL",
            ],
        ),
        ("eval", ["featurenorm|patchcore|padim"]),
        ("export triton", ["auto|gpu|cpu", "[default: auto]", "$ADQC_STORE__URL"]),
        ("demo", ["1200 for the elpv cells", "cores, max 4", "[default: s8-patchcore]"]),
    ],
)
def test_help_shows_defaults_and_choices(command, expected):
    result = runner.invoke(build_app(), [*command.split(), "--help"], env=WIDE)
    assert result.exit_code == 0
    for text in expected:
        assert text in result.output, f"{text!r} missing from `adqc {command} --help`"


#: old spelling -> the one spelling (docs/OPERATIONS.md); the old ones stay as hidden aliases
RENAMED = {"--method": "--detector", "--methods": "--detectors", "--batch": "--batch-size",
           "--count": "--limit", "--max": "--limit"}  # fmt: skip


def test_one_vocabulary_across_commands():
    visible: dict[str, list[str]] = {}
    for name, command in _commands().items():
        for param in command.params:
            if getattr(param, "hidden", False):
                continue
            for opt in getattr(param, "opts", []):
                visible.setdefault(opt, []).append(name)
    old = {opt: where for opt, where in visible.items() if opt in RENAMED}
    assert not old, f"old option spellings still shown: {old}"
    assert {"eval", "bench accuracy", "product add", "demo"} & set(
        visible["--detector"] + visible["--detectors"]
    )
    assert {"camera simulate", "alarms tail"} <= set(visible["--limit"])
    assert {"bench triton", "bench pipeline"} <= set(visible["--batch-size"])


def test_old_spellings_still_work_with_a_warning():
    from inference.cli_conventions import pick

    assert pick(None, 5, "--limit", "--count", None) == 5
    assert pick(7, None, "--limit", "--count", None) == 7
    assert pick(None, None, "--limit", "--count", 3) == 3
    with pytest.raises(typer.Exit) as exc:
        pick(1, 2, "--limit", "--count", None)
    assert exc.value.exit_code == 2
    args = ["eval", "/nonexistent", "--features", "raw", "--method", "featurenorm"]
    result = runner.invoke(build_app(), [*args, "--shots", "2", "--json", "x.json"])
    assert "--method is deprecated; use --detector" in result.output
    assert result.exit_code == 2 and "Traceback" not in result.output


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(
    "args",
    [
        ["camera", "simulate", "--source", "{images}", "--product", "p"],
        ["alarms", "tail"],
    ],
)
def test_kafka_unreachable_is_one_line_exit_1(args, tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image

    import ingest.cli

    monkeypatch.setattr(ingest.cli, "CONNECT_TIMEOUT_S", 1.0)
    for name in [n for n in list(__import__("os").environ) if n.startswith("ADQC_KAFKA")]:
        monkeypatch.delenv(name)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "a.png")
    args = [a.replace("{images}", str(tmp_path)) for a in args]
    bootstrap = f"127.0.0.1:{_free_port()}"
    result = runner.invoke(build_app(), [*args, "--bootstrap", bootstrap])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: no Kafka broker answered at " + bootstrap)
    assert "--bootstrap" in lines[0]


def test_exit_codes(tmp_path):
    """2: usage / bad input; 1: runtime (a server unreachable). 3 (credentials) is tested with
    real servers (tests/inference/test_store_security.py, tests/ingest/test_kafka_security.py)."""
    app = build_app()
    assert runner.invoke(app, ["product", "add", "x", "--nope"]).exit_code == 2
    assert (
        runner.invoke(app, ["product", "add", "x", "--images", "d", "--detector", "knn"]).exit_code
        == 2
    )
    store = f"file://{tmp_path}"
    assert runner.invoke(app, ["product", "show", "ghost", "--store", store]).exit_code == 2
    assert (
        runner.invoke(app, ["export", "triton", "--out", str(tmp_path), "--kind", "tpu"]).exit_code
        == 2
    )
    no_output = ["eval", str(tmp_path), "--features", "raw", "--detector", "padim", "--shots", "2"]
    result = runner.invoke(app, no_output)  # neither --json nor --report: said before any work
    assert result.exit_code == 2 and "--json FILE, --report DIR, or both" in result.output
    down = f"redis://127.0.0.1:{_free_port()}/0?retries=0"
    result = runner.invoke(app, ["product", "list", "--store", down])
    assert result.exit_code == 1 and "unreachable" in result.output
    assert len([ln for ln in result.stderr.splitlines() if ln.strip()]) == 1
