"""What every reader gives: per case, where each modality's volume and each label come from.

Nothing is read when a case is discovered; a source reads its files when asked, so stage 1 can load a
case's images without ever opening a label file.
"""

from __future__ import annotations

import gzip
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from shared.errors import DataError, Problem, ZeusError


class VolumeSource(Protocol):
    """A 3-D volume on disk (one file, one channel of a 4-D file, a DICOM series, a PNG mask stack)."""

    case_id: str

    @property
    def files(self) -> tuple[Path, ...]: ...

    def read(self) -> sitk.Image:
        """The volume, with its geometry; raises ``DataError`` naming the case and file."""
        ...


@dataclass(frozen=True)
class LabelSource:
    """A label volume and the modalities that lie on its grid (the first one defines that grid)."""

    source: VolumeSource
    modalities: tuple[str, ...]


@dataclass
class CaseSources:
    case_id: str
    images: dict[str, VolumeSource]
    labels: list[LabelSource]
    problems: list[Problem] = field(default_factory=list)

    def label_for(self, modality: str) -> LabelSource | None:
        return next((label for label in self.labels if modality in label.modalities), None)

    def image_files(self) -> list[Path]:
        return sorted({f for source in self.images.values() for f in source.files})


class Layout(Protocol):
    """Finds the cases of a dataset on disk."""

    def case_ids(self) -> list[str]: ...

    def sources(self, case_id: str) -> CaseSources: ...


# Single-volume image files the readers accept, longest ending first (".nii.gz" before ".nii").
IMAGE_ENDINGS = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd")


def image_stem(path: Path) -> str:
    """The file name without its image ending: ``case_001.nii.gz`` -> ``case_001``."""
    name = path.name
    return next((name[: -len(e)] for e in IMAGE_ENDINGS if name.lower().endswith(e)), path.stem)


