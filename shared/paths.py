"""Names and paths that come from data or options: a case id is a safe file name, and a path built from data
stays inside the folder it belongs to (dataset root, workspace, output folder). One rule for every reader and
writer, so a hostile ``dataset.json``, file name or ``--case`` cannot make Zeus read or write elsewhere."""

from __future__ import annotations

import os
import re
from pathlib import Path

from shared.errors import ZeusError

# A letter or digit first (so never "." or ".."), then letters, digits, ".", "_" or "-"; no separators.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
SAFE_NAME_RULE = "1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit"


def is_safe_name(name: str) -> bool:
    return isinstance(name, str) and SAFE_NAME.fullmatch(name) is not None


def check_name(name: str, what: str, source: str | Path | None = None) -> str:
    """``name`` itself if it can be one file or folder name; else a ``ZeusError`` naming where it came from."""
    if not is_safe_name(name):
        where = f" (from {source})" if source else ""
        raise ZeusError(f"{what} {name!r}{where} is not a safe name: a {what} is {SAFE_NAME_RULE}")
    return name


def check_case_id(case_id: str, source: str | Path | None = None) -> str:
    return check_name(case_id, "case id", source)


def output_folder(path: Path, option: str) -> Path:
    """A folder to write into, checked before any work (and not created yet): never a file, and writable (or,
    while missing, inside a writable folder)."""
    if path.exists() and not path.is_dir():
        raise ZeusError(f"{option} {path} is a file: give a folder to write into")
    existing = next(p for p in (path, *path.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise ZeusError(f"{option} {path} cannot be created: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ZeusError(f"{option} {path} is not writable ({existing} is not): choose another folder")
    return path


def output_file(path: Path, option: str) -> Path:
    """A file to write, checked before any work: not a folder, its folder created and writable."""
    if path.is_dir():
        raise ZeusError(f"{option} {path} is a folder: give a file path")
    output_folder(path.parent, f"the folder of {option}")
    return path


def inside(root: Path, path: Path, what: str) -> Path:
    """``path`` if it resolves (symbolic links followed) to a place within ``root``; else a ``ZeusError``."""
    resolved, base = path.resolve(), root.resolve()
    if resolved != base and base not in resolved.parents:
        raise ZeusError(f"{what} {path} leads outside {root} (to {resolved}): paths from data must stay inside it")
    return path
