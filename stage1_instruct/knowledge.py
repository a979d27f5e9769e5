"""Curated prior knowledge of each target's location and appearance per modality (``knowledge/*.json``).

Looked up by target name across all files, so any dataset whose labels use these names (the demo, a user's
abdominal MR) gets it; an unknown target gets a neutral entry that only names it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

KNOWLEDGE_DIR = Path(__file__).resolve().parent / "knowledge"


@dataclass(frozen=True)
class TargetKnowledge:
    name: str
    location: str = "location not described in the knowledge base"
    side: str = "either"  # right | left | midline | either
    craniocaudal: tuple[float, float] = (0.0, 1.0)  # where it is expected: 0 = lowest slice, 1 = highest
    size_shape: str = "size and shape not described in the knowledge base"
    boundary: str = "boundary not described in the knowledge base"
    appearance: dict[str, str] = field(default_factory=dict)

    def looks_in(self, modality: str) -> str:
        return self.appearance.get(modality) or self.appearance.get("default") or "appearance not described"


@cache
def _entries() -> dict[str, dict]:
    entries: dict[str, dict] = {}
    for path in sorted(KNOWLEDGE_DIR.glob("*.json")):
        entries.update({k.lower(): v for k, v in json.loads(path.read_text(encoding="utf-8"))["targets"].items()})
    return entries


def knowledge_for(target: str) -> TargetKnowledge:
    entry = _entries().get(target.lower())
    if entry is None:
        return TargetKnowledge(name=target)
    return TargetKnowledge(
        name=target,
        location=entry["location"],
        side=entry.get("side", "either"),
        craniocaudal=tuple(entry.get("craniocaudal", (0.0, 1.0))),
        size_shape=entry["size_shape"],
        boundary=entry["boundary"],
        appearance=dict(entry["appearance"]),
    )


def knowledge_hash() -> str:
    digest = hashlib.sha256()
    for path in sorted(KNOWLEDGE_DIR.glob("*.json")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
