"""The dependency rule of DESIGN.md: the stages never import each other; ``shared`` imports neither."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "shared": {"stage1_instruct", "stage2_segment"},
    "stage1_instruct": {"stage2_segment"},
    "stage2_segment": {"stage1_instruct"},
}
ALLOWED_TO_COMPOSE = {ROOT / "shared" / "cli.py"}  # the one composition root


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_respects_the_dependency_rule(package):
    files = [p for p in (ROOT / package).rglob("*.py") if p not in ALLOWED_TO_COMPOSE]
    assert files
    offenders = {str(p.relative_to(ROOT)): _imports(p) & FORBIDDEN[package] for p in files}
    assert {k: v for k, v in offenders.items() if v} == {}
