"""Curated prior knowledge of each target's location and appearance per modality (``knowledge/*.json``).

Looked up by target name across all files, so any dataset whose labels name these structures (the demo, a
user's abdominal MR) gets it. Names are matched loosely, as users write them: case, ``_``/``-``/spaces and
brackets, word order, ``R``/``L``, ``tumor``/``tumour`` and each entry's ``aliases`` (``right_kidney``,
``Kidney (R)``, ``RK``, ``PZ``, ``ET`` ...). A target with no entry gets a neutral ``TargetKnowledge`` that says
nothing about it (``known=False``); ``unknown_targets`` names them so the runner can warn.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

KNOWLEDGE_DIR = Path(__file__).resolve().parent / "knowledge"

# Word-level spellings that mean the same thing in label names.
_WORDS = {"r": "right", "rt": "right", "l": "left", "lt": "left", "tumor": "tumour", "oedema": "edema"}


@dataclass(frozen=True)
class RegionPrior:
    """Where and how a target shows in an axial section, in the body coordinates of ``describe/regions.py``
    (x: -1 patient's right edge .. +1 left edge; y: -1 anterior .. +1 posterior), its share of the body
    section, and its brightness relative to the body's median per modality: a range ``[low, high]`` of that
    ratio, or a word (``brighter``, ``darker``, ``similar``, ``any``); looked up like ``looks_in``."""

    x: tuple[float, float]
    y: tuple[float, float]
    area: tuple[float, float]
    brightness: dict[str, str | list[float]] = field(default_factory=dict)

    def brightness_in(self, modality: str) -> tuple[float, float]:
        """The expected range of (region mean / body median) in this modality."""
        value = _by_modality(self.brightness, modality, "any")
        return tuple(value) if isinstance(value, list) else _BRIGHTNESS_WORDS[value]


_BRIGHTNESS_WORDS = {
    "brighter": (1.15, float("inf")),
    "darker": (0.0, 0.85),
    "similar": (0.85, 1.15),
    "any": (0.0, float("inf")),
}


def _by_modality(entries: dict, modality: str, fallback):
    """A modality's own entry, else the longest entry its name starts with (``T2SPIR`` -> ``T2``), else the
    ``default`` entry, else ``fallback``."""
    if modality in entries:
        return entries[modality]
    plain = re.sub(r"[^a-z0-9]", "", modality.lower())
    prefixes = [k for k in entries if k != "default" and plain.startswith(re.sub(r"[^a-z0-9]", "", k.lower()))]
    if prefixes:
        return entries[max(prefixes, key=len)]
    return entries.get("default") or fallback


@dataclass(frozen=True)
class TargetKnowledge:
    name: str
    known: bool = False  # False: no entry matched the name; the fields below say nothing
    entry: str = ""  # the knowledge entry the name matched
    location: str = "no prior knowledge of its location"
    side: str = "unknown"  # right | left | midline | either | unknown
    craniocaudal: tuple[float, float] = (0.0, 1.0)  # where it is expected: 0 = lowest slice, 1 = highest
    size_shape: str = "size and shape not described in the knowledge base"
    boundary: str = "boundary not described in the knowledge base"
    appearance: dict[str, str] = field(default_factory=dict)
    region: RegionPrior | None = None  # None: nothing to match the slice's candidate regions against

    def looks_in(self, modality: str) -> str:
        """The appearance for a modality (see ``_by_modality``)."""
        return _by_modality(self.appearance, modality, "appearance not described")


def name_key(name: str) -> str:
    """A label name reduced to what identifies it: lower-case words, abbreviations spelled out, sorted."""
    words = [_WORDS.get(w, w) for w in re.split(r"[^a-z0-9]+", name.lower()) if w]
    return " ".join(sorted(words))


@cache
def _spellings() -> tuple[tuple[str, str, dict], ...]:
    """(spelling, entry name, entry) for every entry name and alias of every knowledge file."""
    out = []
    for path in sorted(KNOWLEDGE_DIR.glob("*.json")):
        for name, entry in json.loads(path.read_text(encoding="utf-8"))["targets"].items():
            out.extend((spelling, name, entry) for spelling in (name, *entry.get("aliases", ())))
    return tuple(out)


@cache
def _index() -> dict[str, tuple[str, dict]]:
    """name key -> (entry name, entry)."""
    return {name_key(spelling): (name, entry) for spelling, name, entry in _spellings()}


def knowledge_for(target: str) -> TargetKnowledge:
    found = _index().get(name_key(target))
    if found is None:
        return TargetKnowledge(name=target)
    entry_name, entry = found
    expect = entry.get("expect")
    return TargetKnowledge(
        name=target,
        known=True,
        entry=entry_name,
        location=entry["location"],
        side=entry.get("side", "either"),
        craniocaudal=tuple(entry.get("craniocaudal", (0.0, 1.0))),
        size_shape=entry["size_shape"],
        boundary=entry["boundary"],
        appearance=dict(entry["appearance"]),
        region=RegionPrior(
            x=tuple(expect["x"]),
            y=tuple(expect["y"]),
            area=tuple(expect["area"]),
            brightness=dict(expect.get("brightness", {})),
        )
        if expect
        else None,
    )


def organ_names() -> list[tuple[str, str]]:
    """Every spelling the knowledge base knows (entry names and aliases), each with the entry it names."""
    return [(spelling, name) for spelling, name, _ in _spellings()]


def unknown_targets(targets: Iterable[str]) -> list[str]:
    """The targets no knowledge entry matches (their descriptions carry image measurements only)."""
    return [t for t in targets if not knowledge_for(t).known]


def knowledge_hash() -> str:
    digest = hashlib.sha256()
    for path in sorted(KNOWLEDGE_DIR.glob("*.json")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
