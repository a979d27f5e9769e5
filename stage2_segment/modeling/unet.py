"""The from-scratch baseline: a 2-D U-Net (MONAI's BasicUNet) on the same preprocessed slices, all
modalities as input channels, no text, same union softmax output."""

from __future__ import annotations

import torch
from torch import nn


class UNetBaseline(nn.Module):
    def __init__(self, num_modalities: int, num_targets: int, features: tuple[int, ...] = (16, 32, 64, 128, 256, 16)):
        super().__init__()
        from monai.networks.nets import BasicUNet

        self.net = BasicUNet(
            spatial_dims=2, in_channels=num_modalities, out_channels=num_targets + 1, features=features
        )

    def forward(self, images: torch.Tensor, text: torch.Tensor | None = None) -> torch.Tensor:
        """images BxMxSxS in [0, 1] -> logits Bx(T+1)xSxS (``text`` is ignored: the baseline has none)."""
        return self.net(images)

    def parameter_counts(self) -> dict[str, int]:
        return {"trainable": sum(p.numel() for p in self.parameters()), "frozen": 0}
