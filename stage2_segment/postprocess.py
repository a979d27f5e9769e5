"""3-D post-processing decided on validation, as nnU-Net does: per class, keep only the largest connected
component where that raises the class's mean validation Dice, and nowhere else.

A text-prompted decoder sees one slice at a time, so it leaves islands on slices far from the organ (they
dominate HD95). Whether removing them helps is a property of the class (one liver, two kidneys given as two
classes; a tumour may be multifocal), so it is measured, not assumed. The decision is made on the run's
validation cases with its best checkpoint, written as ``postprocessing.json`` in the run folder
(``RunFolder.postprocessing``), and applied by ``Predictor.label_map`` to every prediction after it.
Components are 26-connected in the model's slice grid (connectivity does not depend on the spacing).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from scipy import ndimage

from shared.cases import CaseCache
from shared.errors import ZeusError
from stage2_segment.runs import Postprocessing, RunFolder

log = logging.getLogger(__name__)

_CONNECTIVITY = np.ones((3, 3, 3), bool)


def keep_largest_component(labels: np.ndarray, value: int) -> np.ndarray:
    """``labels`` (``[Z, S, S]``) with every voxel of class ``value`` outside its largest 3-D connected
    component set to background (0)."""
    components, count = ndimage.label(labels == value, structure=_CONNECTIVITY)
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


def decide(cases: list[tuple[np.ndarray, np.ndarray]], targets: dict[str, int]) -> Postprocessing:
    """``cases``: (predicted, true) label-value maps ``[Z, S, S]`` of the validation cases. A class gets the
    largest-component step where its mean Dice over the cases rises with it (ties keep the raw prediction)."""
    chosen, raw_dice, kept_dice = [], {}, {}
    for name, value in targets.items():
        raw = [dice(p == value, t == value) for p, t in cases]
        kept = [dice(keep_largest_component(p, value) == value, t == value) for p, t in cases]
        raw_mean, kept_mean = _mean(raw), _mean(kept)
        raw_dice[name], kept_dice[name] = raw_mean, kept_mean
        if raw_mean is not None and kept_mean is not None and kept_mean > raw_mean:
            chosen.append(name)
    return Postprocessing(largest_component=chosen, val_dice_raw=raw_dice, val_dice_largest_component=kept_dice)


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def decide_for_run(run_dir: Path, *, progress: bool = True) -> Postprocessing | None:
    """Predict the run's validation cases with its best checkpoint, decide, write ``postprocessing.json``.
    Returns None (and writes nothing) for a run without validation cases."""
    from tqdm import tqdm

    from stage2_segment.predict import Predictor

    run = RunFolder(run_dir)
    predictor = Predictor.from_run(run_dir)
    val_ids = run.read_info().val_cases
    if not val_ids:
        log.info("%s has no validation cases: no post-processing decided", run_dir)
        return None
    dataset = predictor.dataset
    cases = CaseCache(dataset, predictor.config.image_size)
    prepared = cases.prepare(val_ids, progress=False)
    if prepared.problems:
        raise ZeusError(f"cannot decide post-processing for {run_dir}: validation cases failed to prepare")
    features, instructions = predictor.features(cases), predictor.instructions(dataset)
    pairs = []
    for case_id in tqdm(val_ids, desc="post-processing (validation)", unit="case", disable=not progress):
        probabilities = predictor.predict_case(case_id, cases, features, instructions)
        pairs.append((predictor.raw_label_map(probabilities), cases.label(case_id)))
    decision = decide(pairs, dataset.manifest.targets)
    run.write_postprocessing(decision)
    log.info("post-processing of %s: largest component for %s", run_dir, decision.largest_component or "no class")
    return decision
