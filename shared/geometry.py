"""Image geometry and orientation, in one place.

Conventions: physical space is LPS (SimpleITK/DICOM). Arrays are indexed ``[z, y, x]`` (SimpleITK's
order), and the voxel axis ``z`` is the acquisition axis we slice along. ``Geometry`` fields follow
SimpleITK's ``(x, y, z)`` order.

Every volume is brought to a *canonical* orientation by flips only (never axis permutations, so the
acquisition axis stays the slice axis): each voxel axis then points along +L, +P or +S, the radiological
display convention, so the patient's right is on the left of every slice whatever the scanner wrote.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk

_LPS_POSITIVE = {"R": "L", "L": "L", "A": "P", "P": "P", "I": "S", "S": "S"}


@dataclass(frozen=True)
class Geometry:
    """Size, spacing (mm), origin (mm) and direction cosines (row-major 3x3) of a 3-D grid, in x, y, z order."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, image: sitk.Image) -> Geometry:
        return cls(
            size=tuple(int(s) for s in image.GetSize()),
            spacing=tuple(float(s) for s in image.GetSpacing()),
            origin=tuple(float(o) for o in image.GetOrigin()),
            direction=tuple(float(d) for d in image.GetDirection()),
        )

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Geometry:
        return cls(
            size=tuple(data["size"]),
            spacing=tuple(data["spacing"]),
            origin=tuple(data["origin"]),
            direction=tuple(data["direction"]),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "size": list(self.size),
            "spacing": list(self.spacing),
            "origin": list(self.origin),
            "direction": list(self.direction),
        }

    @property
    def array_shape(self) -> tuple[int, int, int]:
        """Shape of the ``[z, y, x]`` array on this grid."""
        return self.size[::-1]

    def blank(self, pixel_type: int = sitk.sitkUInt8) -> sitk.Image:
        image = sitk.Image(list(self.size), pixel_type)
        self.stamp(image)
        return image

    def stamp(self, image: sitk.Image) -> sitk.Image:
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def matches(self, other: Geometry, tolerance_mm: float = 1e-3) -> bool:
        """Same grid: equal size, and spacing, origin, direction equal within ``tolerance_mm``."""
        return (
            self.size == other.size
            and np.allclose(self.spacing, other.spacing, atol=tolerance_mm)
            and np.allclose(self.origin, other.origin, atol=tolerance_mm)
            and np.allclose(self.direction, other.direction, atol=1e-4)
        )

    def describe(self) -> str:
        spacing = "x".join(f"{s:.3g}" for s in self.spacing)
        origin = ", ".join(f"{o:.1f}" for o in self.origin)
        return f"size {list(self.size)}, spacing {spacing} mm, origin ({origin})"


def to_array(image: sitk.Image) -> np.ndarray:
    """``[z, y, x]`` array (a copy) of a 3-D image."""
    return sitk.GetArrayFromImage(image)


def from_array(array: np.ndarray, geometry: Geometry) -> sitk.Image:
    """A SimpleITK image of the ``[z, y, x]`` ``array`` on ``geometry``."""
    if tuple(array.shape) != geometry.array_shape:
        raise ValueError(f"array shape {array.shape} does not fit grid {geometry.array_shape} (z, y, x)")
    return geometry.stamp(sitk.GetImageFromArray(array))


def orientation_code(image: sitk.Image) -> str:
    """Three-letter DICOM-style code of where each voxel axis points, e.g. ``"LPS"`` or ``"RAS"``."""
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())


def to_canonical(image: sitk.Image) -> sitk.Image:
    """Flip voxel axes (physical content unchanged) so that each points along +L, +P or +S."""
    code = orientation_code(image)
    target = "".join(_LPS_POSITIVE[c] for c in code)
    return image if target == code else sitk.DICOMOrient(image, target)


def resample_onto(image: sitk.Image, geometry: Geometry, *, is_label: bool, default_value: float = 0.0) -> sitk.Image:
    """Resample ``image`` onto ``geometry`` by physical coordinates: linear for images, nearest for labels.

    Identity transform: modalities are assumed to be in the scanner's common patient frame, as
    DICOM and NIfTI headers state; nothing is registered by intensity.
    """
    if Geometry.of(image).matches(geometry, tolerance_mm=1e-6):
        return image
    interpolator = sitk.sitkNearestNeighbor if is_label else sitk.sitkLinear
    pixel_type = image.GetPixelID() if is_label else sitk.sitkFloat32
    return sitk.Resample(image, geometry.blank(), sitk.Transform(), interpolator, default_value, pixel_type)
