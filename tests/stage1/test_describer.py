"""The offline describer measures the slice: body, candidate regions in body coordinates, the region that
fits each target; instructions keep those facts, and an LLM instruction that drops them is replaced."""

from __future__ import annotations

import numpy as np
import pytest

from shared.instructions import UNION
from stage1_instruct.describe import DescribeItem, description_text, llm_facts
from stage1_instruct.describe.image_facts import ImageFactsDescriber
from stage1_instruct.describe.regions import measure
from stage1_instruct.generate import body_levels
from stage1_instruct.instruct import InstructItem
from stage1_instruct.instruct.faithfulness import faithfulness_problems
from stage1_instruct.instruct.template import template_instruction

SIZE = 128


def phantom(blob_x: float, blob_y: float = 0.4, radius: int = 14, seed: int = 0) -> np.ndarray:
    """An elliptic body (centre 64, 64; half axes 50 x 40 px) of noisy mid-grey tissue with one bright round
    blob at body coordinates (blob_x, blob_y); columns run toward the patient's left."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    inside = ((xx - 64) / 50) ** 2 + ((yy - 64) / 40) ** 2
    image = np.where(inside <= 1, 0.35, 0.0)
    cx, cy = 64 + blob_x * 50, 64 + blob_y * 40
    image = np.where((xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2, 0.85, image)
    image = image + np.where(inside <= 1, rng.normal(0, 0.01, image.shape), 0)
    return np.clip(image, 0, 1).astype(np.float32)


def _item(image, target, position=0.7, modality="T2", body_position=None):
    return DescribeItem(image, image.shape, modality, "T2-weighted MRI", target, position, body_position)


def test_regions_are_measured_in_body_coordinates():
    regions = measure(phantom(0.5, 0.4))
    assert regions.body is not None
    assert regions.body.centre == pytest.approx((64, 64), abs=1)
    assert regions.body.half_extent == pytest.approx((50, 40), abs=1)
    blob = max(regions.candidates, key=lambda r: r.brightness)
    assert (blob.x, blob.y) == pytest.approx((0.5, 0.4), abs=0.05)
    assert blob.area == pytest.approx(np.pi * 14**2 / (np.pi * 50 * 40), rel=0.15)
    assert blob.brightness > 2 and blob.homogeneity > 0.9 and blob.elongation < 0.1
    assert measure(np.zeros((SIZE, SIZE), np.float32)).body is None


def test_the_fitting_region_follows_the_pixels_not_the_name():
    describer = ImageFactsDescriber()
    left, right = phantom(0.55), phantom(-0.55)  # the blob on the patient's left, then on the right
    spleen_left, spleen_right, kidney_left = describer.describe(
        [_item(left, "spleen"), _item(right, "spleen"), _item(left, "right kidney", position=0.3)]
    )
    assert "fits the spleen" in spleen_left["region"] and "patient's left posterior body" in spleen_left["region"]
    assert spleen_left["facts"]["match"]["x"] == pytest.approx(0.55, abs=0.05)
    assert spleen_left["visible"] == "likely"
    # Moved to the patient's right, the bright blob no longer fits the spleen (nothing else does).
    assert spleen_right["region"] == "no region of this slice fits the spleen"
    assert spleen_right["visible"] == "uncertain" and spleen_right["facts"]["match"] is None
    assert description_text(spleen_left) != description_text(spleen_right)
    # ... and a blob on the patient's left does not fit the right kidney.
    assert kidney_left["region"] == "no region of this slice fits the right kidney"


def test_the_level_is_taken_within_the_body_extent():
    image = phantom(0.55)
    in_scan, in_body = ImageFactsDescriber().describe(
        [_item(image, "spleen", position=0.1), _item(image, "spleen", position=0.1, body_position=0.8)]
    )
    assert in_scan["level"].startswith("lower third") and in_scan["visible"] == "unlikely at this level"
    assert in_body["level"].startswith("upper third") and in_body["facts"]["level"] == 0.8
    # First and last slice with body are 0 and 1; slices without body have no level.
    empty = np.zeros_like(image)
    volume = np.stack([empty, image, image, image, empty])
    assert body_levels(volume, image.shape) == [None, 0.0, 0.5, 1.0, None]


def _instruct_item(image, target, position=0.7, modality=None):
    described = ImageFactsDescriber().describe([_item(image, target, position)])[0]
    return InstructItem(target, modality or "T2", (("T2-weighted MRI", described),), "prompt")


def test_template_instructions_keep_every_grounded_fact():
    item = _instruct_item(phantom(0.55), "spleen")
    text = template_instruction(item)
    for fact in ("upper third", "visibility: likely", "patient's left posterior body", "% of the section", "brighter"):
        assert fact in text
    assert template_instruction(_instruct_item(phantom(0.3), "spleen")) != text  # another image, another text
    # It keeps every fact the check asks an LLM for (the length bound is for LLM answers; this is longer).
    assert [p for p in faithfulness_problems(text, item) if "words" not in p] == []


def test_union_instructions_use_every_modality():
    a = ImageFactsDescriber().describe([_item(phantom(0.55), "spleen")])[0]
    b = ImageFactsDescriber().describe([_item(phantom(0.3, radius=8), "spleen", modality="T1_in")])[0]
    item = InstructItem("spleen", UNION, (("T2-weighted MRI", a), ("T1 in-phase MRI", b)), "prompt")
    text = template_instruction(item)
    assert "On T2-weighted MRI:" in text and "On T1 in-phase MRI:" in text
    assert a["region"] in text and b["region"] in text


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("Segment the liver, likely visible in the upper third on the patient's left.", "does not name the spleen"),
        ("Segment the spleen and the right kidney, upper third, patient's left.", "names right kidney"),
        ("Segment the spleen, likely visible in the upper third of the body.", "drops the side (left)"),
        ("Segment the spleen on the patient's right, upper third.", "names the wrong side (right)"),
        ("Segment the spleen, likely visible on the patient's left.", "drops the level (upper)"),
        ("Segment the spleen on the patient's left, upper third. " + "word " * 60, "words, more than 60"),
    ],
)
def test_unfaithful_instructions_are_named(text, problem):
    problems = faithfulness_problems(text, _instruct_item(phantom(0.55), "spleen"))
    assert any(problem in p for p in problems), problems


def test_an_unlikely_target_told_as_visible_is_unfaithful():
    item = _instruct_item(phantom(-0.5), "right kidney", position=0.95)
    assert item.descriptions[0][1]["visible"] == "unlikely at this level"
    assert "tells an unlikely target as visible" in faithfulness_problems(
        "Segment the right kidney in the upper third on the patient's right.", item
    )
    assert (
        faithfulness_problems("Segment the right kidney only if present: unlikely in this upper third, right.", item)
        == []
    )


def test_the_llm_gets_the_slice_facts_without_the_exact_share():
    described = ImageFactsDescriber().describe([_item(phantom(0.55), "spleen")])[0]
    facts = llm_facts(described)
    assert facts.startswith("visible: likely; level: upper third") and "patient's left posterior body" in facts
    assert "% of the section" not in facts and "% of the section" in described["region"]
    assert "boundary" not in facts and "size shape" not in facts
