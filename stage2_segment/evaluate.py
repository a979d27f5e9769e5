"""Evaluation: label maps scored against ground truth in the original geometry, in 3-D and per 2-D slice.

Two entry points write the same evaluation folder (``stage2_segment.runs.EvaluationFolder``):

- ``evaluate_run``: a run's test split (or validation fold): predict each case, write the prediction NIfTI on
  the original reference grid (``predictions/``), score it against the ground truth read from the dataset;
- ``evaluate_files``: any prediction / ground-truth pair of NIfTI files or folders (matched by file name).

Folder contents:

- ``cases.csv``: one row per case x class, 3-D: dice, iou, hd95 (mm), voxel counts;
- ``slices.csv``: one row per case x slice x class, 2-D along the first array axis (the acquisition axis, in-
  plane spacing); slices where the class is in neither mask are left out (undefined, see ``metrics``);
- ``summary.json``: per class mean, std and count of each metric (3-D and 2-D), the foreground mean (mean of
  the class means), the number of undefined (empty) cases per class, and the metric definitions.

Definitions and empty-mask rules: ``stage2_segment.metrics``.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from shared.atomic import write_atomic
from shared.cases import CaseCache
from shared.errors import DataError, Problem, ZeusError
from shared.geometry import Geometry, to_array
from shared.readers import Layout, open_layout
from shared.readers.base import IMAGE_ENDINGS, check_label_values, image_stem, read_image_file, visible_files
from shared.splits import load_splits
from stage2_segment import metrics
from stage2_segment.ensemble import load_predictor
from stage2_segment.runs import (
    BEST,
    ClassSummary,
    EvaluationFolder,
    EvaluationSource,
    EvaluationSummary,
    MetricStats,
    RunFolder,
    RunInfo,
)

log = logging.getLogger(__name__)

METRICS = ("dice", "iou", "hd95")


def score_case(
    case_id: str, predicted: sitk.Image, true: sitk.Image, targets: dict[str, int], files: tuple[Path, Path] | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows of cases.csv and slices.csv for one case; both images must share one grid."""
    pred_file, true_file = files or (None, None)
    if not Geometry.of(predicted).matches(Geometry.of(true)):
        raise DataError.single(
            case_id,
            f"prediction grid ({Geometry.of(predicted).describe()}) differs from the ground truth grid "
            f"({Geometry.of(true).describe()}): predictions must be on the ground truth's grid",
            pred_file,
        )
    pred, gt = to_array(predicted), to_array(true)
    allowed = {0, *targets.values()}
    check_label_values(pred, allowed, case_id, pred_file)  # a probability map, or another dataset's classes
    check_label_values(gt, allowed, case_id, true_file)
    pred, gt = pred.astype(np.int64), gt.astype(np.int64)
    spacing = tuple(float(s) for s in reversed(true.GetSpacing()))  # array axes z, y, x
    case_rows, slice_rows = [], []
    for name, value in targets.items():
        p, g = pred == value, gt == value
        scores = metrics.score_masks(p, g, spacing)
        case_rows.append({"case": case_id, "class": name, "label_value": value, **_row(scores)})
        for z in np.flatnonzero(p.any(axis=(1, 2)) | g.any(axis=(1, 2))):
            scores = metrics.score_masks(p[z], g[z], spacing[1:])
            slice_rows.append({"case": case_id, "slice": int(z), "class": name, "label_value": value, **_row(scores)})
    return case_rows, slice_rows


def _row(scores: metrics.Scores) -> dict[str, Any]:
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(scores).items()}


def summarise(
    case_rows: list[dict[str, Any]], slice_rows: list[dict[str, Any]], targets: dict[str, int], source: EvaluationSource
) -> EvaluationSummary:
    classes = {}
    for name in targets:
        per_case = [r for r in case_rows if r["class"] == name]
        per_slice = [r for r in slice_rows if r["class"] == name]
        classes[name] = ClassSummary(
            volume={m: _stats([r[m] for r in per_case]) for m in METRICS},
            slice={m: _stats([r[m] for r in per_slice]) for m in METRICS},
            empty_cases=sum(1 for r in per_case if r["true_voxels"] == 0 and r["predicted_voxels"] == 0),
        )

    def foreground(level: str, metric: str) -> float | None:
        means = [getattr(c, level)[metric].mean for c in classes.values()]
        defined = [m for m in means if m is not None]
        return float(np.mean(defined)) if defined else None

    return EvaluationSummary(
        cases=len({r["case"] for r in case_rows}),
        classes=classes,
        foreground_mean={level: {m: foreground(level, m) for m in METRICS} for level in ("volume", "slice")},
        definitions=(metrics.__doc__ or "").strip(),
        source=source,
    )


