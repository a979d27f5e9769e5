"""The dependency rule, with no exceptions: ``shared`` imports no stage, the stages import ``shared`` only (never
each other), and ``zeus`` (the composition layer that wires them together) is imported by none of them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The rule, package by package: what it must never import. No file is exempt.
FORBIDDEN = {
    "shared": {"stage1_instruct", "stage2_segment", "zeus"},
    "stage1_instruct": {"stage2_segment", "zeus"},
    "stage2_segment": {"stage1_instruct", "zeus"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:  # relative: own package
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_respects_the_dependency_rule(package):
    files = list((ROOT / package).rglob("*.py"))
    assert files
    offenders = {str(p.relative_to(ROOT)): _imports(p) & FORBIDDEN[package] for p in files}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_checker_sees_a_forbidden_import(tmp_path):
    """The rule can fail: a file in ``shared`` that imports a stage is an offender."""
    (tmp_path / "shared").mkdir()
    bad = tmp_path / "shared" / "bad.py"
    bad.write_text("from stage2_segment.runs import RunFolder\nimport zeus.cli\n", encoding="utf-8")
    assert _imports(bad) & FORBIDDEN["shared"] == {"stage2_segment", "zeus"}


PACKAGES = ("shared", "stage1_instruct", "stage2_segment", "zeus")


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Project module -> the project modules it imports anywhere in the file, inside functions too (a deferred
    import hides a cycle from Python at import time, not from this graph). ``from a import b`` points at the
    module ``a.b`` where it exists, else at ``a``."""
    modules = {_module_name(p, root): p for package in PACKAGES for p in (root / package).rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                edges |= {alias.name for alias in node.names if alias.name in modules}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    child = f"{node.module}.{alias.name}"
                    edges |= {child} if child in modules else {node.module} & modules.keys()
        graph[name] = edges - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (its modules in order, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_no_module_imports_itself_through_others_not_even_from_inside_a_function():
    assert find_cycle(import_graph()) is None


def test_the_cycle_check_sees_a_cycle_hidden_in_a_function(tmp_path):
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "a.py").write_text("from shared.b import f\n", encoding="utf-8")
    (tmp_path / "shared" / "b.py").write_text("def f():\n    from shared import a\n", encoding="utf-8")
    for package in PACKAGES[1:]:
        (tmp_path / package).mkdir()
    assert find_cycle(import_graph(tmp_path)) == ["shared.a", "shared.b", "shared.a"]
