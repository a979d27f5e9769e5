"""Post-processing decided on validation, as nnU-Net does: each step is applied to a class only where it raises
the class's mean validation Dice. Two steps, in this order:

1. keep only the largest 3-D connected component of the class;
2. redraw the class with the frozen box-prompted LiteMedSAM inside the boxes of its prediction
   (``stage2_segment.refine``; Zeus runs only, as it reads the cached image embeddings), each slice's box around
   all of the class's pieces there or around its largest piece, whichever validation prefers.

A text-prompted decoder sees one slice at a time, so it leaves islands on slices far from the organ (they
dominate HD95). Whether removing them helps is a property of the class (one liver, two kidneys given as two
classes; a tumour may be multifocal), so it is measured, not assumed. The decision is made on the run's
validation cases with its best checkpoint, written as ``postprocessing.json`` in the run folder
(``RunFolder.postprocessing``), and applied by ``Predictor.label_map`` to every prediction after it. Box
refinement is decided on the label maps the first step leaves, with every class redrawn at once from each kind
of box.
Components are 26-connected in the model's slice grid (connectivity does not depend on the spacing).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from scipy import ndimage

from shared.cases import CaseCache
from shared.errors import ZeusError
from stage2_segment.runs import Postprocessing, RunFolder

log = logging.getLogger(__name__)


def keep_largest_component(labels: np.ndarray, value: int) -> np.ndarray:
    """``labels`` (``[Z, S, S]``, or one ``[S, S]`` slice) with every voxel of class ``value`` outside its
    largest connected component set to background (0). Neighbours sharing a face, an edge or a corner connect
    (26-connected in 3-D, 8-connected in 2-D); ties go to the first component in scan order."""
    connectivity = np.ones((3,) * labels.ndim, bool)
    components, count = ndimage.label(labels == value, structure=connectivity)
    if count <= 1:
        return labels
    sizes = np.bincount(components.ravel())[1:]
    out = labels.copy()
    out[(components > 0) & (components != 1 + int(sizes.argmax()))] = 0
    return out


def apply(labels: np.ndarray, values: Iterable[int]) -> np.ndarray:
    for value in values:
        labels = keep_largest_component(labels, value)
    return labels


def dice(pred: np.ndarray, true: np.ndarray) -> float:
    """3-D Dice of two boolean masks (NaN where both are empty: the case says nothing about the class)."""
    total = int(pred.sum()) + int(true.sum())
    return float("nan") if total == 0 else 2 * int((pred & true).sum()) / total


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
        kept_dice[name] = _mean_dice([keep_largest_component(p, value) for p in predicted], cases, value)
        if _rises(raw_dice[name], kept_dice[name]):
            chosen.append(name)
    decision = Postprocessing(largest_component=chosen, val_dice_raw=raw_dice, val_dice_largest_component=kept_dice)
    if refiner is None or any(c.embeddings is None for c in cases):
        return decision
    before = [apply(p, [targets[n] for n in chosen]) for p in predicted]
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
    return _mean([dice(m == value, c.true == value) for m, c in zip(maps, cases, strict=True)])


def _rises(before: float | None, after: float | None) -> bool:
    return before is not None and after is not None and after > before


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def decide_for_run(run_dir: Path, *, root: Path | None = None, progress: bool = True) -> Postprocessing | None:
    """Predict the run's validation cases with its best checkpoint, decide, write ``postprocessing.json``.
    Returns None (and writes nothing) for a run without validation cases."""
    from tqdm import tqdm

    from stage2_segment.predict import Predictor

    run = RunFolder(run_dir)
    predictor = Predictor.from_run(run_dir, root=root)
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
