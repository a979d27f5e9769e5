"""Instruct step: an LLM (or the ``template`` baseline) turns descriptions into one segmentation instruction,
per modality, and one *union* instruction per slice and target that combines all its modalities."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from stage1_instruct.describe import Description


@dataclass(frozen=True)
class InstructItem:
    """One instruction to write.

    modality: the manifest modality name, or ``"union"``; descriptions: ``(modality phrase, Description)``
    pairs, one for a modality request and one per modality for a union request; prompt: the rendered LLM
    prompt (what an LLM backend sends, and what deduplicates identical requests).
    """

    target: str
    modality: str
    descriptions: tuple[tuple[str, Description], ...]
    prompt: str


class Instructor(Protocol):
    model_id: str
    source: str  # what its rows record as ``instruction_source``: "llm" or "template"

    def instruct(self, items: Sequence[InstructItem]) -> list[str]: ...


def target_name(target: str) -> str:
    """A label name as words: ``right_kidney`` -> ``right kidney``."""
    return " ".join(re.split(r"[_\s]+", target)).strip()


def names_target(text: str, target: str) -> bool:
    """Whether ``text`` names ``target`` (as written or as words, any case)."""
    pattern = r"[_\s-]+".join(re.escape(w) for w in target_name(target).split())
    return re.search(pattern, text, flags=re.IGNORECASE) is not None


def answer_prefix(item: InstructItem) -> str:
    """How an LLM's answer is made to start: anchors small models on the task and the target."""
    return f"Segment the {target_name(item.target)}"


def clean_instruction(text: str, target: str, max_sentences: int = 2, max_words: int = 60) -> str:
    """Tidy a generated instruction: one paragraph of at most ``max_sentences`` full sentences and
    ``max_words`` words, naming the target (small LLMs drift; the name is what the decoder must key on)."""
    text = " ".join(text.replace("Instruction:", " ").split()).strip(" \"'")
    sentences = re.findall(r"[^.!?]+[.!?]", text) or [text]
    text = " ".join(s.strip() for s in sentences[:max_sentences])
    words = text.split()
    if len(words) > max_words:
        text = " ".join(words[:max_words]).rstrip(",;:") + "."
    if not names_target(text, target):
        text = f"Segment the {target_name(target)}. {text}".strip()
    return text
