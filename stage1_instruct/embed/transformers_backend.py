"""Embeddings from any transformers ``AutoModel`` text encoder: mean pooling over the last hidden state."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from stage1_instruct.embed import model_path


class TransformersEmbedder:
    def __init__(self, model: str | None = None, *, batch_size: int = 64, max_length: int = 256):
        self.path = model_path(model)
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
