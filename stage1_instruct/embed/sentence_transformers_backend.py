"""Embeddings from sentence-transformers: any model folder; default all-MiniLM-L6-v2 (384-d) from PyPI."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from stage1_instruct.embed import model_path


class SentenceTransformersEmbedder:
    def __init__(self, model: str | None = None, *, batch_size: int = 64):
        self.path = model_path(model)
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
