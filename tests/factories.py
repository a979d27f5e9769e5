"""Tiny on-disk datasets in each layout, written through the same code paths as the demo data."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from shared.demo import (
    MODALITIES,
    MSD_NAME,
    DemoConfig,
    Phantom,
    centred_grid,
    msd_dataset_json,
    write_chaos_case,
    write_dicom_series,
    write_msd_case,
    write_png_masks,
)
from shared.geometry import Geometry, from_array

# 48 x 40 voxels of 8 mm and 6 slices of 20 mm: the phantom's full field of view, a few kB per case.
TINY = DemoConfig(cases=2, size=(48, 40), slices=6, spacing=(8.0, 8.0, 20.0), t2_spacing=(9.0, 9.0, 24.0))
RAS_STORED = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def phantoms(config: DemoConfig = TINY) -> list[Phantom]:
    return [Phantom.draw(i, config.seed) for i in range(config.cases)]


def write_msd(root: Path, config: DemoConfig = TINY) -> Path:
    """MSD layout; returns the dataset folder (it holds dataset.json)."""
    folder = root / MSD_NAME
    cases = phantoms(config)
    for phantom in cases:
        write_msd_case(folder, phantom, config)
    (folder / "dataset.json").write_text(json.dumps(msd_dataset_json(cases)), encoding="utf-8")
    return folder


def write_chaos_mr(root: Path, config: DemoConfig = TINY) -> Path:
    for phantom in phantoms(config):
        write_chaos_case(root, phantom, config)
    return root


def write_nnunet(root: Path, config: DemoConfig = TINY) -> Path:
    """nnU-Net v2 raw layout with one file per channel; returns the dataset folder."""
    folder = root / "Dataset901_Tiny"
    grid = centred_grid((*config.size, config.slices), config.spacing, RAS_STORED)
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir(parents=True)
    for phantom in phantoms(config):
        for c, modality in enumerate(MODALITIES):
            image = from_array(phantom.image(modality, grid, (0.0, 0.0, 0.0)), grid)
            sitk.WriteImage(image, str(folder / "imagesTr" / f"tiny_{phantom.case_id}_{c:04d}.nii.gz"))
        sitk.WriteImage(
            from_array(phantom.label(grid), grid), str(folder / "labelsTr" / f"tiny_{phantom.case_id}.nii.gz")
        )
    dataset_json = {
        "name": "Dataset901_Tiny",
        "channel_names": {str(i): m for i, m in enumerate(MODALITIES)},
        "labels": {"background": 0, "liver": 1, "right kidney": 2, "left kidney": 3, "spleen": 4},
        "numTraining": config.cases,
        "file_ending": ".nii.gz",
    }
    (folder / "dataset.json").write_text(json.dumps(dataset_json), encoding="utf-8")
    return folder


def write_chaos_ct(root: Path, n_cases: int = 2, hu_liver: int = 60) -> Path:
    """CHAOS CT layout: DICOM in HU, binary liver masks named liver_GT_NNN.png."""
    grid = centred_grid((48, 40, 6), (8.0, 8.0, 20.0), IDENTITY)
    for i, phantom in enumerate(phantoms(DemoConfig(cases=n_cases))):
        label = phantom.label(grid)
        hu = np.where(phantom.body(grid, (0.0, 0.0, 0.0)), 20, -1000).astype(np.int16)
        hu[label == 1] = hu_liver
        patient = root / "Train_Sets" / "CT" / str(i + 1)
        names = [f"i{k:04d},0000b" for k in range(grid.size[2])]
        write_dicom_series(
            from_array(hu, grid),
            patient / "DICOM_anon",
            names,
            modality="CT",
            series_uid=f"1.2.3.{i + 1}.1",
            study_uid=f"1.2.3.{i + 1}",
        )
        masks = [f"liver_GT_{k:03d}" for k in range(grid.size[2])]
        write_png_masks((label == 1).astype(np.uint8), patient / "Ground", masks, {1: 255})
    return root


def geometry_of_file(path: Path) -> Geometry:
    return Geometry.of(sitk.ReadImage(str(path)))


# A chat template over content parts, one "<image>" where the image goes (what VLM processors expand).
TINY_VLM_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>{% else %}{{ part['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def write_tiny_vlm(folder: Path) -> Path:
    """A tiny SmolVLM (Idefics3: a 2-layer SigLIP-style vision tower, pixel-shuffle connector, a 2-layer Llama)
    with random weights and SmolLM2's tokenizer (from the packaged GGUF; SmolVLM's own text model is SmolLM2),
    saved as a Hugging Face folder: a real vision-language model, no download. Idefics3 rather than LLaVA
    because vLLM's LLaVA module imports torchvision, which the CPU vLLM environment cannot load."""
    import torch
    from transformers import (
        AutoTokenizer,
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3Processor,
        LlamaConfig,
    )
    from transformers.models.idefics3 import Idefics3ImageProcessorPil

    from stage1_instruct.offline_models import smollm2_gguf

    gguf = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    grid = [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
    specials = ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>", *grid]
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    image_size, patch_size, scale_factor = 64, 16, 2
    text = LlamaConfig(  # head_dim 64: vLLM's CPU attention kernels take 32 and up, not 16
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=1,
        num_key_value_heads=1,
        vocab_size=len(tokenizer),
        max_position_embeddings=2048,
    )
    config = Idefics3Config(
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": image_size,
            "patch_size": patch_size,
        },
        text_config=text.to_dict(),
        scale_factor=scale_factor,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
    )
    torch.manual_seed(0)
    Idefics3ForConditionalGeneration(config).save_pretrained(folder)
    processor = Idefics3Processor(
        image_processor=Idefics3ImageProcessorPil(
            size={"longest_edge": image_size},
            max_image_size={"longest_edge": image_size},
            do_image_splitting=False,
        ),
        tokenizer=tokenizer,
        image_seq_len=(image_size // patch_size) ** 2 // scale_factor**2,
        chat_template=TINY_VLM_CHAT_TEMPLATE,
    )
    processor.save_pretrained(folder)
    return folder


def private_workspace(home: Path, dest: Path) -> None:
    """A copy of the session's workspace for one test. The image embeddings (most of its 220 MB) are
    hard-linked: the feature cache only ever replaces a file by an atomic rename and reads it through a
    read-only memory map, so a link is never written through. Everything else is copied, because tests damage
    shards, splits and checkpoints in place."""
    features = home / "features"

    def link_or_copy(src: str, dst: str) -> str:
        if Path(src).is_relative_to(features):
            try:
                os.link(src, dst)
                return dst
            except OSError:  # a filesystem without hard links
                pass
        return shutil.copy2(src, dst)

    shutil.copytree(home, dest, copy_function=link_or_copy)


def with_cell(table, column: str, row: int, value):
    """A copy of a pyarrow table with one cell replaced (the column keeps its type): a tampered shard."""
    import pyarrow as pa

    values = table.column(column).to_pylist()
    values[row] = value
    field = table.schema.field(column)
    return table.set_column(table.schema.get_field_index(column), field, pa.array(values, field.type))
