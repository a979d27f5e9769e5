"""``zeus data check``: every problem of a dataset, with case and file; nothing is cached."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from tqdm import tqdm

from shared.errors import DataError, Problem
from shared.geometry import Geometry, to_array
from shared.manifest import Dataset, Manifest
from shared.readers import CaseSources, LabelSource, open_layout, select_cases
from shared.readers.base import check_label_values


def check_dataset(dataset: Dataset, case_ids: list[str] | None = None, progress: bool = True) -> list[Problem]:
    layout = open_layout(dataset)
    ids = select_cases(dataset, case_ids, layout)
    if not ids:
        return [Problem("-", "no cases found", dataset.root)]
    problems: dict[Problem, None] = {}  # ordered and without repeats (4-D channels share one file)
    for case_id in tqdm(ids, desc=f"check {dataset.name}", unit="case", disable=not progress):
        problems.update(dict.fromkeys(check_case(layout.sources(case_id), dataset.manifest)))
    return list(problems)


def check_case(sources: CaseSources, manifest: Manifest) -> Iterator[Problem]:
    yield from sources.problems
    missing = {p.file for p in sources.problems}
    images = {}
    for name, source in sources.images.items():
        if missing.isdisjoint(source.files):
            try:
                images[name] = source.read()
            except DataError as e:
                yield from e.problems
    if sources.label_for(manifest.reference_modality) is None:
        yield Problem(sources.case_id, f"no label for the reference modality {manifest.reference_modality!r}")
    for label in sources.labels:
        yield from _check_label(sources.case_id, label, images, manifest)


def _check_label(case_id: str, label: LabelSource, images: dict, manifest: Manifest) -> Iterator[Problem]:
    file = label.source.files[0] if label.source.files else None
    try:
        image = label.source.read()
    except DataError as e:
        yield from e.problems
        return
    grid = Geometry.of(image)
    for name in label.modalities:
        if name in images and not Geometry.of(images[name]).matches(grid):
            yield Problem(
                case_id,
                f"{name} grid ({Geometry.of(images[name]).describe()}) does not match its label's ({grid.describe()})",
                file,
            )
    values = to_array(image)
    try:
        check_label_values(values, set(manifest.labels.values()), case_id, file)
    except DataError as e:
        yield from e.problems
    if not np.any(values):
        yield Problem(case_id, "label is empty: no foreground voxel", file)
