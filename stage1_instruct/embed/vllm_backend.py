"""Embeddings from a pooling model served by vLLM (e.g. intfloat/e5-mistral-7b-instruct), L2-normalised."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from stage1_instruct.config import VllmOptions
from stage1_instruct.vllm_engine import engine


class VllmEmbedder:
    def __init__(self, model: str, options: VllmOptions):
        self.model, self.options = model, options
        self.model_id = model
        self._llm = None

    def _engine(self):
        if self._llm is None:
            self._llm = engine(self.model, self.options, runner="pooling")
        return self._llm

    @property
    def dim(self) -> int:
        return len(self._engine().embed(["dimension probe"], use_tqdm=False)[0].outputs.embedding)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        outputs = self._engine().embed(list(texts), use_tqdm=False)
        vectors = np.asarray([out.outputs.embedding for out in outputs], np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(min=1e-12)
