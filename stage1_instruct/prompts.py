"""Prompt templates, kept as files in ``prompts/``: ``describe`` (vision-language model), ``instruct`` (LLM,
one modality) and ``union`` (LLM, all modalities of a slice). Placeholders: ``<modality>``, ``<instance>``,
``<description>``, ``<position>`` (where the slice lies in the body)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

PROMPT_DIR = Path(__file__).resolve().parent / "prompts"


@dataclass(frozen=True)
class Prompts:
    describe: str
    instruct: str
    union: str

    @classmethod
    def load(cls, folder: Path = PROMPT_DIR) -> Prompts:
        return cls(
            *(
                (folder / f"{name}.txt").read_text(encoding="utf-8").strip()
                for name in ("describe", "instruct", "union")
            )
        )

    @property
    def hash(self) -> str:
        """Changes whenever any template changes: part of every request key."""
        return hashlib.sha256("\x00".join((self.describe, self.instruct, self.union)).encode()).hexdigest()[:16]


def render(template: str, *, modality: str, instance: str, description: str = "", position: str = "") -> str:
    for placeholder, value in (
        ("<modality>", modality),
        ("<instance>", instance),
        ("<description>", description),
        ("<position>", position),
    ):
        template = template.replace(placeholder, value)
    return template
