"""``zeus ablate``: does the text help? The same model trained with each text mode at identical settings.

Every run of an ablation shares the fold, epochs, data order and initialisation of its seed; only ``--text``
differs: ``instructions`` (the stage-1 store), ``template`` (the no-LLM instructions), ``none`` (learned
class tokens) and ``shuffled`` (the instructions, each slice given another slice's of the same case,
modality and target: the class is kept, the slice-specific content destroyed). Each run is evaluated on the
test cases. Stage 1 runs apart (``make ablation`` runs it first: training never loads an LLM). The plan is
written to ``runs/<dataset>/ablation.json`` first and every run resumes, so an interrupted ablation continues
where it stopped.

``compare`` turns the evaluations into the report's "Does the text help?" numbers: test Dice per class,
mean ± std over seeds, and paired per-case differences of each mode against ``none`` and ``shuffled``, with
95 % intervals from a two-level bootstrap (cases, then seeds within each case).
"""

from __future__ import annotations

import csv
import json
import logging
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from shared.atomic import write_json
from shared.errors import ZeusError
from shared.instructions import PRESETS, InstructionStore
from shared.manifest import Dataset
from shared.workspace import runs_dir
from stage2_segment.config import SHUFFLED, TEXT_MODES, TrainConfig
from stage2_segment.runs import EVALUATED_SPLIT, RunFolder

log = logging.getLogger(__name__)

TEXTS = tuple(TEXT_MODES)  # instructions, template, none, shuffled
BASELINES = ("none", SHUFFLED)  # what each mode is compared against
PLAN_FILE = "ablation.json"
FOREGROUND = "foreground mean"


@dataclass(frozen=True)
class AblationPlan:
    dataset: str
    base: TrainConfig  # every setting but text, seed and run name
    texts: tuple[str, ...] = TEXTS
    seeds: tuple[int, ...] = (0, 1, 2)

    def __post_init__(self) -> None:
        unknown = [t for t in self.texts if t not in TEXT_MODES]
        if unknown:
            raise ZeusError(f"--texts: unknown text mode(s) {unknown}; choose from {list(TEXT_MODES)}")
        if len(self.texts) < 2 or not self.seeds:
            raise ZeusError("an ablation needs at least two text modes and one seed")
        if self.base.model != "zeus":
            raise ZeusError("zeus ablate compares text modes of the Zeus model; --model must be zeus")

    def run_name(self, text: str, seed: int) -> str:
        decoder = "-joint" if self.base.decoder == "joint" else ""
        return f"ablation__{self.base.fusion}{decoder}__text-{text}__fold{self.base.fold}__seed{seed}"

    def config(self, text: str, seed: int) -> TrainConfig:
        return replace(self.base, text=text, seed=seed, run_name=self.run_name(text, seed))

    def runs(self) -> list[tuple[str, int, str]]:
        """(text, seed, run name), seed-major: every mode of a seed before the next seed."""
        return [(t, s, self.run_name(t, s)) for s in self.seeds for t in self.texts]

    def to_json(self) -> dict:
        return {"dataset": self.dataset, "base": self.base.to_json(), "texts": self.texts, "seeds": self.seeds}

    @classmethod
    def from_json(cls, data: dict) -> AblationPlan:
        return cls(data["dataset"], TrainConfig.from_json(data["base"]), tuple(data["texts"]), tuple(data["seeds"]))


def plan_path(dataset: str) -> Path:
    return runs_dir(dataset) / PLAN_FILE


def read_plan(dataset: str) -> AblationPlan | None:
    path = plan_path(dataset)
    if not path.is_file():
        return None
    try:
        return AblationPlan.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, KeyError, TypeError) as e:
        raise ZeusError(f"{path} is damaged ({type(e).__name__}: {e}): rerun `zeus ablate {dataset}`") from None


def run_ablation(dataset: Dataset, plan: AblationPlan, *, progress: bool = True) -> list[Path]:
    """Train and evaluate every run of the plan not done yet (stage 1 must have written the stores)."""
    from stage2_segment.evaluate import evaluate_run
    from stage2_segment.train import train

    check_stores(dataset.name, plan)
    write_json(plan_path(dataset.name), plan.to_json())
    folders = []
    for i, (text, seed, name) in enumerate(plan.runs(), 1):
        run = RunFolder.of(dataset.name, name)
        log.info("ablation run %d/%d: %s", i, len(plan.runs()), name)
        if not _trained(run, plan.base.epochs):
            train(dataset, plan.config(text, seed), resume=True, progress=progress)
        if run.needs_evaluation(EVALUATED_SPLIT):
            evaluate_run(run.path, progress=progress)
        folders.append(run.path)
    return folders


def check_stores(dataset: str, plan: AblationPlan) -> None:
    """Every store a text mode reads has instructions, before anything is trained."""
    missing = {}
    for text in plan.texts:
        tag = plan.config(text, plan.seeds[0]).tag
        if tag and not InstructionStore.of(dataset, tag).case_ids():
            missing[tag] = text
    if missing:
        presets = {p.tag: name for name, p in PRESETS.items()}
        commands = "; ".join(
            f"`zeus instructions {dataset} --backend {presets[tag]}`" if tag in presets else f"store {tag}"
            for tag in missing
        )
        raise ZeusError(
            f"zeus ablate {dataset}: the text mode(s) {', '.join(missing.values())} read stage-1 stores with no "
            f"instructions yet ({', '.join(missing)}): run {commands} first (`make ablation` does)"
        )


