"""``zeus data fingerprint``: per-case shape, spacing, label volumes and raw intensity statistics.

Like nnU-Net's dataset fingerprint, in raw units (HU for CT) on the reference grid, after co-registration.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tqdm import tqdm

from shared.errors import DataError
from shared.manifest import Dataset
from shared.readers import open_layout, select_cases
from shared.registration import RegisteredCase, coregister


def fingerprint_dataset(dataset: Dataset, case_ids: list[str] | None = None, progress: bool = True) -> dict:
    layout = open_layout(dataset)
    ids = select_cases(dataset, case_ids, layout)
    cases, problems = {}, []
    for case_id in tqdm(ids, desc=f"fingerprint {dataset.name}", unit="case", disable=not progress):
        try:
            case = coregister(layout.sources(case_id), dataset.manifest, with_label=True)
        except DataError as e:
            problems.extend(e.problems)
            continue
        cases[case_id] = fingerprint_case(case, dataset.manifest.labels)
    if problems:
        raise DataError(problems)
    return {"dataset": dataset.name, "cases": cases}


def fingerprint_case(case: RegisteredCase, labels: dict[str, int]) -> dict[str, Any]:
    assert case.label is not None
    regions = {name: case.label == value for name, value in labels.items()}
    return {
        "shape": list(case.grid.size),
        "spacing": list(case.grid.spacing),
        "labels": {name: int(mask.sum()) for name, mask in regions.items() if labels[name] != 0},
        "intensity": {
            modality: {name: _stats(volume[mask]) for name, mask in regions.items() if mask.any()}
            for modality, volume in case.images.items()
        },
    }


def _stats(values: np.ndarray) -> dict[str, float]:
    p01, p50, p99 = np.percentile(values, [1, 50, 99])
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "p01": float(p01),
        "p50": float(p50),
        "p99": float(p99),
    }