def natural_key(path: Path) -> list[object]:
    """Sort key comparing digit runs as numbers: ``img2 < img10``."""
    return [int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", path.name)]


def visible_files(folder: Path, suffixes: tuple[str, ...] = ()) -> list[Path]:
    """Files of ``folder`` in natural order, skipping hidden files and macOS ``._`` forks (common in MSD tars)."""
    files = [
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and (not suffixes or p.name.lower().endswith(suffixes))
    ]
    return sorted(files, key=natural_key)


def read_image_file(path: Path, case_id: str) -> sitk.Image:
    """Read one image file with SimpleITK; a missing, truncated or unreadable file, or one holding NaN or
    infinite voxels, becomes a ``DataError``."""
    if not path.is_file():
        raise DataError.single(case_id, "file is missing", path)
    try:
        check_header(path, case_id)
    except RuntimeError as e:
        raise _unreadable(e, case_id, path) from None
    nifti = path.name.lower().endswith((".nii", ".nii.gz"))
    if nifti:
        _check_nifti(path, case_id)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise _unreadable(e, case_id, path) from None
    if not nifti and image.GetPixelID() in _FLOAT_PIXELS:
        _check_finite(sitk.GetArrayViewFromImage(image), case_id, path)
    return image


def _unreadable(error: RuntimeError, case_id: str, path: Path) -> DataError:
    reason = str(error).strip().splitlines()[-1] if str(error).strip() else "unknown reason"
    return DataError.single(case_id, f"cannot read the file (truncated or not an image?): {reason}", path)


# The most voxels a volume may have, all channels together: 2^29 = 512 x 512 x 2048. A NIfTI header can
# promise 4096^3 voxels in a few kilobytes of gzip; preparing a volume takes about 14 bytes per voxel.
DEFAULT_MAX_VOXELS = 2**29


def max_voxels() -> int:
    """``ZEUS_MAX_VOXELS`` from the environment, or ``DEFAULT_MAX_VOXELS``."""
    value = os.environ.get("ZEUS_MAX_VOXELS", "")
    if not value:
        return DEFAULT_MAX_VOXELS
    if not value.isdigit() or int(value) < 1:
        raise ZeusError(f"ZEUS_MAX_VOXELS must be a positive whole number of voxels, found {value!r}")
    return int(value)


_COMPLEX_PIXELS = {sitk.sitkComplexFloat32, sitk.sitkComplexFloat64}


def check_header(path: Path, case_id: str) -> int:
    """From the header alone, before any voxel is read: one real grey value per voxel, and a size whose
    voxels fit in memory (``max_voxels``). Returns the number of voxels. SimpleITK's ``RuntimeError`` for a
    file it cannot read passes through (``read_image_file`` words it)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    size = list(reader.GetSize())
    components, pixel = reader.GetNumberOfComponents(), reader.GetPixelID()
    if components != 1 or pixel in _COMPLEX_PIXELS:
        kind = "complex values" if pixel in _COMPLEX_PIXELS else f"{components} components per voxel (colour?)"
        raise DataError.single(
            case_id,
            f"expected one real grey value per voxel, found {kind} ({sitk.GetPixelIDValueAsString(pixel)}): "
            "convert the scan to a grey-value image",
            path,
        )
    voxels = int(np.prod(size, dtype=np.int64))
    check_voxel_count(voxels, f"the header promises size {size}", case_id, path)
    return voxels


def check_voxel_count(voxels: int, what: str, case_id: str, path: Path) -> None:
    """Refuse a volume of more than ``max_voxels`` voxels; ``what`` says where the count comes from."""
    limit = max_voxels()
    if voxels > limit:
        raise DataError.single(
            case_id,
            f"{what}: {voxels} voxels, more than ZEUS_MAX_VOXELS ({limit}): a damaged or hostile file? If the "
            "volume is real, set ZEUS_MAX_VOXELS higher (preparing it takes about 14 bytes of memory per voxel)",
            path,
        )


def check_label_values(array: np.ndarray, allowed: set[int], case_id: str, file: Path) -> None:
    values = np.unique(array)
    if not np.array_equal(values, np.round(values)):
        raise DataError.single(case_id, f"label values must be integers, found {values[:8].tolist()}", file)
    unknown = sorted({int(v) for v in values} - allowed)
    if unknown:
        raise DataError.single(
            case_id, f"label values {unknown} are not in the manifest (expected a subset of {sorted(allowed)})", file
        )


_FLOAT_PIXELS = {sitk.sitkFloat32, sitk.sitkFloat64, sitk.sitkVectorFloat32, sitk.sitkVectorFloat64}


def _check_finite(array: np.ndarray, case_id: str, file: Path) -> None:
    """NaN or infinite voxels would silently become 0 or rescale a whole channel: refuse the volume."""
    nan, inf = int(np.isnan(array).sum()), int(np.isinf(array).sum())
    if nan or inf:
        share = 100 * (nan + inf) / max(1, array.size)
        raise DataError.single(
            case_id,
            f"the image has {nan} NaN and {inf} infinite voxel(s) ({share:.2g} % of the volume): "
            "fix or replace the file (Zeus does not guess values for them)",
            file,
        )


def _check_nifti(path: Path, case_id: str) -> None:
    """What ITK's NIfTI reader hides: it zero-fills a truncated file, and turns NaN and infinite voxels into 0,
    without complaint. Compare the data length with what the header promises, and look at float data."""
    try:
        image = nib.load(path)
        shape, dtype = image.header.get_data_shape(), image.header.get_data_dtype()
        expected = int(image.dataobj.offset) + int(np.prod(shape)) * dtype.itemsize
        found = _gzip_length(path, expected) if path.name.lower().endswith(".gz") else path.stat().st_size
    except (OSError, EOFError, ValueError, nib.filebasedimages.ImageFileError) as e:
        raise DataError.single(case_id, f"cannot read the file (truncated or not NIfTI?): {e}", path) from None
    if found < expected:
        raise DataError.single(
            case_id, f"file is truncated: {found} bytes of image data, the header promises {expected}", path
        )
    if np.issubdtype(dtype, np.floating):
        _check_finite(np.asanyarray(image.dataobj), case_id, path)


def _gzip_length(path: Path, enough: int) -> int:
    """Uncompressed length of a gzip file, counted no further than ``enough`` bytes: data past what the header
    needs is never read, so a small header in front of a long stream (a gzip bomb) costs nothing. Raises
    EOFError when the stream is cut short before that."""
    length = 0
    with gzip.open(path, "rb") as f:
        while length < enough and (chunk := f.read(min(1 << 22, enough - length))):
            length += len(chunk)
    return length
