"""A new scan, end to end: prepare it like a training case, write its stage-1 instructions with the models
and prompts of the run's training store, then segment it with the run's model.

New scans get their own namespace, ``<dataset>-scans`` (preprocessed cases and instructions), so they never mix
with the dataset's cases, splits or runs; a rerun on the same scan reuses everything cached.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from tqdm import tqdm

from shared.cases import CaseCache
from shared.errors import ZeusError
from shared.instructions import InstructionStore
from shared.manifest import Dataset
from shared.readers.base import CaseSources
from shared.readers.scan import scan_sources
from stage1_instruct.config import Stage1Config
from stage1_instruct.runners import instruct_cases
from stage2_segment.ensemble import load_predictor
from stage2_segment.predict import Predictor


def scans_dataset(dataset: Dataset) -> Dataset:
    """The namespace of a dataset's new scans: its manifest under ``<name>-scans``, its data root."""
    return Dataset(replace(dataset.manifest, name=f"{dataset.manifest.name}-scans"), dataset.root)


@dataclass
class Predictions:
    """What ``predict_scans`` did: the files it wrote, and the scans it skipped (their outputs existed)."""

    written: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


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
    predictor = _predictor(run, root)
    sources = scan_sources(predictor.dataset.manifest, list(inputs), case_id)
    return _predict(predictor, [sources], output, probability_maps=probability_maps, progress=False).written


def predict_scans(
    run: Path,
    scans: Sequence[Sequence[str]],
    output: Path,
    *,
    root: Path | None = None,
    probability_maps: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> Predictions:
    """Segment many scans (each as ``scan_sources`` inputs, e.g. from ``scans_in_folder``) with the model, the
    stage-1 backends and the encoder loaded once. Scans whose ``<case>.nii.gz`` exists in ``output`` are
    skipped unless ``overwrite``. Every scan is checked before any is segmented."""
    predictor = _predictor(run, root)
    sources = [scan_sources(predictor.dataset.manifest, list(inputs)) for inputs in scans]
    seen: dict[str, Sequence[str]] = {}
    for inputs, source in zip(scans, sources, strict=True):
        if source.case_id in seen:
            raise ZeusError(
                f"two scans are both named {source.case_id!r} ({list(seen[source.case_id])} and {list(inputs)}): "
                "their outputs would overwrite each other; rename one"
            )
        seen[source.case_id] = inputs
    todo = [s for s in sources if overwrite or not (output / f"{s.case_id}.nii.gz").is_file()]
    done = _predict(predictor, todo, output, probability_maps=probability_maps, progress=progress)
    segmented = {s.case_id for s in todo}
    done.skipped = [s.case_id for s in sources if s.case_id not in segmented]
    return done


def _predictor(run: Path, root: Path | None) -> Predictor:
    predictor = load_predictor(run, root=root)
    if predictor.needs_ground_truth:
        raise ZeusError(
            f"{run} is the {predictor.config.model} reference: it is prompted with ground-truth boxes, so it can be "
            "evaluated (`zeus evaluate --run`) but cannot segment a new scan"
        )
    return predictor


def _predict(
    predictor: Predictor, sources: list[CaseSources], output: Path, *, probability_maps: bool, progress: bool
) -> Predictions:
    """Prepare every scan, write their instructions in one stage-1 pass, cache their image embeddings with one
    encoder, then segment each."""
    done = Predictions()
    if not sources:
        return done
    scans = scans_dataset(predictor.dataset)
    cases = CaseCache(scans, predictor.config.image_size)
    metas = [cases.prepare_sources(s) for s in tqdm(sources, desc="prepare", unit="scan", disable=not progress)]
    ids = [meta.case_id for meta in metas]
    table = None
    if predictor.config.tag:
        stage1 = Stage1Config.from_store(InstructionStore.of(predictor.dataset.name, predictor.config.tag))
        instruct_cases(scans, stage1, cases, ids, progress=progress)
        table = predictor.instructions(scans)
    features = predictor.features(cases)
    if features is not None:
        features.ensure(ids, progress=progress)
    for meta in tqdm(metas, desc="segment", unit="scan", disable=not progress):
        segmentation = predictor.segment_case(meta.case_id, cases, features, table)
        done.written += predictor.write(meta, segmentation, output, probability_maps=probability_maps)
    return done
