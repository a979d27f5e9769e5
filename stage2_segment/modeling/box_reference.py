"""The box-prompted reference: frozen LiteMedSAM prompted, per slice and target, with the ground truth's
bounding box (+ a margin) — what a clinician drawing boxes would get. It uses the ground truth at test time,
so it is a reference to compare against, never a method: it cannot segment a new scan.

Nothing is trained: the prompt encoder and mask decoder keep LiteMedSAM's weights. For each target whose
box exists on a slice, the decoder's single mask is its logit map; targets without a box get a very low
logit; with a background logit of 0, the class map is the argmax (overlaps go to the most confident box).
"""

from __future__ import annotations

import torch
from torch import nn

from stage2_segment.modeling.decoder import INPUT_SIZE, build_mask_decoder, build_prompt_encoder

BOX_MARGIN = 5  # pixels of the 256-px model slice added on every side of the ground-truth box
ABSENT = -1e4  # logit of a target that has no box on a slice


def boxes_from_labels(labels: torch.Tensor, num_targets: int, margin: int = BOX_MARGIN) -> torch.Tensor:
    """labels BxSxS class indices (0 background, t + 1 target t) -> boxes BxTx4 (x0, y0, x1, y1) in model-slice
    pixels, grown by ``margin`` and clipped to the slice; NaN rows where the target is absent."""
    b, h, w = labels.shape
    boxes = torch.full((b, num_targets, 4), float("nan"))
    for i in range(b):
        for t in range(num_targets):
            ys, xs = torch.nonzero(labels[i] == t + 1, as_tuple=True)
            if ys.numel():
                boxes[i, t] = torch.tensor(
                    [
                        max(0, int(xs.min()) - margin),
                        max(0, int(ys.min()) - margin),
                        min(w - 1, int(xs.max()) + margin),
                        min(h - 1, int(ys.max()) + margin),
                    ],
                    dtype=torch.float32,
                )
    return boxes


class BoxPromptedSAM(nn.Module):
    def __init__(self, num_targets: int, channel: int = 0, pretrained: bool = True):
        super().__init__()
        self.num_targets, self.channel = num_targets, channel
        self.prompt_encoder = build_prompt_encoder(pretrained).requires_grad_(False)
        self.mask_decoder = build_mask_decoder(pretrained).requires_grad_(False)

    @torch.no_grad()
    def forward(self, image_embeddings: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """image_embeddings BxCx256x64x64 (channel ``channel`` is used: the reference modality); boxes BxTx4
        (NaN where absent) -> logits Bx(T+1)x256x256, channel 0 the background."""
        b = image_embeddings.shape[0]
        logits = torch.full((b, self.num_targets + 1, *INPUT_SIZE), ABSENT, device=image_embeddings.device)
        logits[:, 0] = 0.0
        present = ~torch.isnan(boxes[..., 0])  # B x T
        if present.any():
            rows, targets = torch.nonzero(present, as_tuple=True)
            sparse, dense = self.prompt_encoder(points=None, boxes=boxes[rows, targets].to(logits.device), masks=None)
            masks, _ = self.mask_decoder(
                image_embeddings=image_embeddings[rows, self.channel],
                image_pe=self.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )
            logits[rows, targets + 1] = masks[:, 0].float()
        return logits

    def parameter_counts(self) -> dict[str, int]:
        return {"trainable": 0, "frozen": sum(p.numel() for p in self.parameters())}
