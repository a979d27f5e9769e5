"""The offline describer: label-free measurements of this slice, joined with curated prior knowledge.

No vision-language model ships offline, so this is the honest substitute. From the pixels of one modality it
measures the body (``regions.measure``: outline, centre, size) and candidate regions found from the image
alone (intensity classes and connected components, each placed in body coordinates with its size,
brightness and shape). From the knowledge base it takes what the target should look like (``expect``: side,
anterior/posterior position, share of the section, brightness in this modality, level range) and says which
candidate fits the target and how well, e.g. "a large homogeneous region in the patient's right anterior
body, 31 % of the section, similar to the body average: fits the liver well". The level is the slice's
position within the *body's* extent in the scan (first to last slice with body), not within the scan.

The description's text fields are what the instruct step reads; ``facts`` holds the numbers behind them
(schema in docs/reference.md, "Descriptions").
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from stage1_instruct.describe import DescribeItem, Description, level_third
from stage1_instruct.describe.regions import Region, SliceRegions, has_body, measure
from stage1_instruct.instruct import target_name
from stage1_instruct.knowledge import RegionPrior, TargetKnowledge, knowledge_for, knowledge_hash

__all__ = ["ImageFactsDescriber", "has_body", "match_region", "region_words"]

VERSION = "v2"
GOOD_FIT, FAIR_FIT = 0.85, 0.6  # on the dev data, a fair fit (>= 0.6) lies mostly inside its organ 24-82 % of the time

_SIDE_PRIOR = {
    "right": "in the patient's right half (the image left)",
    "left": "in the patient's left half (the image right)",
    "midline": "near the midline",
    "either": "on either side",
}


def _interval(value: float, lo: float, hi: float, margin: float) -> float:
    """1 inside ``[lo, hi]``, falling linearly to 0 at ``margin`` outside."""
    distance = max(lo - value, value - hi, 0.0)
    return max(0.0, 1.0 - distance / margin)


def _brightness_fit(ratio: float, expected: tuple[float, float]) -> float:
    """1 inside the expected range of region mean / body median, falling to 0.1 at a factor 2 outside."""
    low, high = (math.log2(max(v, 1e-6)) if math.isfinite(v) else v for v in expected)
    return max(0.1, _interval(math.log2(max(ratio, 1e-6)), low, high, 1.0))


def region_fit(region: Region, prior: RegionPrior, modality: str) -> float:
    """How well a candidate fits a target's prior, in [0, 1]: the product of its position, size and brightness
    memberships (the size compared on a log scale: a factor of 2 outside the range scores 0)."""
    position = _interval(region.x, *prior.x, 0.2) * _interval(region.y, *prior.y, 0.2)
    size = _interval(math.log2(max(region.area, 1e-6)), math.log2(prior.area[0]), math.log2(prior.area[1]), 1.0)
    return position * size * _brightness_fit(region.brightness, prior.brightness_in(modality))


def match_region(regions: SliceRegions, known: TargetKnowledge, modality: str) -> tuple[Region | None, float]:
    """The candidate that best fits the target, and its fit (None, 0 when there is no candidate or no prior)."""
    if known.region is None or not regions.candidates:
        return None, 0.0
    fits = [region_fit(r, known.region, modality) for r in regions.candidates]
    best = int(np.argmax(fits))
    return regions.candidates[best], fits[best]


_SIZES = ((0.02, "small"), (0.08, "medium-sized"), (0.25, "large"), (float("inf"), "very large"))


def region_words(region: Region) -> str:
    """A candidate in words: size, texture, shape, place in the body, share of the section, brightness."""
    side = "right" if region.x < -0.33 else "left" if region.x > 0.33 else "middle"
    depth = "anterior" if region.y < -0.33 else "posterior" if region.y > 0.33 else "central"
    place = f"the patient's {side} {depth} body" if side != "middle" else f"the {depth} middle of the body"
    size = next(word for bound, word in _SIZES if region.area < bound)
    texture = "homogeneous" if region.homogeneity > 0.8 else "heterogeneous"
    shape = "elongated" if region.elongation > 0.6 else "irregular" if region.solidity < 0.8 else "compact"
    brightness = (
        "darker than" if region.brightness < 0.85 else "brighter than" if region.brightness > 1.15 else "similar to"
    )
    share = max(1, round(region.area * 100))
    return f"a {size} {texture} {shape} region in {place}, {share} % of the section, {brightness} the body average"


class ImageFactsDescriber:
    def __init__(self) -> None:
        self.model_id = f"image-facts-{VERSION}/knowledge-{knowledge_hash()}"

    def describe(self, items: Sequence[DescribeItem]) -> list[Description]:
        measured: dict[bytes, SliceRegions] = {}  # the targets of one image share its measurement
        out = []
        for item in items:
            image = np.ascontiguousarray(item.crop())
            key = hashlib.blake2b(image.tobytes(), digest_size=16).digest()
            if key not in measured:
                measured[key] = measure(image)
            out.append(self._describe(item, measured[key]))
        return out

    @staticmethod
    def _describe(item: DescribeItem, regions: SliceRegions) -> Description:
        if regions.body is None:
            return {"visible": "no", "location": "no body tissue is visible in this slice"}
        known = knowledge_for(item.target)
        position = item.level_position
        lo, hi = known.craniocaudal
        expected = lo <= position <= hi
        region, fit = match_region(regions, known, item.modality)
        fits = fit >= FAIR_FIT
        name = target_name(item.target)
        if region is None:
            region_text = "no prior to match regions against" if known.region is None else "no candidate region"
        elif fits:
            region_text = f"{region_words(region)}: fits the {name} {'well' if fit >= GOOD_FIT else 'partly'}"
        else:
            region_text = f"no region of this slice fits the {name}"
        if not expected:
            visible = "unlikely at this level"
        elif known.region is not None and not fits:
            visible = "uncertain"
        else:
            visible = "likely"
        facts: dict[str, Any] = {
            "level": round(position, 3),
            "body": {
                "centre": [round(float(v), 1) for v in regions.body.centre],
                "half_extent": [round(float(v), 1) for v in regions.body.half_extent],
                "image_share": round(regions.body.image_share, 3),
            },
            "candidates": len(regions.candidates),
            "match": (region.rounded() | {"fit": round(fit, 3)}) if region is not None and fits else None,
        }
        return {
            "visible": visible,
            "level": (
                f"{level_third(position)} third of the body's extent in this scan, where the {name} is "
                f"{'expected' if expected else 'usually not seen'}"
            ),
            "location": f"{known.location}; {_SIDE_PRIOR[known.side]}" if known.side in _SIDE_PRIOR else known.location,
            "region": region_text,
            "size_shape": known.size_shape,
            "intensity": known.looks_in(item.modality),
            "boundary": known.boundary,
            "facts": facts,
        }
