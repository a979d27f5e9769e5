"""Co-registration: one patient's modalities and label on the reference modality's grid.

The reference image is brought to the canonical orientation (``geometry.to_canonical``); every other
modality is resampled onto that grid by physical coordinates (linear), the label by nearest neighbour.
Intensities stay in raw units (HU for CT); normalisation happens in ``preprocess``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from shared.errors import DataError
from shared.geometry import Geometry, resample_onto, to_array, to_canonical
from shared.manifest import Manifest
from shared.readers import CaseSources
from shared.readers.base import check_label_values


@dataclass
class RegisteredCase:
    """A case on one grid.

    images: modality -> float32 ``[z, y, x]`` array in raw units on ``grid``.
    label: uint8 ``[z, y, x]`` manifest label values on ``grid``, or None when not asked for.
    grid: the canonical reference grid; original: the reference modality's grid as stored on disk.
    """

    case_id: str
    images: dict[str, np.ndarray]
    label: np.ndarray | None
    grid: Geometry
    original: Geometry


def coregister(sources: CaseSources, manifest: Manifest, *, with_label: bool) -> RegisteredCase:
    """Read a case's images (and, only if ``with_label``, its label) onto the canonical reference grid."""
    if sources.problems:
        raise DataError(sources.problems)
    reference = sources.images[manifest.reference_modality].read()
    original = Geometry.of(reference)
    grid = Geometry.of(to_canonical(reference))
    images = {
        name: to_array(resample_onto(_as_float(source.read()), grid, is_label=False))
        for name, source in sources.images.items()
    }
    label = read_label_on(sources, manifest, grid) if with_label else None
    return RegisteredCase(sources.case_id, images, label, grid, original)


def read_label_on(sources: CaseSources, manifest: Manifest, grid: Geometry) -> np.ndarray:
    """The label lying on the reference modality's grid, checked and resampled onto ``grid``."""
    label_source = sources.label_for(manifest.reference_modality)
    if label_source is None:
        raise DataError.single(sources.case_id, f"no label for the reference modality {manifest.reference_modality!r}")
    label = label_source.source.read()
    file = label_source.source.files[0] if label_source.source.files else None
    reference = sources.images[manifest.reference_modality].read()
    if not Geometry.of(label).matches(Geometry.of(reference)):
        raise DataError.single(
            sources.case_id,
            f"label grid ({Geometry.of(label).describe()}) differs from the {manifest.reference_modality} grid "
            f"({Geometry.of(reference).describe()})",
            file,
        )
    values = to_array(label)
    check_label_values(values, set(manifest.labels.values()), sources.case_id, file)
    label = sitk.Cast(label, sitk.sitkUInt8) if label.GetPixelID() != sitk.sitkUInt8 else label
    return to_array(resample_onto(label, grid, is_label=True))


def _as_float(image: sitk.Image) -> sitk.Image:
    return image if image.GetPixelID() == sitk.sitkFloat32 else sitk.Cast(image, sitk.sitkFloat32)
