"""The house rule: imports point down only, and no module imports itself back.

    adqc  ->  benchmarks  ->  ingest / evaluation / deploy  ->  inference  ->  pretrain

Every import counts, including lazy ones inside functions and `importlib.import_module("...")`
with a literal name; `if TYPE_CHECKING:` blocks count too (they still tie the layers). The three
middle packages do not import each other; the benchmark drivers (benchmarks/) sit between the
CLI root and them, and nothing below imports them. Module-level imports (the ones that run at
import time) must not form a cycle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("adqc", "benchmarks", "ingest", "evaluation", "deploy", "inference", "pretrain")
# What each package may import from the others (its own modules are always allowed).
ALLOWED: dict[str, set[str]] = {
    "adqc": {"benchmarks", "ingest", "evaluation", "deploy", "inference", "pretrain"},
    "benchmarks": {"ingest", "evaluation", "deploy", "inference", "pretrain"},
    "ingest": {"inference", "pretrain"},
    "evaluation": {"inference", "pretrain"},
    "deploy": {"inference", "pretrain"},
    "inference": {"pretrain"},
    "pretrain": set(),
}


def _module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module an ImportFrom names (relative imports resolved against `module`)."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(
    path: Path, *, top_level_only: bool = False, root: Path = ROOT
) -> Iterator[tuple[int, str]]:
    """(line, absolute module) for each import in a file; with `top_level_only`, only those run
    at import time (module body, including `try`/`if` blocks, but not functions or classes)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    module, is_package = _module_name(path, root), path.name == "__init__.py"
    if top_level_only:
        nodes: list[ast.AST] = []
        todo: list[ast.AST] = list(tree.body)
        while todo:
            node = todo.pop()
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                continue
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            nodes.append(node)
            todo.extend(ast.iter_child_nodes(node))
    else:
        nodes = list(ast.walk(tree))
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, is_package, node)
            yield node.lineno, base
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                yield node.lineno, f"{base}.{alias.name}"
        elif (
            not top_level_only
            and isinstance(node, ast.Call)
            and ast.unparse(node.func) in {"importlib.import_module", "import_module"}
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield node.lineno, node.args[0].value


def _sources() -> list[Path]:
    return [p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))]


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_point_down_only(package: str) -> None:
    offenders = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, name in _imports(path):
            top = name.split(".")[0]
            if top in PACKAGES and top != package and top not in ALLOWED[package]:
                offenders.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert offenders == [], f"{package} may import only {sorted(ALLOWED[package])}"


def test_the_scanner_sees_lazy_relative_and_dynamic_imports(tmp_path: Path) -> None:
    """The scan catches what a lazy, relative or dynamic import hides (else it checks nothing)."""
    probe = tmp_path / "ingest" / "probe.py"
    probe.parent.mkdir()
    probe.write_text(
        "import importlib\n"
        "from . import loop\n"
        "def f():\n"
        "    from ..adqc import cli\n"
        "    import evaluation.runner\n"
        "    importlib.import_module('deploy.servers')\n"
    )
    names = {n for _, n in _imports(probe, root=tmp_path)}
    assert {"ingest.loop", "adqc.cli", "evaluation.runner", "deploy.servers"} <= names
    top = {n for _, n in _imports(probe, top_level_only=True, root=tmp_path)}
    assert top == {"importlib", "ingest", "ingest.loop"}


def test_no_import_cycles_between_modules() -> None:
    """Module-level imports form no cycle (a cycle breaks whichever module is imported first)."""
    modules = {_module_name(p): p for p in _sources()}
    graph = {
        name: {
            target
            for _, imported in _imports(path, top_level_only=True)
            for target in [imported]
            if target in modules and target != name
        }
        for name, path in modules.items()
    }
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_cycles() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every back edge of a depth-first walk, as the cycle it closes."""
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)
    return cycles
