"""Where generated artefacts live: everything under one root, ``ZEUS_HOME`` (default ``.zeus/``)."""

from __future__ import annotations

import os
import re
from pathlib import Path


def zeus_home() -> Path:
    return Path(os.environ.get("ZEUS_HOME", ".zeus")).expanduser()


def preprocessed_dir(dataset: str) -> Path:
    return zeus_home() / "preprocessed" / dataset


def instructions_dir(dataset: str) -> Path:
    return zeus_home() / "instructions" / dataset


def features_dir(dataset: str, encoder: str | None = None) -> Path:
    """One encoder's image-embedding cache of a dataset (all encoders' folders without ``encoder``)."""
    folder = zeus_home() / "features" / dataset
    return folder / encoder if encoder else folder


def runs_dir(dataset: str | None = None) -> Path:
    """A dataset's run folders (every dataset's without ``dataset``)."""
    return zeus_home() / "runs" / dataset if dataset else zeus_home() / "runs"


def splits_path(dataset: str) -> Path:
    return zeus_home() / "splits" / f"{dataset}.json"


def demo_dir() -> Path:
    return zeus_home() / "demo"


def slug(name: str) -> str:
    """A name safe in file names: lower case, runs of anything but letters and digits as one ``_``."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
