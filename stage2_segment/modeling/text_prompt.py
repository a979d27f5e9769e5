"""The paper's f_tt: an instruction embedding becomes a few sparse prompt tokens for the SAM decoder."""

from __future__ import annotations

import torch
from torch import nn


class TextPromptProjector(nn.Module):
    """BxD instruction embeddings -> BxKx256 sparse prompt tokens.

    A fixed number of tokens K: SAM's attention has no padding mask, so prompts are never padded sequences.
    """

    def __init__(self, text_dim: int, num_tokens: int = 2, embed_dim: int = 256, hidden_dim: int = 512):
        super().__init__()
        self.num_tokens, self.embed_dim = num_tokens, embed_dim
        self.mlp = nn.Sequential(
            nn.Linear(text_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, num_tokens * embed_dim),
        )
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, text_embeddings: torch.Tensor) -> torch.Tensor:
        if text_embeddings.ndim != 2:
            raise ValueError(f"expected BxD text embeddings, got shape {tuple(text_embeddings.shape)}")
        tokens = self.mlp(text_embeddings).view(-1, self.num_tokens, self.embed_dim)
        return self.norm(tokens)