def _stats(values: Iterable[float]) -> MetricStats:
    finite = np.asarray([v for v in values if v is not None and np.isfinite(v)], np.float64)
    if finite.size == 0:
        return MetricStats(None, None, 0)
    return MetricStats(float(finite.mean()), float(finite.std()), int(finite.size))


def write_evaluation(
    folder: EvaluationFolder, case_rows: list[dict], slice_rows: list[dict], summary: EvaluationSummary
) -> EvaluationSummary:
    write_atomic(folder.cases_csv, lambda tmp: tmp.write_text(_csv(case_rows), encoding="utf-8"))
    write_atomic(folder.slices_csv, lambda tmp: tmp.write_text(_csv(slice_rows), encoding="utf-8"))
    folder.write_summary(summary)
    return summary


def _csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    fields = list(rows[0]) if rows else ["case", "class", "label_value", "dice", "iou", "hd95"]
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


# -- any prediction / ground-truth files --------------------------------------------------------------------


def evaluate_files(
    predictions: Path, ground_truth: Path, out: Path, targets: dict[str, int] | None = None
) -> EvaluationSummary:
    """Score prediction files against ground-truth files (two files, or two folders matched by file name)."""
    pairs = match_files(predictions, ground_truth)
    targets = targets or _targets_in(gt for _, _, gt in pairs)
    case_rows: list[dict] = []
    slice_rows: list[dict] = []
    for case_id, pred_path, gt_path in tqdm(pairs, desc="evaluate", unit="case"):
        pred, gt = read_image_file(pred_path, case_id), read_image_file(gt_path, case_id)
        rows, slices = score_case(case_id, pred, gt, targets, (pred_path, gt_path))
        case_rows += rows
        slice_rows += slices
    source = EvaluationSource(predictions=str(predictions.resolve()), ground_truth=str(ground_truth.resolve()))
    return write_evaluation(
        EvaluationFolder(out), case_rows, slice_rows, summarise(case_rows, slice_rows, targets, source)
    )


def match_files(predictions: Path, ground_truth: Path) -> list[tuple[str, Path, Path]]:
    """(case id, prediction, ground truth) triples; every ground-truth file needs its prediction."""
    if predictions.is_file() and ground_truth.is_file():
        return [(image_stem(ground_truth), predictions, ground_truth)]
    if not (predictions.is_dir() and ground_truth.is_dir()):
        raise ZeusError(
            f"--pred and --gt must both be image files or both folders: got {predictions} "
            f"({_kind(predictions)}) and {ground_truth} ({_kind(ground_truth)})"
        )
    truths = visible_files(ground_truth, IMAGE_ENDINGS)
    if not truths:
        raise ZeusError(f"no ground-truth images ({', '.join(IMAGE_ENDINGS)}) in {ground_truth}")
    missing = [Problem(image_stem(t), "no prediction with this file name", predictions / t.name) for t in truths]
    missing = [p for p in missing if not p.file.is_file()]
    if missing:
        raise DataError(missing)
    return [(image_stem(t), predictions / t.name, t) for t in truths]


def _kind(path: Path) -> str:
    return "folder" if path.is_dir() else "file" if path.is_file() else "missing"


def _targets_in(paths: Iterable[Path]) -> dict[str, int]:
    """Without a manifest, every non-zero value found in the ground truth is a class named by its value."""
    values: set[int] = set()
    for path in paths:
        values |= {int(v) for v in np.unique(to_array(read_image_file(path, image_stem(path))))}
    return {f"label {v}": v for v in sorted(values - {0})}


# -- a run's held-out cases ---------------------------------------------------------------------------------


