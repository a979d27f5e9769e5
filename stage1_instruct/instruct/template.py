"""The no-LLM writer: every grounded fact of the descriptions filled into a fixed sentence template (level,
visibility, matched region with its place, size and brightness, prior location, appearance, shape, boundary).
It is also the fallback for an LLM instruction that fails the faithfulness check (``faithfulness.py``)."""

from __future__ import annotations

from collections.abc import Sequence

from shared.instructions import UNION
from stage1_instruct.describe import Description
from stage1_instruct.instruct import InstructItem, target_name


class TemplateInstructor:
    model_id = "template/v2"
    source = "template"

    def instruct(self, items: Sequence[InstructItem]) -> list[str]:
        return [template_instruction(item) for item in items]


def _facts(d: Description) -> str:
    """The slice-specific facts of one description: level, visibility and the matched region."""
    parts = [d.get("level"), f"visibility: {d['visible']}" if d.get("visible") else None, d.get("region")]
    return "; ".join(p for p in parts if isinstance(p, str) and p)


def template_instruction(item: InstructItem) -> str:
    name = target_name(item.target)
    if item.modality == UNION:
        described = [(phrase, d) for phrase, d in item.descriptions if d.get("visible") != "no"]
        if not described:
            return f"The {name} is not in this slice: no body tissue is visible."
        scans = " ".join(
            f"On {phrase}: {_facts(d)}; it appears {d.get('intensity', 'as not described')}." for phrase, d in described
        )
        location = described[0][1].get("location", "")
        return f"Segment the {name} using all scans of this slice. {scans} It lies in the {location}."
    phrase, d = item.descriptions[0]
    if d.get("visible") == "no":
        return f"The {name} is not in this {phrase} slice: {d.get('location', 'no body tissue')}."
    return (
        f"Segment the {name} in this {phrase} slice: {_facts(d)}. It lies in the {d.get('location', '')}. "
        f"It appears {d.get('intensity', '')}. Shape: {d.get('size_shape', '')}. Boundary: {d.get('boundary', '')}."
    )
