"""CHAOS: DICOM series with PNG masks.

On disk (``Train_Sets/`` may be the root itself)::

    Train_Sets/CT/<patient>/DICOM_anon/*.dcm, Ground/liver_GT_NNN.png
    Train_Sets/MR/<patient>/T1DUAL/DICOM_anon/{InPhase,OutPhase}/*.dcm, T1DUAL/Ground/*.png
    Train_Sets/MR/<patient>/T2SPIR/DICOM_anon/*.dcm, T2SPIR/Ground/*.png

Mask number N belongs to the N-th DICOM file in file-name order. SimpleITK stacks a series by slice
position, so the masks are stacked with the same permutation. In- and opposed-phase share one mask set.
MR masks code organs by grey-level range (liver 55-70, right kidney 110-135, ...); CT masks are binary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image, UnidentifiedImageError

from shared.errors import DataError, Problem, ZeusError
from shared.geometry import Geometry
from shared.manifest import Manifest
from shared.paths import check_case_id, inside
from shared.readers.base import (
    CaseSources,
    LabelSource,
    check_header,
    check_voxel_count,
    natural_key,
    visible_files,
)


@dataclass
class DicomSeries:
    """One DICOM series in a folder; read once, slices stacked by position."""

    case_id: str
    folder: Path
    _image: sitk.Image | None = field(default=None, repr=False)
    _order: list[int] | None = field(default=None, repr=False)

    @property
    def files(self) -> tuple[Path, ...]:
        return tuple(visible_files(self.folder)) if self.folder.is_dir() else ()

    def read(self) -> sitk.Image:
        if self._image is None:
            self._image, self._order = self._read()
        return self._image

    def order(self) -> list[int]:
        """``order[k]`` = index, in file-name order, of the file that became slice ``k``."""
        self.read()
        assert self._order is not None
        return self._order

    def _read(self) -> tuple[sitk.Image, list[int]]:
        by_name = [str(p) for p in self.files]
        if not by_name:
            raise DataError.single(self.case_id, "no DICOM files in the series folder", self.folder)
        series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(self.folder))
        if len(series) != 1:
            raise DataError.single(
                self.case_id, f"expected one DICOM series in the folder, found {len(series)}", self.folder
            )
        by_position = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(self.folder), series[0]))
        skipped = sorted(set(by_name) - set(by_position))
        if skipped:
            raise DataError.single(
                self.case_id, f"{len(skipped)} file(s) are not readable as part of the series", Path(skipped[0])
            )
        try:  # every slice's header before any pixel: one huge or colour file, or too many files, is refused
            voxels = sum(check_header(Path(name), self.case_id) for name in by_position)
        except RuntimeError as e:
            raise DataError.single(self.case_id, f"cannot read the DICOM series: {e}", self.folder) from None
        check_voxel_count(voxels, f"the series' {len(by_position)} DICOM files", self.case_id, self.folder)
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(by_position)
        try:
            image = reader.Execute()
        except RuntimeError as e:
            raise DataError.single(self.case_id, f"cannot read the DICOM series: {e}", self.folder) from None
        name_index = {name: i for i, name in enumerate(by_name)}
        return image, [name_index[name] for name in by_position]


@dataclass(frozen=True)
class PngMaskStack:
    """PNG masks paired with a DICOM series, grey-level ranges mapped to the manifest's label values."""

    case_id: str
    folder: Path
    series: DicomSeries
    grey_levels: dict[int, tuple[int, int]]  # label value -> inclusive grey-level range

    @property
    def files(self) -> tuple[Path, ...]:
        return tuple(visible_files(self.folder, (".png",))) if self.folder.is_dir() else ()

    def read(self) -> sitk.Image:
        masks = self.files
        if not masks:
            raise DataError.single(self.case_id, "no PNG masks in the mask folder", self.folder)
        reference = self.series.read()
        order = self.series.order()
        if len(masks) != len(order):
            raise DataError.single(
                self.case_id,
                f"{len(masks)} masks for {len(order)} DICOM slices of {self.series.folder.name}: expected one each",
                self.folder,
            )
        rows, cols = reference.GetSize()[1], reference.GetSize()[0]
        stack = np.stack([self._label_slice(masks[i], (rows, cols)) for i in order])
        label = sitk.GetImageFromArray(stack)
        return Geometry.of(reference).stamp(label)

    def _label_slice(self, path: Path, shape: tuple[int, int]) -> np.ndarray:
        try:
            with Image.open(path) as png:  # reads the header only: the size is checked before any pixel
                if png.size[::-1] != shape:
                    rows, cols = png.size[::-1]
                    raise DataError.single(
                        self.case_id, f"mask is {rows}x{cols}, its DICOM slice {shape[0]}x{shape[1]}", path
                    )
                grey = np.asarray(png.convert("L"))
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as e:
            raise DataError.single(self.case_id, f"cannot read the PNG mask: {e}", path) from None
        label = np.zeros(shape, np.uint8)
        coded = np.zeros(shape, bool)
        for value, (lo, hi) in self.grey_levels.items():
            inside = (grey >= lo) & (grey <= hi)
            label[inside] = value
            coded |= inside
        stray = np.unique(grey[~coded & (grey > 0)])
        if stray.size:
            ranges = {v: list(r) for v, r in self.grey_levels.items()}
            raise DataError.single(
                self.case_id,
                f"grey levels {stray[:8].tolist()} fall in no label range of the manifest {ranges}",
                path,
            )
        return label


class ChaosLayout:
    """CHAOS MR (``kind="MR"``) or CT (``kind="CT"``): one case per patient folder."""

    def __init__(self, root: Path, manifest: Manifest, kind: str):
        self.manifest = manifest
        candidates = [root / "Train_Sets" / kind, root / kind, root]
        found = next((c for c in candidates if c.is_dir() and self._has_patients(c)), None)
        if found is None:
            raise ZeusError(
                f"{root}: expected the CHAOS layout, with patient folders under Train_Sets/{kind}/ "
                f"(e.g. Train_Sets/{kind}/1/{manifest.modalities[0].source}); found none. {manifest.obtain}"
            )
        self.patients = found
        self.grey_levels = {manifest.labels[name]: rng for name, rng in manifest.mask_grey_levels.items()}

    def _has_patients(self, folder: Path) -> bool:
        first = self.manifest.modalities[0].source
        return any((p / first).parent.is_dir() for p in folder.iterdir() if p.is_dir())

    def case_ids(self) -> list[str]:
        folders = [p for p in sorted(self.patients.iterdir(), key=natural_key) if p.is_dir()]
        return [check_case_id(inside(self.patients, p, "patient folder").name, p) for p in folders]

    def sources(self, case_id: str) -> CaseSources:
        patient = self.patients / case_id
        images: dict[str, DicomSeries] = {}
        labels: dict[str, tuple[PngMaskStack, list[str]]] = {}
        problems = []
        for m in self.manifest.modalities:
            series = DicomSeries(case_id, patient / m.source)
            images[m.name] = series
            if not series.folder.is_dir():
                problems.append(Problem(case_id, f"modality {m.name!r} is missing: no DICOM folder", series.folder))
            if m.mask in labels:
                labels[m.mask][1].append(m.name)
            elif m.mask:
                labels[m.mask] = (PngMaskStack(case_id, patient / m.mask, series, self.grey_levels), [m.name])
        label_sources = [LabelSource(stack, tuple(names)) for stack, names in labels.values()]
        return CaseSources(case_id, images, label_sources, problems)
