"""The serving path imports no evaluation, demo, export or plotting package.

A worker image installs ``adqc[serve,triton]`` only, so importing what ``adqc serve`` runs must
not pull in matplotlib, onnx/onnxruntime, the demo data, scikit-learn or the evaluation harness.
Checked in a fresh interpreter (``sys.modules`` after the imports), so nothing else in the test
session can hide or cause a heavy import.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

SERVE_PATH = ("ingest.runtime", "ingest.loop", "ingest.messages", "inference.scorer")
NOT_FOR_SERVING = (
    "matplotlib",
    "onnx",
    "onnxruntime",
    "elpv_dataset",
    "sklearn",
    "evaluation",
    "benchmarks",
)
EXTRAS = {"matplotlib": "eval", "elpv_dataset": "demo", "sklearn": "train"}


def _loaded_after(modules: tuple[str, ...], extra: str = "") -> set[str]:
    code = (
        "import importlib, json, sys\n"
        f"for m in {list(modules)!r}: importlib.import_module(m)\n"
        f"{extra}\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_serve_path_imports_nothing_it_does_not_need() -> None:
    loaded = _loaded_after(SERVE_PATH)
    assert set(SERVE_PATH) and "ingest" in loaded and "inference" in loaded  # the probe ran
    assert loaded & set(NOT_FOR_SERVING) == set()


def test_the_cli_wiring_imports_nothing_heavy() -> None:
    """`adqc serve` first builds the whole CLI: mounting the commands must stay light too."""
    code = "from adqc.cli import build_app; build_app()"
    loaded = _loaded_after(("adqc.cli",), extra=code)
    assert "typer" in loaded
    assert loaded & set(NOT_FOR_SERVING) - {"evaluation", "benchmarks"} == set()


def test_the_probe_would_see_a_heavy_import() -> None:
    assert "matplotlib" in _loaded_after(("evaluation.report", "matplotlib.pyplot"))


@pytest.mark.parametrize(("module", "extra"), sorted(EXTRAS.items()))
def test_a_missing_extra_names_the_pip_extra(module: str, extra: str, monkeypatch) -> None:
    from pretrain.extras import MissingExtraError, require

    monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    with pytest.raises(MissingExtraError, match=rf"pip install 'adqc\[{extra}\]'"):
        require(module, extra)
