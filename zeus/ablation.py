"""``zeus ablate``: does the text help? The same model trained with each text mode at identical settings.

Every run of an ablation shares the fold, epochs, data order and initialisation of its seed; only ``--text``
differs: ``instructions`` (the stage-1 store), ``template`` (the no-LLM instructions), ``none`` (learned
class tokens) and ``shuffled`` (the instructions, each slice given another slice's of the same case,
modality and target: the class is kept, the slice-specific content destroyed). Each run is evaluated on the
test cases (on its validation cases where the split has none). Stage 1 runs apart (``make ablation`` runs it
first: training never loads an LLM). The plan is written to ``runs/<dataset>/ablation.json`` first and every
run resumes, so an interrupted ablation continues where it stopped.

With ``folds`` (``zeus ablate --cross-validation``) every (text, seed) trains every fold of the split, and the
folds' ensemble (``stage2_segment.ensemble``) is what is compared: on a split without a test set
(``zeus data prepare --test-fraction 0``) it predicts every case out of fold, so each patient counts, not the
one or two of a test set. ``jobs`` trains that many runs at once in their own processes (one GPU holds several
of these small decoders; on a CPU they share its cores).

``compare`` turns the evaluations into the report's "Does the text help?" numbers: Dice per class,
mean ± std over seeds, and paired per-case differences of each mode against ``none`` and ``shuffled``, with
95 % intervals from a two-level bootstrap (cases, then seeds within each case).
"""

from __future__ import annotations

import csv
import json
import logging
import multiprocessing
import os
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from shared.atomic import write_json
from shared.errors import ZeusError
from shared.instructions import PRESETS, InstructionStore
from shared.manifest import Dataset
from shared.splits import load_splits
from shared.workspace import runs_dir
from stage2_segment.config import SHUFFLED, TEXT_MODES, TrainConfig
from stage2_segment.runs import RunFolder, reported_split

log = logging.getLogger(__name__)

TEXTS = tuple(TEXT_MODES)  # instructions, template, none, shuffled
BASELINES = ("none", SHUFFLED)  # what each mode is compared against
PLAN_FILE = "ablation.json"
FOREGROUND = "foreground mean"


@dataclass(frozen=True)
class AblationPlan:
    dataset: str
    base: TrainConfig  # every setting but text, seed, fold and run name
    texts: tuple[str, ...] = TEXTS
    seeds: tuple[int, ...] = (0, 1, 2)
    folds: tuple[int, ...] = ()  # cross-validation over these folds, ensembled per (text, seed); () = base.fold

    def __post_init__(self) -> None:
        unknown = [t for t in self.texts if t not in TEXT_MODES]
        if unknown:
            raise ZeusError(f"--texts: unknown text mode(s) {unknown}; choose from {list(TEXT_MODES)}")
        if len(self.texts) < 2 or not self.seeds:
            raise ZeusError("an ablation needs at least two text modes and one seed")
        if self.base.model != "zeus":
            raise ZeusError("zeus ablate compares text modes of the Zeus model; --model must be zeus")
        if len(self.folds) == 1:
            raise ZeusError("a cross-validation ablation needs a split of 2 or more folds (zeus data prepare --folds)")

    @property
    def cross_validation(self) -> bool:
        return bool(self.folds)

    def _prefix(self, text: str) -> str:
        decoder = "-joint" if self.base.decoder == "joint" else ""
        return f"ablation__{self.base.fusion}{decoder}__text-{text}"

    def run_name(self, text: str, seed: int, fold: int | None = None) -> str:
        return f"{self._prefix(text)}__fold{self.base.fold if fold is None else fold}__seed{seed}"

    def ensemble_name(self, text: str, seed: int) -> str:
        return f"{self._prefix(text)}__cv__seed{seed}"

    def config(self, text: str, seed: int, fold: int | None = None) -> TrainConfig:
        fold = self.base.fold if fold is None else fold
        return replace(self.base, text=text, seed=seed, fold=fold, run_name=self.run_name(text, seed, fold))

    def trainings(self) -> list[tuple[str, int, int, str]]:
        """(text, seed, fold, run name) of every run to train, seed-major: every mode of a seed before the next."""
        folds = self.folds or (self.base.fold,)
        return [(t, s, k, self.run_name(t, s, k)) for s in self.seeds for t in self.texts for k in folds]

    def runs(self) -> list[tuple[str, int, str]]:
        """(text, seed, run name) of what is compared: each trained run, or in a cross-validation the ensemble of
        its folds."""
        if self.cross_validation:
            return [(t, s, self.ensemble_name(t, s)) for s in self.seeds for t in self.texts]
        return [(t, s, name) for t, s, _, name in self.trainings()]

    def run_names(self) -> set[str]:
        """Every run folder the ablation writes: its trainings and ensembles."""
        return {name for *_, name in self.trainings()} | {name for *_, name in self.runs()}

    def to_json(self) -> dict:
        return {
            "dataset": self.dataset,
            "base": self.base.to_json(),
            "texts": self.texts,
            "seeds": self.seeds,
            "folds": self.folds,
        }

    @classmethod
    def from_json(cls, data: dict) -> AblationPlan:
        folds = tuple(data.get("folds", ()))  # a plan written before cross-validation ablations had none
        return cls(
            data["dataset"], TrainConfig.from_json(data["base"]), tuple(data["texts"]), tuple(data["seeds"]), folds
        )


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


