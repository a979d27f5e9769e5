"""Describe step: a vision-language model (or the offline ``image-facts`` substitute) says what in a slice
matters for segmenting a target in one modality. Output: a ``Description`` with the fields of ``FIELDS``."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from PIL import Image

# What a vision-language model is asked for (prompts/describe.txt and the vLLM JSON schema agree on these).
FIELDS = ("visible", "location", "level", "size_shape", "intensity", "boundary")
# The text fields an instruction is written from: FIELDS plus the offline describer's matched ``region``. A
# description may also hold ``facts``, the numbers behind the text (not shown to the LLM).
TEXT_FIELDS = ("visible", "level", "location", "region", "size_shape", "intensity", "boundary")
Description = dict[str, Any]


@dataclass(frozen=True)
class DescribeItem:
    """One request: a slice of one modality and one target.

    image: ``[S, S]`` float32 in [0, 1], the model slice (zero padding at the bottom/right beyond ``valid_hw``).
    """

    image: np.ndarray
    valid_hw: tuple[int, int]
    modality: str
    modality_phrase: str
    target: str
    slice_position: float  # 0 = lowest slice of the volume, 1 = highest
    body_position: float | None = None  # 0 = lowest slice with body in this scan, 1 = highest; None: unknown

    @property
    def level_position(self) -> float:
        """Where the slice lies within the body's extent (the scan's when that is not known)."""
        return self.slice_position if self.body_position is None else self.body_position

    def level_words(self) -> str:
        """The slice's position for a prompt, e.g. ``"upper third of the body's extent (0.78)"``."""
        return f"{level_third(self.level_position)} third of the body's extent in this scan ({self.level_position:.2f})"

    def crop(self) -> np.ndarray:
        return self.image[: self.valid_hw[0], : self.valid_hw[1]]

    def to_pil(self) -> Image.Image:
        """The slice without padding as an 8-bit RGB image (what VLM processors expect)."""
        return Image.fromarray((np.clip(self.crop(), 0, 1) * 255).astype(np.uint8)).convert("RGB")


def level_third(position: float) -> str:
    return ("lower", "middle", "upper")[min(2, int(position * 3))]


class Describer(Protocol):
    model_id: str

    def describe(self, items: Sequence[DescribeItem]) -> list[Description]: ...


def description_text(description: Description) -> str:
    return "; ".join(
        f"{key.replace('_', ' ')}: {description[key]}" for key in TEXT_FIELDS if isinstance(description.get(key), str)
    )


_SHARE = re.compile(r", \d+ % of the section")
# What an LLM is given to write from: the slice-specific facts and the appearance (the template keeps the rest).
LLM_FIELDS = ("visible", "level", "region", "intensity")


def llm_facts(description: Description) -> str:
    """The facts an LLM writes an instruction from: ``LLM_FIELDS``, the region without its exact share of the
    section (slices that differ only in size then share one prompt; the template sentence keeps the share)."""
    parts = []
    for key in LLM_FIELDS:
        value = description.get(key)
        if isinstance(value, str) and value:
            parts.append(f"{key}: {_SHARE.sub('', value)}")
    return "; ".join(parts)


def parse_description(text: str) -> Description:
    """A model's JSON answer as a Description; free text that is not JSON is kept whole as the location."""
    start, end = text.find("{"), text.rfind("}")
    try:
        data = json.loads(text[start : end + 1]) if start >= 0 < end else None
    except json.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        return {"visible": "uncertain", "location": " ".join(text.split())}
    return {key: " ".join(str(data[key]).split()) for key in FIELDS if data.get(key)}
