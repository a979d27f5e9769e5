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
(schema in the README, "Stage 1 descriptions").
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from stage1_instruct.describe import DescribeItem, Description, level_third
from stage1_instruct.describe.regions import Region, SliceRegions, has_body, measure
from stage1_instruct.instruct import target_name
from stage1_instruct.knowledge import RegionPrior, TargetKnowledge, knowledge_for, knowledge_hash, rivals

__all__ = ["ImageFactsDescriber", "has_body", "match_region", "region_words"]

VERSION = "v3"
# A region's fit (``target_fit``) must reach FAIR_FIT to be told as the target. Calibrated on the dev labels
# (``benchmarks/describer.py``): such a region lies mostly inside its organ 59-91 % of the time.
GOOD_FIT, FAIR_FIT = 0.4, 0.15
OFF_LEVEL = 0.3  # a slice outside the target's craniocaudal range weighs its regions' fit by this

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
    """Whether a candidate lies within a target's prior, in [0, 1]: the product of its position, size and
    brightness memberships (the size compared on a log scale: a factor of 2 outside the range scores 0)."""
    position = _interval(region.x, *prior.x, 0.2) * _interval(region.y, *prior.y, 0.2)
    size = _interval(math.log2(max(region.area, 1e-6)), math.log2(prior.area[0]), math.log2(prior.area[1]), 1.0)
    return position * size * _brightness_fit(region.brightness, prior.brightness_in(modality))


def _peak(value: float, lo: float, hi: float) -> float:
    """A Gaussian preference for the middle of ``[lo, hi]`` (half the range is one standard deviation: 0.61 at
    either end); 1 for an unbounded range, which has no middle."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return 1.0
    return math.exp(-0.5 * ((value - (lo + hi) / 2) / ((hi - lo) / 2)) ** 2)


def typicality(region: Region, prior: RegionPrior, modality: str) -> float:
    """How typical a candidate within the prior is, in (0, 1]: near the middle of its position, size (log) and
    brightness (log) ranges, and solid (squared solidity: a whole organ, not a ragged fragment or a bowel loop)."""
    log = lambda v: math.log(max(v, 1e-6)) if math.isfinite(v) else v  # noqa: E731
    brightness = prior.brightness_in(modality)
    return (
        _peak(region.x, *prior.x)
        * _peak(region.y, *prior.y)
        * _peak(log(region.area), log(prior.area[0]), log(prior.area[1]))
        * _peak(log(region.brightness), log(brightness[0]), log(brightness[1]))
        * region.solidity**2
    )


def target_fit(region: Region, known: TargetKnowledge, modality: str, level: float) -> float:
    """How well a candidate fits a target on a slice at this level, in [0, 1]: within the prior
    (``region_fit``), typical of it (``typicality``), at a level where the target is expected."""
    fit = region_fit(region, known.region, modality)
    if fit == 0:
        return 0.0
    lo, hi = known.craniocaudal
    return fit * typicality(region, known.region, modality) * (1.0 if lo <= level <= hi else OFF_LEVEL)


def match_region(
    regions: SliceRegions, known: TargetKnowledge, modality: str, level: float
) -> tuple[Region | None, float]:
    """The candidate told as the target, and its fit (None, 0 when no candidate reaches FAIR_FIT).

    The candidates are shared out between the target and its rivals (``knowledge.rivals``: the other organs of
    its knowledge file) by the assignment of largest total fit, so a region is never told as two organs: a
    bright region beside the spine on the patient's left goes to the left kidney, not also to the spleen."""
    if known.region is None or not regions.candidates:
        return None, 0.0
    targets = rivals(known.name)
    fits = np.array([[target_fit(r, k, modality, level) for r in regions.candidates] for k in targets])
    fits[fits < FAIR_FIT] = 0.0
    rows, columns = linear_sum_assignment(fits, maximize=True)
    best = dict(zip(rows.tolist(), columns.tolist(), strict=True)).get(0)
    if best is None or fits[0, best] == 0:
        return None, 0.0
    return regions.candidates[best], float(fits[0, best])


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
        region, fit = match_region(regions, known, item.modality, position)
        name = target_name(item.target)
        if known.region is None:
            region_text = "no prior to match regions against"
        elif not regions.candidates:
            region_text = "no candidate region"
        elif region is None:
            region_text = f"no region of this slice fits the {name}"
        else:
            region_text = f"{region_words(region)}: fits the {name} {'well' if fit >= GOOD_FIT else 'partly'}"
        if not expected:
            visible = "unlikely at this level"
        elif known.region is not None and region is None:
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
            "match": (region.rounded() | {"fit": round(fit, 3)}) if region is not None else None,
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
