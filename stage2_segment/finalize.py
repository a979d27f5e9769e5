"""What follows training, above inference: the post-processing decided on a run's validation cases, and an
ensemble built, decided and evaluated. ``predict`` applies a given decision and never imports this module.

The decision, as nnU-Net makes it: each step of ``stage2_segment.postprocess`` is applied to a class only where it
raises the class's mean validation Dice (ties keep the class as it was). It is made on the run's validation cases
with its best checkpoint and written as ``postprocessing.json`` in the run folder (``RunFolder.postprocessing``).
Box refinement is decided on the label maps the largest-component step leaves, with every class redrawn at once
from each kind of box.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from shared.cases import CaseCache
from shared.errors import ZeusError
from stage2_segment import metrics, postprocess
from stage2_segment.ensemble import create_ensemble, load_predictor
from stage2_segment.evaluate import EvaluationSummary, evaluate_run
from stage2_segment.runs import Postprocessing, RunFolder, reported_split

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ValidationCase:
    """A validation case as the decision sees it: label-value maps ``[Z, S, S]`` and, for box refinement, the
    case's cached image embeddings ``[Z, C, 256, 64, 64]``."""

    predicted: np.ndarray
    true: np.ndarray
    embeddings: np.ndarray | None = None


# (label map, embeddings, label values to redraw from boxes around all their pieces, those to redraw from boxes
# around their largest piece) -> label map: ``stage2_segment.refine.BoxRefiner``
Refiner = Callable[[np.ndarray, np.ndarray, Collection[int], Collection[int]], np.ndarray]


def decide(cases: list[ValidationCase], targets: dict[str, int], refiner: Refiner | None = None) -> Postprocessing:
    """A class gets a step where its mean Dice over the cases rises with it (ties keep the class as it was);
    of the two kinds of box, the one with the higher Dice (a tie goes to boxes around all pieces). Without
    ``refiner`` (or embeddings) box refinement is not considered."""
    predicted = [c.predicted for c in cases]
    chosen, raw_dice, kept_dice = [], {}, {}
    for name, value in targets.items():
        raw_dice[name] = _mean_dice(predicted, cases, value)
        kept_dice[name] = _mean_dice([postprocess.keep_largest_component(p, value) for p in predicted], cases, value)
        if _rises(raw_dice[name], kept_dice[name]):
            chosen.append(name)
    decision = Postprocessing(largest_component=chosen, val_dice_raw=raw_dice, val_dice_largest_component=kept_dice)
    if refiner is None or any(c.embeddings is None for c in cases):
        return decision
    before = [postprocess.apply(p, [targets[n] for n in chosen]) for p in predicted]
    values = list(targets.values())
    whole = [refiner(labels, c.embeddings, values, ()) for labels, c in zip(before, cases, strict=True)]
    piece = [refiner(labels, c.embeddings, (), values) for labels, c in zip(before, cases, strict=True)]
    refined, refined_piece, whole_dice, piece_dice = [], [], {}, {}
    for name, value in targets.items():
        whole_dice[name], piece_dice[name] = _mean_dice(whole, cases, value), _mean_dice(piece, cases, value)
        best = kept_dice[name] if name in chosen else raw_dice[name]
        if _rises(best, whole_dice[name]) and not _rises(whole_dice[name], piece_dice[name]):
            refined.append(name)
        elif _rises(best, piece_dice[name]):
            refined_piece.append(name)
    return replace(
        decision,
        box_refine=refined,
        val_dice_box_refined=whole_dice,
        box_refine_piece=refined_piece,
        val_dice_box_refined_piece=piece_dice,
    )


def _mean_dice(maps: list[np.ndarray], cases: list[ValidationCase], value: int) -> float | None:
    """Mean Dice of class ``value`` over the cases (label maps in the cases' order); None where undefined."""
    return _mean([metrics.dice(m == value, c.true == value) for m, c in zip(maps, cases, strict=True)])


def _rises(before: float | None, after: float | None) -> bool:
    return before is not None and after is not None and after > before


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def decide_for_run(run_dir: Path, *, root: Path | None = None, progress: bool = True) -> Postprocessing | None:
    """Predict the run's validation cases with its best checkpoint, decide, write ``postprocessing.json``.
    Returns None (and writes nothing) for a run without validation cases."""
    run = RunFolder(run_dir)
    predictor = load_predictor(run_dir, root=root)
    val_ids = predictor.info.val_cases
    if not val_ids:
        log.info("%s has no validation cases: no post-processing decided", run_dir)
        return None
    dataset = predictor.dataset
    cases = CaseCache(dataset, predictor.config.image_size)
    prepared = cases.prepare(val_ids, progress=False)
    if prepared.problems:
        raise ZeusError(f"cannot decide post-processing for {run_dir}: validation cases failed to prepare")
    features, instructions = predictor.features(cases), predictor.instructions(dataset)
    validation = []
    for case_id in tqdm(val_ids, desc="post-processing (validation)", unit="case", disable=not progress):
        probabilities = predictor.predict_case(case_id, cases, features, instructions)
        embeddings = features.load(case_id) if features is not None else None
        validation.append(ValidationCase(predictor.raw_label_map(probabilities), cases.label(case_id), embeddings))
    decision = decide(validation, dataset.manifest.targets, predictor.box_refiner())
    run.write_postprocessing(decision)
    log.info(
        "post-processing of %s: largest component for %s; box refinement for %s; from largest pieces for %s",
        run_dir,
        decision.largest_component or "no class",
        decision.box_refine or "no class",
        decision.box_refine_piece or "no class",
    )
    return decision


def ensemble_and_evaluate(
    members: list[Path], name: str, *, root: Path | None = None, progress: bool = True
) -> tuple[RunFolder, EvaluationSummary]:
    """``zeus ensemble``: the ensemble's folder, its post-processing decided on the members' validation cases,
    then its evaluation on the split the report shows (validation cases, out of fold, where there is no test
    set). Returns the ensemble and its ``EvaluationSummary``."""
    folder = create_ensemble(members, name)
    decide_for_run(folder.path, root=root, progress=progress)
    split = reported_split(folder.read_info().dataset)
    return folder, evaluate_run(folder.path, split=split, root=root, progress=progress)
