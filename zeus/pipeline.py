"""A new scan, end to end: prepare it like a training case, write its stage-1 instructions with the models
and prompts of the run's training store, then segment it with the run's model.

New scans get their own namespace, ``<dataset>-scans`` (preprocessed cases and instructions), so they never mix
with the dataset's cases, splits or runs; a rerun on the same scan reuses everything cached.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from shared.cases import CaseCache
from shared.errors import ZeusError
from shared.instructions import InstructionStore
from shared.manifest import Dataset
from shared.readers.scan import scan_sources
from stage1_instruct.config import Stage1Config
from stage1_instruct.runners import instruct_cases
from stage2_segment.predict import Predictor


def scans_dataset(dataset: Dataset) -> Dataset:
    """The namespace of a dataset's new scans: its manifest under ``<name>-scans``, its data root."""
    return Dataset(replace(dataset.manifest, name=f"{dataset.manifest.name}-scans"), dataset.root)


def predict_scan(
    run: Path,
    inputs: Sequence[str],
    output: Path,
    *,
    case_id: str | None = None,
    root: Path | None = None,
    probability_maps: bool = False,
) -> list[Path]:
    """Segment one scan (any form ``scan_sources`` reads) with a trained run; returns the files written."""
    predictor = Predictor.from_run(run, root=root)
    if predictor.needs_ground_truth:
        raise ZeusError(
            f"{run} is the {predictor.config.model} reference: it is prompted with ground-truth boxes, so it can be "
            "evaluated (`zeus evaluate --run`) but cannot segment a new scan"
        )
    scans = scans_dataset(predictor.dataset)
    cases = CaseCache(scans, predictor.config.image_size)
    meta = cases.prepare_sources(scan_sources(predictor.dataset.manifest, list(inputs), case_id))
    table = None
    if predictor.config.tag:
        stage1 = Stage1Config.from_store(InstructionStore.of(predictor.dataset.name, predictor.config.tag))
        instruct_cases(scans, stage1, cases, [meta.case_id])
        table = predictor.instructions(scans)
    probabilities = predictor.predict_case(meta.case_id, cases, predictor.features(cases), table)
    return predictor.write(meta, probabilities, output, probability_maps=probability_maps)