def evaluate_run(
    run_dir: Path, *, split: str = "test", root: Path | None = None, progress: bool = True
) -> EvaluationSummary:
    """Predict and score a run's test cases (``split="test"``) or its validation fold (``"val"``)."""
    predictor = load_predictor(run_dir, root=root)
    dataset, config = predictor.dataset, predictor.config
    case_ids = _split_cases(predictor.info, split)
    cases = CaseCache(dataset, config.image_size)
    prepared = cases.prepare(case_ids, progress=False)
    if prepared.problems:
        raise DataError(prepared.problems)
    features, instructions = predictor.features(cases), predictor.instructions(dataset)
    targets = dataset.manifest.targets
    folder = RunFolder(run_dir).evaluation(split)
    layout = open_layout(dataset)
    case_rows: list[dict] = []
    slice_rows: list[dict] = []
    timings = []
    for case_id in tqdm(case_ids, desc=f"evaluate {split}", unit="case", disable=not progress):
        start = time.perf_counter()
        segmentation = predictor.segment_case(case_id, cases, features, instructions)
        meta = cases.meta(case_id)
        (pred_path,) = predictor.write(meta, segmentation, folder.predictions)
        timings.append(time.perf_counter() - start)
        _save_model_slices(folder.model_slices(case_id), segmentation.labels)
        truth = _ground_truth(layout, case_id, dataset.manifest.reference_modality)
        rows, slices = score_case(case_id, read_image_file(pred_path, case_id), truth, targets, None)
        case_rows += rows
        slice_rows += slices
    source = EvaluationSource(
        run=str(run_dir.resolve()),
        split=split,
        case_ids=case_ids,
        checkpoint=BEST,
        predict_seconds_per_case=float(np.mean(timings)),
    )
    return write_evaluation(folder, case_rows, slice_rows, summarise(case_rows, slice_rows, targets, source))


def _split_cases(info: RunInfo, split: str) -> list[str]:
    """The dataset's test cases, or the run's validation cases (an ensemble of folds: all its folds')."""
    if split == "test":
        ids = list(load_splits(info.dataset).test)
    elif split == "val":
        ids = list(info.val_cases) if info.ensemble else list(load_splits(info.dataset).fold(info.train.fold)[1])
    else:
        raise ZeusError(f"--split must be test or val, got {split!r}")
    if not ids:
        raise ZeusError(f"the {split} split of {info.dataset!r} is empty: nothing to evaluate")
    return ids


def _ground_truth(layout: Layout, case_id: str, reference: str) -> sitk.Image:
    """The label as stored on disk, on the reference modality's original grid."""
    sources = layout.sources(case_id)
    label = sources.label_for(reference)
    if label is None:
        raise DataError.single(case_id, f"no ground truth for the reference modality {reference!r}")
    return label.source.read()


def _save_model_slices(path: Path, labels: np.ndarray) -> None:
    """The prediction on the model slices (uint8 ``[Z, S, S]`` label values), for the report's overlays."""

    def save(tmp: Path) -> None:
        with tmp.open("wb") as f:  # a file object: numpy would append ".npz" to a path
            np.savez_compressed(f, label=labels)

    write_atomic(path, save)


def format_stats(stats: MetricStats, digits: int) -> str:
    """``mean ± std`` of one summary entry, or ``n/a`` where no case defined it."""
    return "n/a" if stats.mean is None else f"{stats.mean:.{digits}f} ± {stats.std:.{digits}f}"


def format_number(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def format_summary(summary: EvaluationSummary) -> str:
    """A plain-text table: per class mean ± std of Dice, IoU and HD95 (3-D), and the foreground mean."""
    lines = [f"{'class':20s} {'Dice':>17s} {'IoU':>17s} {'HD95 (mm)':>17s} {'empty':>5s}"]
    for name, c in summary.classes.items():
        v = c.volume
        lines.append(
            f"{name:20s} {format_stats(v['dice'], 3):>17s} {format_stats(v['iou'], 3):>17s} "
            f"{format_stats(v['hd95'], 1):>17s} {c.empty_cases:>5d}"
        )
    fg = summary.foreground_mean["volume"]
    means = [format_number(fg[m], 3) for m in METRICS]
    lines.append(f"{'foreground mean':20s} {means[0]:>17s} {means[1]:>17s} {means[2]:>17s}")
    return "\n".join(lines)