def run_ablation(dataset: Dataset, plan: AblationPlan, *, progress: bool = True, jobs: int = 1) -> list[Path]:
    """Train and evaluate every run of the plan not done yet (stage 1 must have written the stores), ``jobs``
    at a time; in a cross-validation then ensemble each (text, seed)'s folds. Returns the compared folders."""
    check_stores(dataset.name, plan)
    if plan.cross_validation:
        check_folds(dataset.name, plan)
    write_json(plan_path(dataset.name), plan.to_json())
    split = reported_split(dataset.name)
    run_split = None if plan.cross_validation else split  # a cross-validation evaluates the ensembles instead
    todo = [
        plan.config(text, seed, fold)
        for text, seed, fold, name in plan.trainings()
        if not _done(RunFolder.of(dataset.name, name), plan.base.epochs, run_split)
    ]
    if jobs > 1 and len(todo) > 1:
        _embed_first(dataset, todo, progress)
    shown = progress and jobs == 1  # parallel runs' progress bars would overwrite each other: one bar counts runs
    tasks = [partial(_train_and_evaluate, dataset, config, run_split, shown) for config in todo]
    _run_all(tasks, [c.run_name for c in todo], jobs, progress)
    if plan.cross_validation:
        ensembles = [
            (name, [RunFolder.of(dataset.name, plan.run_name(t, s, k)).path for k in plan.folds])
            for t, s, name in plan.runs()
            if not _done(RunFolder.of(dataset.name, name), None, split)
        ]
        tasks = [partial(_ensemble, dataset, members, name, shown) for name, members in ensembles]
        _run_all(tasks, [name for name, _ in ensembles], jobs, progress)
    return [RunFolder.of(dataset.name, name).path for *_, name in plan.runs()]


def _done(run: RunFolder, epochs: int | None, split: str | None) -> bool:
    """Trained for ``epochs`` (None: an ensemble, made) and, unless ``split`` is None, evaluated since."""
    made = run.is_run() and (epochs is None or len(run.read_log()) >= epochs)
    return made and (split is None or not run.needs_evaluation(split))


def _embed_first(dataset: Dataset, configs: list[TrainConfig], progress: bool) -> None:
    """Every fold's image embeddings and augmented copies, computed here once, before parallel runs would each
    compute the ones they miss (the same cases' over and over: every case trains in all folds but its own)."""
    from stage2_segment.train import prepare_training_data

    for fold in sorted({c.fold for c in configs}):
        prepare_training_data(dataset, next(c for c in configs if c.fold == fold), progress=progress)


