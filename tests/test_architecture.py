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
