"""Where a result came from: package versions and the code revision, recorded by both stages."""

from __future__ import annotations

import importlib.metadata
import subprocess


def package_version(pip_name: str) -> str:
    try:
        return importlib.metadata.version(pip_name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def package_versions(*pip_names: str) -> dict[str, str]:
    return {name: package_version(name) for name in pip_names}


def git_revision() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, encoding="utf-8", check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