def _train_and_evaluate(dataset: Dataset, config: TrainConfig, split: str | None, progress: bool) -> None:
    from stage2_segment.evaluate import evaluate_run
    from stage2_segment.train import train

    result = train(dataset, config, resume=True, progress=progress)
    if split is not None:
        evaluate_run(result.run_dir, split=split, progress=progress)


def _ensemble(dataset: Dataset, members: list[Path], name: str, progress: bool) -> None:
    from stage2_segment.finalize import ensemble_and_evaluate

    ensemble_and_evaluate(members, name, root=dataset.root, progress=progress)


def _run_all(tasks: list[Callable[[], None]], names: list[str], jobs: int, progress: bool) -> None:
    """Run the tasks, ``jobs`` at a time in worker processes (in this one for 1), logging each as it ends; the
    first failure stops the rest and is raised with the run it belongs to."""
    if jobs == 1 or len(tasks) <= 1:
        for i, (task, name) in enumerate(zip(tasks, names, strict=True), 1):
            log.info("ablation: %s (%d/%d)", name, i, len(tasks))
            task()
        return
    # spawn, not fork: CUDA and torch's thread pools do not survive a fork; the workers share the cores
    threads = max(1, (os.cpu_count() or 1) // jobs)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_torch_threads, initargs=(threads,)) as pool:
        futures = {pool.submit(task): name for task, name in zip(tasks, names, strict=True)}
        pending = tqdm(as_completed(futures), total=len(futures), desc="ablation runs", disable=not progress)
        for future in pending:
            name = futures[future]
            try:
                future.result()
            except Exception as e:
                pool.shutdown(cancel_futures=True)
                raise ZeusError(f"zeus ablate: {name} failed: {e}") from e
            log.info("ablation: %s done", name)


def _torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def check_folds(dataset: str, plan: AblationPlan) -> None:
    """The plan's folds are the folds of the dataset's split, every one of them."""
    splits = load_splits(dataset)
    if plan.folds != tuple(range(len(splits.folds))):
        raise ZeusError(
            f"zeus ablate {dataset} --cross-validation: the plan has folds {list(plan.folds)}, the split "
            f"{len(splits.folds)}: a plan made for another split; rerun `zeus ablate` with --cross-validation"
        )


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
    split: str  # where the compared runs were evaluated: test, or val (out of fold) where the split has no test set
    classes: tuple[str, ...]  # the targets, then FOREGROUND
    cases: tuple[str, ...]
    dice: dict[str, dict[str, list[float]]]
    paired: dict[tuple[str, str], dict[str, Interval]]
    missing: tuple[str, ...]  # runs of the plan not evaluated yet

    @property
    def case_kind(self) -> str:
        return "test case(s)" if self.split == "test" else "case(s) predicted out of fold"

    def to_json(self) -> dict:
        return {
            "split": self.split,
            "cases": self.cases,
            "dice": self.dice,
            "paired": {f"{a} vs {b}": {c: asdict(i) for c, i in v.items()} for (a, b), v in self.paired.items()},
            "missing": self.missing,
        }


def _case_dice(run: RunFolder, classes: Sequence[str], split: str) -> dict[str, dict[str, float]]:
    """case -> class -> Dice on ``split`` (the foreground mean over the classes defined for that case)."""
    out: dict[str, dict[str, float]] = {}
    with run.evaluation(split).cases_csv.open(encoding="utf-8", newline="") as f:
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
    split = reported_split(plan.dataset)
    scores: dict[tuple[str, int], dict[str, dict[str, float]]] = {}
    missing = []
    for text, seed, name in plan.runs():
        run = RunFolder.of(plan.dataset, name)
        if not run.evaluation(split).cases_csv.is_file() or run.needs_evaluation(split):
            missing.append(name)
            continue
        scores[text, seed] = _case_dice(run, targets, split)
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
    return Comparison(plan, split, classes, cases, dice, paired, tuple(missing))


def conclusion(comparison: Comparison) -> str:
    """What the data support, in plain words, from the foreground-mean intervals."""
    sentences = []
    seeds = len(next(iter(comparison.dice.values()))[FOREGROUND])
    n = f"{len(comparison.cases)} {comparison.case_kind} x {seeds} seed(s)"
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
