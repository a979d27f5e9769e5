"""Is a generated instruction faithful to the facts it was written from?

An LLM instruction is kept only if it (1) names its target, (2) names no other organ of the knowledge base
that its facts do not mention, (3) keeps the patient side of the target (``right``/``left`` for a lateral
target, never the opposite side unless the facts say it), (4) keeps the level word of the slice (``upper``,
``middle``, ``lower``), (5) keeps the visibility (a target unlikely at this level is not told as visible,
a likely one not as absent), and (6) stays within ``MAX_WORDS`` words. A failing instruction is replaced by
the template sentence; the row records which (``instruction_source``).
"""

from __future__ import annotations

import re
from functools import cache

from stage1_instruct.describe import description_text
from stage1_instruct.instruct import InstructItem, names_target, target_name
from stage1_instruct.knowledge import knowledge_for, organ_names

MAX_WORDS = 60
_NEGATION = re.compile(r"\b(not|unlikely|absent|no|none)\b")


def _words(text: str) -> str:
    """Lower-case words between spaces; "image left/right" (a display side, not the patient's) dropped."""
    words = " " + " ".join(re.split(r"[^a-z0-9]+", text.lower())) + " "
    return re.sub(r" image (left|right) ", " image ", words)


def _mentions(words: str, name: str) -> bool:
    return f" {' '.join(re.split(r'[^a-z0-9]+', name.lower())).strip()} " in words


@cache
def _other_organs(target: str) -> tuple[str, ...]:
    """The spellings of every knowledge entry but the target's own."""
    own = knowledge_for(target).entry
    return tuple(spelling for spelling, entry in organ_names() if entry != own)


def faithfulness_problems(text: str, item: InstructItem) -> list[str]:
    """What is wrong with ``text`` as the instruction of ``item`` (empty: faithful)."""
    problems = []
    words = _words(text)
    facts = _words(" ".join(description_text(d) for _, d in item.descriptions) + " " + target_name(item.target))
    if len(text.split()) > MAX_WORDS:
        problems.append(f"{len(text.split())} words, more than {MAX_WORDS}")
    if not names_target(text, item.target):
        problems.append(f"does not name the {target_name(item.target)}")
    others = [n for n in _other_organs(item.target) if _mentions(words, n) and not _mentions(facts, n)]
    if others:
        problems.append(f"names {', '.join(sorted(set(others)))}, not in its facts")
    side = knowledge_for(item.target).side
    if side in ("right", "left"):
        opposite = "left" if side == "right" else "right"
        if f" {side} " not in words:
            problems.append(f"drops the side ({side})")
        if f" {opposite} " in words and f" {opposite} " not in facts:
            problems.append(f"names the wrong side ({opposite})")
    described = [d for _, d in item.descriptions if d.get("visible") != "no"]
    levels = {str(d.get("level", "")).split(" ", 1)[0] for d in described} & {"upper", "middle", "lower"}
    if levels and not any(f" {level} " in words for level in levels):
        problems.append(f"drops the level ({'/'.join(sorted(levels))})")
    visibility = {str(d.get("visible", "")) for d in described}
    if visibility and all(v.startswith("unlikely") for v in visibility) and not _NEGATION.search(words):
        problems.append("tells an unlikely target as visible")
    if visibility == {"likely"} and re.search(r"\b(not (visible|seen|present)|absent)\b", words):
        problems.append("tells a likely target as absent")
    return problems
