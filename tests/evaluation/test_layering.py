"""The evaluation harness sits above serving and the method: nothing below imports it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _imported(path: Path) -> set[str]:
    """Top-level package names a module imports (absolute imports only)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [("pretrain", {"evaluation", "inference", "ingest", "deploy", "adqc"}),
     ("inference", {"evaluation", "ingest", "deploy", "adqc"})],
)  # fmt: skip
def test_lower_packages_never_import_upper_ones(package, forbidden):
    offenders = {
        str(path.relative_to(ROOT)): sorted(_imported(path) & forbidden)
        for path in sorted((ROOT / package).rglob("*.py"))
    }
    assert {k: v for k, v in offenders.items() if v} == {}
