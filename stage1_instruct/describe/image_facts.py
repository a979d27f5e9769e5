"""The offline describer: label-free facts measured on the pixels, joined with curated prior knowledge.

No vision-language model ships offline, so this is the honest substitute: it reports only what the image
shows (is there body tissue, how much of the image it fills, how bright it is, which image side is the
patient's right in the canonical orientation) and what the knowledge base says about the target in this
modality and at this level of the scan. Measurements are put in coarse words (lower/middle/upper third,
dark/intermediate/bright) so that similar slices give identical descriptions, which lets the LLM step
deduplicate its prompts.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.ndimage import binary_fill_holes
from skimage.filters import threshold_otsu

from stage1_instruct.describe import DescribeItem, Description
from stage1_instruct.knowledge import knowledge_for, knowledge_hash

MIN_BODY_FRACTION = 0.01
_SIDE = {
    "right": "on the image left (the patient's right)",
    "left": "on the image right (the patient's left)",
    "midline": "near the middle of the body",
    "either": "on either side",
}


def body_mask(image: np.ndarray) -> np.ndarray:
    """Body tissue of a normalised slice: above Otsu's threshold (against air/background), holes filled."""
    if float(image.max()) - float(image.min()) < 1e-3:
        return np.zeros(image.shape, bool)
    return binary_fill_holes(image > threshold_otsu(image))


def has_body(image: np.ndarray) -> bool:
    return body_mask(image).mean() >= MIN_BODY_FRACTION


def _level(position: float) -> str:
    return ("lower", "middle", "upper")[min(2, int(position * 3))]


class ImageFactsDescriber:
    def __init__(self) -> None:
        self.model_id = f"image-facts/knowledge-{knowledge_hash()}"

    def describe(self, items: Sequence[DescribeItem]) -> list[Description]:
        return [self._describe(item) for item in items]

    def _describe(self, item: DescribeItem) -> Description:
        image = item.crop()
        body = body_mask(image)
        if not body.any():
            return {"visible": "no", "location": "no body tissue is visible in this slice"}
        known = knowledge_for(item.target)
        lo, hi = known.craniocaudal
        expected = lo <= item.slice_position <= hi
        brightness = ("dark", "intermediate", "bright")[min(2, int(np.median(image[body]) * 3))]
        extent = ("a small part", "about half", "most")[min(2, int(body.mean() * 3))]
        return {
            "visible": "likely" if expected else "unlikely at this level",
            "location": f"{known.location}; {_SIDE[known.side]}" if known.side in _SIDE else known.location,
            "level": (
                f"{_level(item.slice_position)} third of the scan, where the {item.target} is "
                f"{'expected' if expected else 'usually not seen'}"
            ),
            "size_shape": known.size_shape,
            "intensity": (
                f"{known.looks_in(item.modality)}; the body fills {extent} of this slice and is mostly {brightness}"
            ),
            "boundary": known.boundary,
        }
