"""Where a result came from: package versions and the code revision, recorded by both stages."""

from __future__ import annotations

import importlib.metadata
import subprocess
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]  # the folder holding shared/, stage1_instruct/, ...
DISTRIBUTION = "zeus-seg"


def package_version(pip_name: str) -> str:
    try:
        return importlib.metadata.version(pip_name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def package_versions(*pip_names: str) -> dict[str, str]:
    return {name: package_version(name) for name in pip_names}


def git_revision() -> str:
    """The commit of the project's own checkout (not of whatever folder the command runs in); for an
    installed copy that is not a checkout, ``zeus-seg <version>``."""
    try:
        top = _git("rev-parse", "--show-toplevel")
        if Path(top).resolve() == PROJECT_ROOT:
            return _git("rev-parse", "HEAD")
    except (OSError, subprocess.CalledProcessError):
        pass
    return f"{DISTRIBUTION} {package_version(DISTRIBUTION)}"


def _git(*args: str) -> str:
    out = subprocess.run(
        ["git", "-C", str(PROJECT_ROOT), *args], capture_output=True, encoding="utf-8", check=True, timeout=10
    )
    return out.stdout.strip()
