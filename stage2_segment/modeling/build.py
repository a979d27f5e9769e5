"""The one composition root of stage-2 models (like segment-anything's ``sam_model_registry``): a run's
configuration -> its model, for training (pretrained parts loaded) and for prediction (every weight then comes
from the run's checkpoint, so nothing pretrained is loaded first)."""

from __future__ import annotations

from dataclasses import replace

from torch import nn

from shared.errors import ZeusError
from shared.manifest import Manifest
from stage2_segment.config import BOX_REFERENCE, TrainConfig
from stage2_segment.modeling.box_reference import BoxPromptedSAM
from stage2_segment.modeling.encoders import INPUT_SIZE
from stage2_segment.modeling.segmenter import SegmenterConfig, ZeusSegmenter
from stage2_segment.modeling.unet import UNetBaseline


def check_input_size(config: TrainConfig) -> None:
    """Refuse, before any work, an ``--image-size`` the model cannot take: a model that reads the frozen encoder's
    embeddings takes its input size; the U-Net baseline takes any."""
    if config.uses_features and config.image_size != INPUT_SIZE:
        raise ZeusError(
            f"--image-size {config.image_size}: the frozen image encoder takes {INPUT_SIZE} x {INPUT_SIZE} slices "
            f"(its embedding grid is what the decoder reads), so a {config.model} run is prepared and trained at "
            f"--image-size {INPUT_SIZE}; only --model unet trains at other sizes"
        )


def build_model(
    config: TrainConfig, manifest: Manifest, segmenter: SegmenterConfig | None, *, pretrained: bool = True
) -> nn.Module:
    """``segmenter``: the Zeus segmenter's configuration (required for ``model == "zeus"``, ignored otherwise)."""
    if config.model == "unet":
        return UNetBaseline(len(manifest.modalities), len(manifest.targets))
    if config.model == BOX_REFERENCE:
        reference = manifest.modality_names.index(manifest.reference_modality)
        return BoxPromptedSAM(len(manifest.targets), reference, pretrained=pretrained)
    if segmenter is None:
        raise ValueError("the Zeus segmenter needs its SegmenterConfig")
    return ZeusSegmenter(replace(segmenter, pretrained=pretrained))