def _trained(run: RunFolder, epochs: int) -> bool:
    return run.is_run() and len(run.read_log()) >= epochs


# -- comparison ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float

    @property
    def verdict(self) -> str:
        return "better" if self.low > 0 else "worse" if self.high < 0 else "no difference shown"


@dataclass(frozen=True)
class Comparison:
    """The ablation's numbers: ``dice[text][class]`` = per-seed test Dice (mean over cases), and
    ``paired[(text, baseline)][class]`` = the bootstrap interval of the per-case difference."""

    plan: AblationPlan
    classes: tuple[str, ...]  # the targets, then FOREGROUND
    cases: tuple[str, ...]
    dice: dict[str, dict[str, list[float]]]
    paired: dict[tuple[str, str], dict[str, Interval]]
    missing: tuple[str, ...]  # runs of the plan not evaluated yet

    def to_json(self) -> dict:
        return {
            "cases": self.cases,
            "dice": self.dice,
            "paired": {f"{a} vs {b}": {c: asdict(i) for c, i in v.items()} for (a, b), v in self.paired.items()},
            "missing": self.missing,
        }


def _case_dice(run: RunFolder, classes: Sequence[str]) -> dict[str, dict[str, float]]:
    """case -> class -> test Dice (the foreground mean over the classes defined for that case)."""
    out: dict[str, dict[str, float]] = {}
    with run.evaluation(EVALUATED_SPLIT).cases_csv.open(encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            if row["dice"] not in ("", "nan"):
                out.setdefault(row["case"], {})[row["class"]] = float(row["dice"])
    for scores in out.values():
        values = [scores[c] for c in classes if c in scores]
        scores[FOREGROUND] = float(np.mean(values)) if values else float("nan")
    return out


def bootstrap_difference(diff: np.ndarray, *, resamples: int = 10_000, seed: int = 0) -> Interval:
    """Mean and 95 % interval of ``diff[case, seed]`` (NaN: undefined), resampling cases, then seeds within
    each drawn case: both the patients and the training runs vary."""
    rng = np.random.default_rng(seed)
    n_cases, n_seeds = diff.shape
    cases = rng.integers(0, n_cases, (resamples, n_cases))
    seeds = rng.integers(0, n_seeds, (resamples, n_cases, n_seeds))
    draws = diff[cases[..., None], seeds].reshape(resamples, -1)
    with warnings.catch_warnings():  # a draw of undefined values only: its mean is NaN, left out below
        warnings.simplefilter("ignore", RuntimeWarning)
        means = np.nanmean(draws, axis=1)
    low, high = np.nanpercentile(means, [2.5, 97.5])
    return Interval(float(np.nanmean(diff)), float(low), float(high))


def compare(plan: AblationPlan, targets: Sequence[str]) -> Comparison:
    classes = (*targets, FOREGROUND)
    scores: dict[tuple[str, int], dict[str, dict[str, float]]] = {}
    missing = []
    for text, seed, name in plan.runs():
        run = RunFolder.of(plan.dataset, name)
        if not run.evaluation(EVALUATED_SPLIT).cases_csv.is_file() or run.needs_evaluation(EVALUATED_SPLIT):
            missing.append(name)
            continue
        scores[text, seed] = _case_dice(run, targets)
    cases = tuple(sorted({c for s in scores.values() for c in s}))
    seeds = [s for s in plan.seeds if all((t, s) in scores for t in plan.texts)]  # complete seeds only
    dice = {
        t: {c: [float(np.nanmean([scores[t, s][k].get(c, np.nan) for k in cases])) for s in seeds] for c in classes}
        for t in plan.texts
    }
    paired: dict[tuple[str, str], dict[str, Interval]] = {}
    for baseline in (b for b in BASELINES if b in plan.texts):
        for text in (t for t in plan.texts if t not in (baseline, "none")):  # every text mode vs each baseline
            paired[text, baseline] = {}
            for c in classes:
                diff = np.array(
                    [
                        [scores[text, s][k].get(c, np.nan) - scores[baseline, s][k].get(c, np.nan) for s in seeds]
                        for k in cases
                    ]
                )
                if diff.size and not np.isnan(diff).all():
                    paired[text, baseline][c] = bootstrap_difference(diff)
    return Comparison(plan, classes, cases, dice, paired, tuple(missing))


def conclusion(comparison: Comparison) -> str:
    """What the data support, in plain words, from the foreground-mean intervals."""
    sentences = []
    n = f"{len(comparison.cases)} test case(s) x {len(next(iter(comparison.dice.values()))[FOREGROUND])} seed(s)"
    for (text, baseline), intervals in comparison.paired.items():
        i = intervals.get(FOREGROUND)
        if i is None:
            continue
        what = "learned class tokens" if baseline == "none" else "shuffled instructions (same class, another slice)"
        span = f"{i.mean:+.3f} Dice, 95 % interval {i.low:+.3f} to {i.high:+.3f}"
        if i.verdict == "better":
            sentences.append(f"`{text}` beats {what} ({span}).")
        elif i.verdict == "worse":
            sentences.append(f"`{text}` is worse than {what} ({span}).")
        else:
            sentences.append(f"`{text}` vs {what}: no difference shown ({span}; the interval includes 0).")
    if not sentences:
        return "No complete pair of runs to compare yet."
    return f"On {n}: " + " ".join(sentences)
