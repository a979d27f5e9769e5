"""Each offline backend on real inputs: non-empty output that depends on target and modality."""

from __future__ import annotations

import numpy as np
import pytest

from shared.cases import CaseCache
from stage1_instruct.describe import DescribeItem, description_text, parse_description
from stage1_instruct.describe.image_facts import ImageFactsDescriber, has_body
from stage1_instruct.describe.transformers_backend import TransformersDescriber
from stage1_instruct.embed.sentence_transformers_backend import SentenceTransformersEmbedder
from stage1_instruct.embed.transformers_backend import TransformersEmbedder
from stage1_instruct.instruct import InstructItem, clean_instruction
from stage1_instruct.instruct.template import TemplateInstructor
from stage1_instruct.instruct.transformers_backend import TransformersInstructor
from stage1_instruct.prompts import Prompts, render
from tests.factories import write_tiny_vlm

TARGETS = ("liver", "spleen", "right kidney", "left kidney")


@pytest.fixture
def slice_items(tiny_dataset):
    cache = CaseCache(tiny_dataset, 64)
    cache.prepare(["demo_001"], with_labels=False, progress=False)
    case = cache.load("demo_001", with_label=False)
    phrases = {m.name: m.description for m in tiny_dataset.manifest.modalities}
    return [
        DescribeItem(case.image[c, 2], case.meta.transform.resized, m, phrases[m], t, 2 / 3)
        for c, m in enumerate(("T1_in", "T1_out", "T2"))
        for t in TARGETS
    ]


def test_image_facts_depend_on_target_modality_and_pixels(slice_items):
    describer = ImageFactsDescriber()
    described = describer.describe(slice_items)
    texts = [description_text(d) for d in described]
    assert len(set(texts)) == len(texts)
    by = {(i.modality, i.target): d for i, d in zip(slice_items, described, strict=True)}
    assert "the patient's right half (the image left)" in by["T2", "liver"]["location"]
    assert "the patient's left half (the image right)" in by["T2", "spleen"]["location"]
    assert "darker than spleen" in by["T2", "liver"]["intensity"]
    assert "upper third" in by["T2", "liver"]["level"]
    blank = DescribeItem(np.zeros((64, 64), np.float32), (53, 64), "T2", "T2 MRI", "liver", 0.5)
    assert not has_body(blank.crop()) and describer.describe([blank])[0]["visible"] == "no"
    assert describer.model_id.startswith("image-facts-v2/knowledge-")


def _instruct_items(slice_items):
    described = ImageFactsDescriber().describe(slice_items)
    template = Prompts.load().instruct
    return [
        InstructItem(
            i.target,
            i.modality,
            ((i.modality_phrase, d),),
            render(template, modality=i.modality_phrase, instance=i.target, description=description_text(d)),
        )
        for i, d in zip(slice_items, described, strict=True)
    ]


def test_template_instructions_differ_by_target_and_modality(slice_items):
    texts = TemplateInstructor().instruct(_instruct_items(slice_items))
    assert len(set(texts)) == len(texts)
    assert all(item.target in text for item, text in zip(slice_items, texts, strict=True))


@pytest.mark.slow
def test_smollm2_writes_non_empty_instructions_naming_the_target(slice_items):
    items = [i for i in _instruct_items(slice_items) if i.modality in ("T1_in", "T2")][::2]  # 4 prompts
    instructor = TransformersInstructor(max_new_tokens=24, batch_size=4)
    assert instructor.model_id == "SmolLM2-135M-Instruct.Q4_1.gguf"
    texts = instructor.instruct(items)
    assert len(texts) == 4
    for item, text in zip(items, texts, strict=True):
        assert text.startswith(f"Segment the {item.target}") and len(text.split()) > 4
    assert len(set(texts)) == 4
    assert instructor.instruct(items) == texts  # greedy decoding: deterministic


def test_embedders_agree_and_separate_targets():
    texts = [f"Segment the {t} in this T2-weighted MRI slice." for t in TARGETS]
    st = SentenceTransformersEmbedder()
    tf = TransformersEmbedder()
    a, b = st.embed(texts), tf.embed(texts)
    assert a.shape == b.shape == (4, 384) and st.dim == tf.dim == 384
    np.testing.assert_allclose(a, b, atol=1e-4)  # MiniLM is mean pooling + L2: both paths give the same vectors
    similarity = a @ a.T
    kidneys = (2, 3)
    others = [(i, j) for i in range(4) for j in range(i + 1, 4) if (i, j) != kidneys]
    assert all(similarity[i, j] < 0.9 for i, j in others)
    # Laterality is weak in a sentence embedding (about 0.99 for the bare names): distinct, but barely.
    assert similarity[kidneys] < 0.995


def test_parse_and_clean_model_output():
    parsed = parse_description('Sure! {"visible": "yes", "location": "right  upper abdomen", "extra": 1}')
    assert parsed == {"visible": "yes", "location": "right upper abdomen"}
    assert parse_description("not json at all") == {"visible": "uncertain", "location": "not json at all"}
    cleaned = clean_instruction("Outline it. Then more. And more. " * 3, "spleen")
    assert cleaned == "Segment the spleen. Outline it. Then more."


@pytest.mark.slow
def test_transformers_describer_runs_a_real_vision_language_model(tmp_path):
    """Image -> chat template (with the slice's position) -> generation -> a parsed Description, end to end
    with a tiny random-weight SmolVLM (Idefics3): the answer is noise, the plumbing is real."""
    folder = write_tiny_vlm(tmp_path / "tiny-vlm")
    describer = TransformersDescriber(str(folder), max_new_tokens=8)
    describer._load()
    prompts = []
    render_chat = describer._processor.apply_chat_template
    describer._processor.apply_chat_template = lambda *a, **k: prompts.append(render_chat(*a, **k)) or prompts[-1]
    image = np.random.default_rng(0).random((80, 80)).astype(np.float32)
    items = [
        DescribeItem(image, (70, 80), "T2", "T2-weighted MRI", "right_kidney", 0.4, body_position=0.9),
        DescribeItem(image[::-1].copy(), (80, 80), "T2", "T2-weighted MRI", "spleen", 0.1),
    ]
    described = describer.describe(items)
    assert len(described) == 2 and all(isinstance(d.get("visible"), str) for d in described)
    assert "<image>" in prompts[0] and "right kidney" in prompts[0]
    assert "upper third of the body's extent in this scan (0.90)" in prompts[0]
    assert "lower third of the body's extent in this scan (0.10)" in prompts[1]
    assert describer.describe(items) == described  # greedy decoding: deterministic
