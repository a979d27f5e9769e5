from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from segment_anything.modeling import MaskDecoder

from shared.errors import ZeusError
from stage2_segment.modeling.checkpoints import module_state
from stage2_segment.modeling.decoder import build_mask_decoder, build_prompt_encoder, group_attention_mask
from stage2_segment.modeling.encoders import FrozenImageEncoder
from stage2_segment.modeling.text_prompt import TextPromptProjector


def test_checkpoint_loads_strictly_and_the_positional_encoding_comes_from_it():
    prompt_encoder = build_prompt_encoder()
    pe = module_state("prompt_encoder")["pe_layer.positional_encoding_gaussian_matrix"]
    torch.testing.assert_close(prompt_encoder.pe_layer.positional_encoding_gaussian_matrix, pe)
    torch.testing.assert_close(prompt_encoder.get_dense_pe(), build_prompt_encoder().get_dense_pe())
    decoder = build_mask_decoder()
    assert sum(p.numel() for p in decoder.parameters()) == pytest.approx(4.06e6, rel=0.01)
    with pytest.raises(RuntimeError, match="Unexpected key"):
        build_mask_decoder(pretrained=False).load_state_dict({**module_state("mask_decoder"), "extra": torch.zeros(1)})


def test_batched_decoder_matches_upstream_one_image_at_a_time():
    torch.manual_seed(0)
    batched = build_mask_decoder().eval()
    upstream = MaskDecoder(transformer=batched.transformer, transformer_dim=256).eval()
    upstream.load_state_dict(batched.state_dict(), strict=True)
    pe = build_prompt_encoder().get_dense_pe()
    images = torch.randn(3, 256, 64, 64)
    sparse = torch.randn(3, 2, 256)
    dense = torch.randn(3, 256, 64, 64) * 0.1
    with torch.no_grad():
        masks, iou = batched(images, pe, sparse, dense, multimask_output=False)
        for b in range(3):
            ref_masks, ref_iou = upstream(
                images[b : b + 1], pe, sparse[b : b + 1], dense[b : b + 1], multimask_output=False
            )
            torch.testing.assert_close(masks[b : b + 1], ref_masks, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(iou[b : b + 1], ref_iou, rtol=1e-4, atol=1e-4)
    assert masks.shape == (3, 1, 256, 256)
    with pytest.raises(ValueError, match="one prompt set per image"):
        batched(images, pe, sparse[:2], dense, multimask_output=False)


def _joint_inputs(targets: int, tokens: int = 2):
    torch.manual_seed(1)
    return torch.randn(2, 256, 64, 64), torch.randn(2, targets, tokens, 256), torch.randn(2, 256, 64, 64) * 0.1


def test_joint_decoding_of_one_target_is_per_target_decoding():
    decoder, pe = build_mask_decoder().eval(), build_prompt_encoder().get_dense_pe()
    images, prompts, dense = _joint_inputs(targets=1)
    with torch.no_grad():
        per_target, _ = decoder(images, pe, prompts[:, 0], dense, multimask_output=False)
        joint = decoder.predict_joint_masks(images, pe, prompts, dense)
    assert joint.shape == (2, 1, 256, 256)
    torch.testing.assert_close(joint, per_target, rtol=1e-4, atol=1e-4)


def test_joint_decoding_follows_the_targets_and_reads_each_targets_own_prompt():
    decoder, pe = build_mask_decoder().eval(), build_prompt_encoder().get_dense_pe()
    images, prompts, dense = _joint_inputs(targets=3)
    with torch.no_grad():
        masks = decoder.predict_joint_masks(images, pe, prompts, dense)
        swapped = decoder.predict_joint_masks(images, pe, prompts[:, [2, 0, 1]], dense)
        # the same prompt for two targets: they see identical groups, so identical masks
        twice = decoder.predict_joint_masks(images, pe, prompts[:, [0, 0, 1]], dense)
    assert masks.shape == (2, 3, 256, 256)
    torch.testing.assert_close(swapped, masks[:, [2, 0, 1]], rtol=1e-4, atol=1e-4)  # permuting targets permutes masks
    torch.testing.assert_close(twice[:, 0], twice[:, 1], rtol=1e-4, atol=1e-4)
    assert (masks[:, 0] - masks[:, 1]).abs().mean() > 0.1  # different prompts, different masks


def test_group_attention_mask_keeps_targets_apart():
    visible = group_attention_mask(shared=2, groups=2, size=3, device=torch.device("cpu"))
    assert visible.shape == (8, 8)
    assert visible[:2].all() and visible[:, :2].all()  # shared tokens see and are seen by all
    assert visible[2:5, 2:5].all() and visible[5:, 5:].all()
    assert not visible[2:5, 5:].any() and not visible[5:, 2:5].any()  # no target reads another's prompt


def test_frozen_encoder_gives_sam_embeddings_and_trains_nothing():
    encoder = FrozenImageEncoder()
    encoder.train()
    assert not encoder.encoder.training
    assert sum(p.numel() for p in encoder.parameters()) == pytest.approx(5.7e6, rel=0.03)
    assert not any(p.requires_grad for p in encoder.parameters())
    image = torch.zeros(1, 1, 256, 256)
    image[..., 64:192, 64:192] = 0.7
    first = encoder(image)
    assert first.shape == (1, 256, 64, 64) and not first.requires_grad
    torch.testing.assert_close(encoder(image.expand(-1, 3, -1, -1)), first)


def test_text_prompt_projector_gives_a_fixed_number_of_tokens():
    projector = TextPromptProjector(text_dim=384, num_tokens=2)
    tokens = projector(torch.randn(5, 384))
    assert tokens.shape == (5, 2, 256)
    tokens.sum().backward()
    assert projector.mlp[0].weight.grad is not None
    with pytest.raises(ValueError, match="BxD"):
        projector(torch.randn(5, 1, 384))


def test_stage2_never_imports_vllm_or_an_llm():
    llm_stack = ("vllm", "transformers", "sentence_transformers", "llama_cpp", "stage1_instruct")
    modules = "stage2_segment.train, stage2_segment.data, stage2_segment.features, stage2_segment.instructions"
    code = f"import sys, {modules}; print(sorted(m for m in {llm_stack} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, encoding="utf-8", check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.slow
def test_sam_vit_b_encoder_from_a_checkpoint_file(tmp_path):
    """SAM / MedSAM ViT-B weights from a path (random weights here: no hub), loaded strictly on the CPU."""
    from segment_anything import build_sam_vit_b

    torch.manual_seed(0)
    sam = build_sam_vit_b(checkpoint=None)
    checkpoint = tmp_path / "medsam_vit_b.pth"
    torch.save(sam.state_dict(), checkpoint)
    encoder = FrozenImageEncoder.build("sam-vit-b", checkpoint)
    assert encoder.name == "sam-vit-b-medsam_vit_b"
    image = torch.rand(1, 1, 256, 256)
    with torch.no_grad():
        expected = sam.image_encoder(
            (
                torch.nn.functional.interpolate(image.expand(-1, 3, -1, -1), size=1024, mode="bilinear") * 255
                - sam.pixel_mean
            )
            / sam.pixel_std
        )
    torch.testing.assert_close(encoder(image), expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(ZeusError, match="needs --encoder-checkpoint"):
        FrozenImageEncoder.build("sam-vit-b")
    with pytest.raises(ZeusError, match="early fusion"):
        FrozenImageEncoder.build("sam-vit-b", checkpoint, early_channels=3)


@pytest.mark.parametrize("channels", [1, 2, 3, 4, 5])
def test_early_fusion_kernels_keep_grey_and_separate_the_modalities(channels):
    from stage2_segment.modeling.encoders import early_fusion_kernels

    rgb = torch.randn(8, 3, 4, 4)
    kernels = early_fusion_kernels(rgb, channels)
    assert kernels.shape == (8, channels, 4, 4)
    torch.testing.assert_close(kernels.sum(dim=1), rgb.sum(dim=1))  # a grey slice sees the pretrained sum
    pairs = [(a, b) for a in range(channels) for b in range(a + 1, channels)]
    assert all(not torch.allclose(kernels[:, a], kernels[:, b]) for a, b in pairs)  # no two modalities alike


def test_up_to_three_modalities_keep_their_plain_colours_and_more_get_distinct_hues():
    from stage2_segment.modeling.encoders import colour_mixture

    torch.testing.assert_close(colour_mixture(3), torch.eye(3))
    torch.testing.assert_close(colour_mixture(2), torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]))
    for channels in (4, 5, 7):
        mixture = colour_mixture(channels)
        torch.testing.assert_close(mixture.sum(dim=0), torch.ones(3))
        assert torch.cdist(mixture, mixture).add(torch.eye(channels)).min() > 0.05  # every pair well apart


