"""The Zeus segmenter: instruction tokens + cached image embeddings -> union segmentation logits.

Every target (class) is prompted by its own text tokens, all targets of a slice are decoded together, and
their mask logits, with a learned background logit, form one softmax over background + targets (training
the union as a union: independent binary masks combined by argmax lose classes).

Fusion of M modalities:
- ``early``: the encoder saw the modalities stacked as channels (one embedding); tokens come from the union
  instruction; one decoder pass per target.
- ``hybrid``: per-modality embeddings fused by ``EmbeddingFusion``; the decoder sees every modality's
  instruction tokens (M x K tokens); one decoder pass per target.
- ``late``: one decoder pass per modality and target with that modality's instruction; logits fused by
  ``LogitFusion``.

Text ``none`` (a baseline): learned per-target tokens instead of projected instructions.

Slice context ``k`` > 0 (2.5-D): each embedding first takes in, through ``SliceContext``, the embeddings of the k
slices on either side (the same modality's); the decoder then runs as without it.

Decoder ``per-target`` runs the two-way transformer once per target (SAM's one-prompt-set-per-pass design);
``joint`` runs it once per image with every target's tokens (``BatchedMaskDecoder.predict_joint_masks``):
T times fewer decoder passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from stage2_segment.config import DECODERS, FUSIONS
from stage2_segment.modeling.decoder import build_mask_decoder, build_prompt_encoder
from stage2_segment.modeling.fusion import EmbeddingFusion, LogitFusion, SliceContext
from stage2_segment.modeling.text_prompt import TextPromptProjector


@dataclass(frozen=True)
class SegmenterConfig:
    fusion: str = "late"
    num_modalities: int = 1
    num_targets: int = 1
    text_dim: int = 384
    use_text: bool = True
    num_tokens: int = 2
    pretrained: bool = True
    # Late fusion keeps one decoder's activations per modality for backward; recomputing them in the backward
    # pass instead (activation checkpointing) cuts the peak memory by about the modality count.
    checkpoint_modalities: bool = True
    # Runs saved before the option existed decoded per target: that is what a stored config without it means.
    decoder: str = "per-target"
    # neighbouring slices on either side whose embeddings each slice's embedding takes in (0: the slice alone)
    slice_context: int = 0

    def __post_init__(self) -> None:
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {self.decoder!r}")
        if self.slice_context < 0:
            raise ValueError(f"slice_context must be 0 or more, got {self.slice_context}")


class ZeusSegmenter(nn.Module):
    def __init__(self, config: SegmenterConfig):
        super().__init__()
        self.config = config
        self.prompt_encoder = build_prompt_encoder(config.pretrained)
        self.prompt_encoder.requires_grad_(False)  # only its positional encoding and "no mask" embedding are used
        self.mask_decoder = build_mask_decoder(config.pretrained)
        # One mask per prompt (multimask_output=False) uses mask token 0 only: the IoU head and the other
        # three hypernetwork MLPs never get a gradient. Frozen, they are neither trained nor synchronised
        # (DDP would wait for their gradients forever).
        self.mask_decoder.iou_prediction_head.requires_grad_(False)
        for mlp in self.mask_decoder.output_hypernetworks_mlps[1:]:
            mlp.requires_grad_(False)
        if config.use_text:
            self.text_prompt = TextPromptProjector(config.text_dim, config.num_tokens)
        else:
            self.class_tokens = nn.Parameter(torch.randn(config.num_targets, config.num_tokens, 256) * 0.02)
        self.background_logit = nn.Parameter(torch.zeros(1))
        if config.fusion == "hybrid":
            self.embedding_fusion = EmbeddingFusion(config.num_modalities)
        if config.fusion == "late":
            self.logit_fusion = LogitFusion(config.num_modalities)
        if config.slice_context:
            self.slice_context = SliceContext(2 * config.slice_context)

    def forward(
        self, image_embeddings: torch.Tensor, text: torch.Tensor | None = None, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        """image_embeddings: BxC'x256x64x64 (C' = 1 for early, M otherwise); text: Bx(M+1)xTxD or None;
        context (with ``slice_context`` k): the neighbouring slices' embeddings, Bx2kxC'x256x64x64.
        Returns logits Bx(T+1)x256x256, channel 0 the background."""
        cfg = self.config
        b = image_embeddings.shape[0]
        if cfg.slice_context:
            image_embeddings = self._with_context(image_embeddings, context)
        if cfg.fusion == "late":
            decode = self._decode
            if cfg.checkpoint_modalities and self.training and torch.is_grad_enabled():
                decode = partial(checkpoint, self._decode, use_reentrant=False)
            per_modality = [decode(image_embeddings[:, m], self._tokens(text, m, b)) for m in range(cfg.num_modalities)]
            logits = self.logit_fusion(torch.stack(per_modality, 1))
        elif cfg.fusion == "hybrid":
            fused = self.embedding_fusion(image_embeddings)
            tokens = torch.cat([self._tokens(text, m, b) for m in range(cfg.num_modalities)], dim=2)
            logits = self._decode(fused, tokens)
        else:
            logits = self._decode(image_embeddings[:, 0], self._tokens(text, cfg.num_modalities, b))
        background = self.background_logit.expand(b, 1, *logits.shape[2:])
        return torch.cat([background, logits], dim=1)

    def _with_context(self, embeddings: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        expected = (embeddings.shape[0], 2 * self.config.slice_context, *embeddings.shape[1:])
        if context is None or tuple(context.shape) != expected:
            found = None if context is None else tuple(context.shape)
            raise ValueError(f"this model reads neighbouring slices: pass context of shape {expected}, got {found}")
        return torch.stack(
            [self.slice_context(embeddings[:, c], context[:, :, c]) for c in range(embeddings.shape[1])], dim=1
        )

    def _tokens(self, text: torch.Tensor | None, row: int, batch: int) -> torch.Tensor:
        """BxTxKx256 prompt tokens for instruction row ``row`` (a modality, or M for the union)."""
        if not self.config.use_text:
            return self.class_tokens.unsqueeze(0).expand(batch, -1, -1, -1)
        if text is None:
            raise ValueError("this model is conditioned on instructions: pass text embeddings")
        b, _, t, d = text.shape
        return self.text_prompt(text[:, row].reshape(b * t, d)).view(b, t, self.config.num_tokens, -1)

    def _decode(self, embeddings: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """embeddings Bx256x64x64, tokens BxTxNx256 -> mask logits BxTx256x256 (all targets in one batch)."""
        b, t, n, c = tokens.shape
        dense = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        if self.config.decoder == "joint":
            dense = dense.expand(b, -1, *embeddings.shape[2:])
            pe = self.prompt_encoder.get_dense_pe()
            return self.mask_decoder.predict_joint_masks(embeddings, pe, tokens, dense)
        images = embeddings.unsqueeze(1).expand(-1, t, -1, -1, -1).reshape(b * t, *embeddings.shape[1:])
        dense = dense.expand(b * t, -1, *embeddings.shape[2:])
        masks, _ = self.mask_decoder(
            image_embeddings=images,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=tokens.reshape(b * t, n, c),
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        return masks.view(b, t, *masks.shape[2:])

    def parameter_counts(self) -> dict[str, int]:
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return {"trainable": trainable, "frozen": sum(p.numel() for p in self.parameters()) - trainable}
