"""SAM's mask decoder, batched over images, and decoding all targets of an image in one pass.

Upstream ``MaskDecoder.predict_masks`` repeats each image embedding once per prompt
(``repeat_interleave``), made for one image with many prompts: B images with B prompt sets would give B²
rows. Here row b of every input belongs to image b.

``predict_joint_masks`` decodes T targets of an image in one pass of the two-way transformer instead of T:
each target is a group (a copy of mask token 0 followed by the target's prompt tokens); the IoU token and
mask tokens 1-3 are shared. In the token self-attention a group sees the shared tokens and itself only, so
a target's mask token reads its own prompt; the image attends to every group's tokens (that is the shared
work). With one target this is per-target decoding exactly (the same token set; attention is
order-free); with T targets the image-side attention, the final token-to-image attention and the upscaling
run once instead of T times.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer
from segment_anything.modeling.transformer import Attention

from stage2_segment.modeling.checkpoints import module_state
from stage2_segment.modeling.encoders import INPUT_SIZE as ENCODER_INPUT_SIZE

EMBED_DIM = 256
IMAGE_EMBEDDING_SIZE = (64, 64)
INPUT_SIZE = (ENCODER_INPUT_SIZE, ENCODER_INPUT_SIZE)


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

    def predict_joint_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        target_prompts: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> torch.Tensor:
        """image_embeddings: Bx256x64x64; image_pe: 1x256x64x64; target_prompts: BxTxNx256 (N prompt tokens
        per target); dense: Bx256x64x64. Returns mask logits BxTx256x256 (mask token 0's, as
        ``multimask_output=False``)."""
        b, t, n, c = target_prompts.shape
        shared = torch.cat([self.iou_token.weight, self.mask_tokens.weight[1:]], dim=0)  # S x C
        mask_token = self.mask_tokens.weight[0].expand(b, t, 1, c)
        groups = torch.cat([mask_token, target_prompts], dim=2).reshape(b, t * (n + 1), c)
        tokens = torch.cat([shared.unsqueeze(0).expand(b, -1, -1), groups], dim=1)
        visible = group_attention_mask(len(shared), t, n + 1, tokens.device)
        src = image_embeddings + dense_prompt_embeddings
        hs, src = _two_way(self.transformer, src, image_pe.expand(b, -1, -1, -1), tokens, visible)
        mask_tokens_out = hs[:, len(shared) :: n + 1]  # B x T x C: each group's mask token
        _, _, h, w = image_embeddings.shape
        upscaled = self.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        hyper_in = self.output_hypernetworks_mlps[0](mask_tokens_out)  # B x T x C/8
        _, c_up, h_up, w_up = upscaled.shape
        return (hyper_in @ upscaled.view(b, c_up, h_up * w_up)).view(b, t, h_up, w_up)


def group_attention_mask(shared: int, groups: int, size: int, device: torch.device) -> torch.Tensor:
    """bool LxL (L = shared + groups x size; True = may attend): the shared tokens see every token, a group's
    tokens see the shared tokens and their own group."""
    group = torch.arange(shared + groups * size, device=device)
    group = torch.where(group < shared, -1, (group - shared) // size)
    return (group[:, None] == group[None, :]) | (group[None, :] < 0) | (group[:, None] < 0)


def _attend(
    attention: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """``segment_anything``'s ``Attention.forward`` with an attention mask (its weights, its head split)."""
    heads = attention.num_heads
    q = attention._separate_heads(attention.q_proj(q), heads)
    k = attention._separate_heads(attention.k_proj(k), heads)
    v = attention._separate_heads(attention.v_proj(v), heads)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return attention.out_proj(attention._recombine_heads(out))


def _two_way(
    transformer: TwoWayTransformer,
    image: torch.Tensor,
    image_pe: torch.Tensor,
    tokens: torch.Tensor,
    mask: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``TwoWayTransformer.forward`` (and its blocks') with ``mask`` on the token self-attention; the rest is
    upstream's, step for step."""
    keys = image.flatten(2).permute(0, 2, 1)
    key_pe = image_pe.flatten(2).permute(0, 2, 1)
    queries, query_pe = tokens, tokens
    for layer in transformer.layers:
        if layer.skip_first_layer_pe:
            queries = _attend(layer.self_attn, queries, queries, queries, mask)
        else:
            q = queries + query_pe
            queries = queries + _attend(layer.self_attn, q, q, queries, mask)
        queries = layer.norm1(queries)
        q, k = queries + query_pe, keys + key_pe
        queries = layer.norm2(queries + layer.cross_attn_token_to_image(q=q, k=k, v=keys))
        queries = layer.norm3(queries + layer.mlp(queries))
        q, k = queries + query_pe, keys + key_pe
        keys = layer.norm4(keys + layer.cross_attn_image_to_token(q=k, k=q, v=queries))
    q, k = queries + query_pe, keys + key_pe
    queries = transformer.norm_final_attn(queries + transformer.final_attn_token_to_image(q=q, k=k, v=keys))
    return queries, keys


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
