"""Learned fusion: of the modalities' image embeddings (hybrid) and mask logits (late), and of a slice's embedding
with its neighbours' (slice context)."""

from __future__ import annotations

import torch
from torch import nn


class EmbeddingFusion(nn.Module):
    """BxMx256x64x64 per-modality embeddings -> Bx256x64x64.

    Starts as the mean over modalities (the residual branch is zero-initialised), so the pretrained decoder
    sees in-distribution embeddings on step one, then learns cross-modal mixing with a 1x1 convolution.
    """

    def __init__(self, num_modalities: int, embed_dim: int = 256):
        super().__init__()
        self.mix = nn.Conv2d(num_modalities * embed_dim, embed_dim, kernel_size=1)
        nn.init.zeros_(self.mix.weight)
        nn.init.zeros_(self.mix.bias)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        b, m, c, h, w = embeddings.shape
        return embeddings.mean(dim=1) + self.mix(embeddings.reshape(b, m * c, h, w))


class LogitFusion(nn.Module):
    """BxMxTxHxW per-modality logits -> BxTxHxW, a softmax-weighted sum over modalities (equal at start)."""

    def __init__(self, num_modalities: int):
        super().__init__()
        self.weights = nn.Parameter(torch.zeros(num_modalities))

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.einsum("m,bmthw->bthw", self.weights.softmax(dim=0), logits)


class SliceContext(nn.Module):
    """A slice's embedding Bx256x64x64 and its neighbours' BxNx256x64x64 (N = 2k: the k slices on either side)
    -> Bx256x64x64 that has seen the neighbours (2.5-D context).

    The decoder sees one slice, but whether an organ is on a slice at all is often clearer from the slices
    around it (above the liver dome the lungs, below it the bowel). Starts as the slice's own embedding (the
    residual branch is zero-initialised), so the pretrained decoder sees in-distribution embeddings on step
    one, then learns with a 1x1 convolution what to take from the neighbours.
    """

    def __init__(self, neighbours: int, embed_dim: int = 256):
        super().__init__()
        self.mix = nn.Conv2d(neighbours * embed_dim, embed_dim, kernel_size=1)
        nn.init.zeros_(self.mix.weight)
        nn.init.zeros_(self.mix.bias)

    def forward(self, embedding: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
        b, n, c, h, w = neighbours.shape
        return embedding + self.mix(neighbours.reshape(b, n * c, h, w))
