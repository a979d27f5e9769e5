"""Run stage 1 over a dataset: locally (optionally one shard of n, e.g. a SLURM array task) or on Ray Data.

Both runners do the same thing per case (``InstructionGenerator.run_case``) and write the same shards.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

from tqdm import tqdm

from shared.cases import CaseCache
from shared.errors import DataError, ZeusError
from shared.instructions import InstructionStore, RunLogEntry
from shared.manifest import Dataset
from shared.readers import select_cases
from stage1_instruct.backends import build_backends
from stage1_instruct.config import Stage1Config
from stage1_instruct.generate import InstructionGenerator, Stats
from stage1_instruct.knowledge import unknown_targets

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Shard:
    """Worker ``index`` of ``count``: takes every count-th case, so n workers split a dataset disjointly."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> Shard:
        try:
            index, count = (int(v) for v in text.split("/"))
        except ValueError:
            raise ZeusError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
        if not 0 <= index < count:
            raise ZeusError(f"--shard {text}: need 0 <= i < n")
        return cls(index, count)

    def select(self, case_ids: list[str]) -> list[str]:
        return sorted(case_ids)[self.index :: self.count]


@dataclass
class RunReport:
    stats: Stats
    seconds: float
    store: InstructionStore
    unknown_targets: list[str]

    def record(self) -> RunReport:
        """Append this run's cost to the store's run log (read by the report)."""
        entry = RunLogEntry(
            finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **asdict(self.stats),
            seconds=round(self.seconds, 3),
            model_calls=self.stats.model_calls,
            unknown_targets=self.unknown_targets,
        )
        self.store.append_run(entry)
        return self

    def summary(self) -> str:
        s = self.stats
        rate = s.requests / self.seconds if self.seconds > 0 else float("inf")
        return (
            f"{s.cases} case(s), {s.requests} requests: {s.cached} cached, {s.requests - s.cached} generated "
            f"({s.described} described, {s.instructed} LLM prompts, {s.embedded} texts embedded; "
            f"{s.no_body} on slices without body{self._checked()}) in {self.seconds:.1f} s, {rate:.1f} requests/s "
            f"-> {self.store.folder}"
        )

    def _checked(self) -> str:
        s = self.stats
        checked = s.llm_kept + s.llm_replaced
        if not checked:
            return ""
        return f"; LLM instructions: {s.llm_kept} kept, {s.llm_replaced} replaced by the template as unfaithful"


def instruction_store(dataset: Dataset, config: Stage1Config) -> InstructionStore:
    """Where a stage-1 configuration writes a dataset's instructions."""
    return InstructionStore.of(dataset.name, config.store_tag)


def warn_unknown_targets(dataset: Dataset) -> list[str]:
    """Targets no knowledge entry matches: named in a warning (and the run log), never described as if known."""
    unknown = unknown_targets(dataset.manifest.targets)
    if unknown:
        log.warning(
            "no knowledge entry for the target(s) %s of %s: their descriptions carry image measurements only. "
            "Name them as in stage1_instruct/knowledge/*.json (or add an entry or alias there).",
            unknown,
            dataset.name,
        )
    return unknown


def plan_cases(dataset: Dataset, case_ids: list[str] | None, shard: Shard) -> list[str]:
    return shard.select(select_cases(dataset, case_ids))


def prepare_images(dataset: Dataset, config: Stage1Config, case_ids: list[str], progress: bool) -> CaseCache:
    """Preprocess the cases' images only: stage 1 never opens a label file."""
    cache = CaseCache(dataset, config.image_size)
    summary = cache.prepare(case_ids, with_labels=False, progress=progress, workers=1)
    if summary.problems:
        raise DataError(summary.problems)
    return cache


def run_local(
    dataset: Dataset,
    config: Stage1Config,
    case_ids: list[str] | None = None,
    shard: Shard = Shard(),
    progress: bool = True,
) -> RunReport:
    start = time.perf_counter()
    unknown = warn_unknown_targets(dataset)
    ids = plan_cases(dataset, case_ids, shard)
    cache = prepare_images(dataset, config, ids, progress)
    stats = instruct_cases(dataset, config, cache, ids, progress)
    return RunReport(stats, time.perf_counter() - start, instruction_store(dataset, config), unknown).record()


def instruct_cases(
    dataset: Dataset, config: Stage1Config, cache: CaseCache, case_ids: list[str], progress: bool = True
) -> Stats:
    """Stage 1 on prepared cases: the dataset's own, or new scans (``CaseCache.prepare_sources``)."""
    generator = InstructionGenerator(dataset, config, build_backends(config), instruction_store(dataset, config))
    stats = Stats()
    with tqdm(case_ids, desc=f"instructions {dataset.name}", unit="case", disable=not progress) as bar:
        for case_id in bar:
            stats += generator.run_case(cache.load(case_id, with_label=False))
            bar.set_postfix(cached=stats.cached, generated=stats.requests - stats.cached)
    return stats


class _CaseWorker:
    """A Ray Data actor: loads the models once, then runs whole cases (one shard each)."""

    def __init__(self, dataset: Dataset, config: Stage1Config):
        self.cache = CaseCache(dataset, config.image_size)
        self.generator = InstructionGenerator(
            dataset, config, build_backends(config), instruction_store(dataset, config)
        )

    def __call__(self, batch: dict) -> dict:
        results = [self.generator.run_case(self.cache.load(str(c), with_label=False)) for c in batch["case_id"]]
        return {name: [getattr(r, name) for r in results] for name in Stats.__dataclass_fields__}


def run_ray(
    dataset: Dataset,
    config: Stage1Config,
    case_ids: list[str] | None = None,
    workers: int = 1,
    progress: bool = True,
) -> RunReport:
    """Map the cases over a pool of ``workers`` model replicas with Ray Data (a local instance unless one is
    running, or ``RAY_ADDRESS`` names a cluster); one GPU per replica when a vLLM backend is used."""
    import ray

    start = time.perf_counter()
    unknown = warn_unknown_targets(dataset)
    ids = plan_cases(dataset, case_ids, Shard())
    prepare_images(dataset, config, ids, progress)
    if not ray.is_initialized():
        env = {k: v for k, v in os.environ.items() if k in ("ZEUS_HOME", "HF_HUB_OFFLINE", "ZEUS_DATA_ROOT")}
        ray.init(include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    uses_gpu = "vllm" in (config.describe, config.instruct, config.embed)
    results = (
        ray.data.from_items([{"case_id": c} for c in ids])
        .map_batches(
            _CaseWorker,
            fn_constructor_kwargs={"dataset": dataset, "config": config},
            batch_size=1,
            concurrency=workers,
            num_gpus=config.vllm.tensor_parallel_size if uses_gpu else 0,
        )
        .take_all()
    )
    stats = Stats()
    for row in results:
        stats += Stats(**{name: int(row[name]) for name in Stats.__dataclass_fields__})
    return RunReport(stats, time.perf_counter() - start, instruction_store(dataset, config), unknown).record()