def test_early_fusion_embedding_depends_on_which_modality_is_which():
    from stage2_segment.modeling.encoders import FrozenImageEncoder

    torch.manual_seed(0)
    early, plain = FrozenImageEncoder.early_fusion(3), FrozenImageEncoder()
    slices = torch.rand(1, 3, 256, 256)
    swapped = slices[:, [1, 0, 2]]
    assert (early(slices) - early(swapped)).abs().max() > 1e-2
    grey = torch.rand(1, 1, 256, 256)
    torch.testing.assert_close(early(grey.expand(-1, 3, -1, -1)), plain(grey), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fusion", ["early", "late"])
def test_slice_context_starts_as_the_slice_alone_and_then_reads_the_neighbours(fusion):
    from stage2_segment.modeling.segmenter import SegmenterConfig, ZeusSegmenter

    torch.manual_seed(0)
    config = SegmenterConfig(fusion=fusion, num_modalities=2, num_targets=2, decoder="joint")
    alone = ZeusSegmenter(config).eval()
    with_context = ZeusSegmenter(SegmenterConfig(**{**config.__dict__, "slice_context": 1})).eval()
    missing = with_context.load_state_dict(alone.state_dict(), strict=False).missing_keys
    assert sorted(missing) == ["slice_context.mix.bias", "slice_context.mix.weight"]  # all else is shared
    channels = 1 if fusion == "early" else 2
    images, text = torch.randn(1, channels, 256, 64, 64), torch.randn(1, 3, 2, 384)
    context = torch.randn(1, 2, channels, 256, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(with_context(images, text, context), alone(images, text))  # zero-initialised
        torch.nn.init.normal_(with_context.slice_context.mix.weight, std=0.01)
        swapped = with_context(images, text, context.flip(1))  # the slice above and the one below exchanged
        assert (with_context(images, text, context) - swapped).abs().max() > 1e-3
    with pytest.raises(ValueError, match="neighbouring slices"):
        with_context(images, text)
