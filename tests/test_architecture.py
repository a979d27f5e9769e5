"""The dependency rule, with no exceptions: ``shared`` imports no stage, the stages import ``shared`` only (never
each other), and ``zeus`` (the composition layer that wires them together) is imported by none of them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = {"zeus", "shared", "stage1_instruct", "stage2_segment"}
ALLOWED = {
    "zeus": {"zeus", "shared", "stage1_instruct", "stage2_segment"},
    "stage1_instruct": {"stage1_instruct", "shared"},
    "stage2_segment": {"stage2_segment", "shared"},
    "shared": {"shared"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            names.add(path.relative_to(ROOT).parts[0])  # relative: the file's own package
    return names


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_the_rule_allows(package):
    files = list((ROOT / package).rglob("*.py"))
    assert files
    offenders = {str(p.relative_to(ROOT)): (_imports(p) & PROJECT) - ALLOWED[package] for p in files}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_checker_sees_a_forbidden_import(tmp_path):
    """The rule can fail: a file in ``shared`` that imports a stage is an offender."""
    (tmp_path / "shared").mkdir()
    bad = tmp_path / "shared" / "bad.py"
    bad.write_text("from stage2_segment.runs import RunFolder\nimport zeus.cli\n", encoding="utf-8")
    assert (_imports(bad) & PROJECT) - ALLOWED["shared"] == {"stage2_segment", "zeus"}
