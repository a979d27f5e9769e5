"""The no-LLM baseline: instructions filled into a fixed sentence template from the descriptions."""

from __future__ import annotations

from collections.abc import Sequence

from shared.instructions import UNION
from stage1_instruct.instruct import InstructItem


class TemplateInstructor:
    model_id = "template/v1"

    def instruct(self, items: Sequence[InstructItem]) -> list[str]:
        return [self._one(item) for item in items]

    @staticmethod
    def _one(item: InstructItem) -> str:
        if item.modality == UNION:
            looks = "; ".join(f"on {phrase} {d.get('intensity', 'no description')}" for phrase, d in item.descriptions)
            location = item.descriptions[0][1].get("location", "")
            return (
                f"Segment the {item.target} using all scans of this slice. It lies in the {location}. It looks {looks}."
            )
        phrase, d = item.descriptions[0]
        if d.get("visible") == "no":
            return f"The {item.target} is not in this {phrase} slice: {d.get('location', 'no body tissue')}."
        return (
            f"Segment the {item.target} in this {phrase} slice. It lies in the {d.get('location', '')}. "
            f"It appears {d.get('intensity', '')}. Shape: {d.get('size_shape', '')}. "
            f"Boundary: {d.get('boundary', '')}."
        )
