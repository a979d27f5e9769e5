"""SAM's mask decoder, batched over images.

Upstream ``MaskDecoder.predict_masks`` repeats each image embedding once per prompt
(``repeat_interleave``), made for one image with many prompts: B images with B prompt sets would give B²
rows. Here row b of every input belongs to image b.
"""

from __future__ import annotations

import torch
from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

from stage2_segment.modeling.checkpoints import module_state

EMBED_DIM = 256
IMAGE_EMBEDDING_SIZE = (64, 64)
INPUT_SIZE = (256, 256)


class BatchedMaskDecoder(MaskDecoder):
    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """image_embeddings: Bx256x64x64; image_pe: 1x256x64x64; sparse: BxNx256; dense: Bx256x64x64.
        Returns masks Bx(num_mask_tokens)x256x256 (low resolution, 4x the embedding) and iou Bx(num_mask_tokens)."""
        b = image_embeddings.shape[0]
        if sparse_prompt_embeddings.shape[0] != b or dense_prompt_embeddings.shape[0] != b:
            raise ValueError(
                f"one prompt set per image expected: {b} images, {sparse_prompt_embeddings.shape[0]} sparse and "
                f"{dense_prompt_embeddings.shape[0]} dense prompt sets"
            )
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(b, -1, -1), sparse_prompt_embeddings], dim=1)
        src = image_embeddings + dense_prompt_embeddings
        pos_src = image_pe.expand(b, -1, -1, -1)
        _, _, h, w = src.shape

        hs, src = self.transformer(src, pos_src, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : (1 + self.num_mask_tokens), :]

        src = src.transpose(1, 2).reshape(b, -1, h, w)
        upscaled = self.output_upscaling(src)
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        _, c, h, w = upscaled.shape
        masks = (hyper_in @ upscaled.view(b, c, h * w)).view(b, -1, h, w)
        return masks, self.iou_prediction_head(iou_token_out)


def build_prompt_encoder(pretrained: bool = True) -> PromptEncoder:
    """SAM's prompt encoder; its random positional-encoding buffer must come from the checkpoint."""
    encoder = PromptEncoder(
        embed_dim=EMBED_DIM, image_embedding_size=IMAGE_EMBEDDING_SIZE, input_image_size=INPUT_SIZE, mask_in_chans=16
    )
    if pretrained:
        encoder.load_state_dict(module_state("prompt_encoder"), strict=True)
    return encoder


def build_mask_decoder(pretrained: bool = True) -> BatchedMaskDecoder:
    decoder = BatchedMaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=EMBED_DIM, mlp_dim=2048, num_heads=8),
        transformer_dim=EMBED_DIM,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
    )
    if pretrained:
        decoder.load_state_dict(module_state("mask_decoder"), strict=True)
    return decoder
