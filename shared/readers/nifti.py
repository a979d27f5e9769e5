"""NIfTI datasets: MSD (one 4-D file per case) and nnU-Net v2 raw (one file per channel, ``CASE_XXXX``)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from shared.errors import DataError, Problem, ZeusError
from shared.manifest import Manifest
from shared.paths import check_case_id, inside
from shared.readers.base import CaseSources, LabelSource, read_image_file, visible_files


@dataclass(frozen=True)
class NiftiVolume:
    """A whole 3-D NIfTI file (an nnU-Net channel, any label file)."""

    case_id: str
    path: Path

    @property
    def files(self) -> tuple[Path, ...]:
        return (self.path,)

    def read(self) -> sitk.Image:
        image = read_image_file(self.path, self.case_id)
        if image.GetDimension() != 3:
            raise DataError.single(self.case_id, f"expected a 3-D volume, found {image.GetDimension()}-D", self.path)
        return image


@dataclass
class Nifti4D:
    """An MSD case file: channels along the 4th axis. Read once, shared by the channel views."""

    case_id: str
    path: Path
    n_channels: int
    _image: sitk.Image | None = field(default=None, repr=False)

    def image(self) -> sitk.Image:
        if self._image is None:
            image = read_image_file(self.path, self.case_id)
            found = image.GetSize()[3] if image.GetDimension() == 4 else 1
            if image.GetDimension() not in (3, 4) or found != self.n_channels:
                raise DataError.single(
                    self.case_id,
                    f"expected {self.n_channels} channel(s) as in the manifest, found a {image.GetDimension()}-D "
                    f"image of size {list(image.GetSize())}",
                    self.path,
                )
            self._image = image
        return self._image

    def channel(self, index: int) -> NiftiChannel:
        return NiftiChannel(self, index)


@dataclass(frozen=True)
class NiftiChannel:
    file: Nifti4D
    index: int

    @property
    def case_id(self) -> str:
        return self.file.case_id

    @property
    def files(self) -> tuple[Path, ...]:
        return (self.file.path,)

    def read(self) -> sitk.Image:
        image = self.file.image()
        if image.GetDimension() == 3:
            return image
        size = list(image.GetSize())
        return sitk.Extract(image, [*size[:3], 0], [0, 0, 0, self.index])


def _strip(name: str, ending: str) -> str:
    return name[: -len(ending)] if name.endswith(ending) else name


def _read_listing(listing: Path) -> list[Any]:
    """The ``training`` list of an MSD dataset.json (empty when it has none)."""
    try:
        training = json.loads(listing.read_text(encoding="utf-8")).get("training", [])
    except (json.JSONDecodeError, AttributeError) as e:
        raise ZeusError(f"{listing} is not a valid dataset.json (a JSON object): {e}") from None
    if not isinstance(training, list):
        raise ZeusError(f"{listing}: 'training' must be a list of {{'image', 'label'}} entries, found {training!r}")
    return training


class MsdLayout:
    """``dataset.json`` + ``imagesTr/CASE.nii.gz`` (4-D) + ``labelsTr/CASE.nii.gz``."""

    def __init__(self, root: Path, manifest: Manifest):
        self.root, self.manifest = root, manifest
        self._entries = self._training_entries()

    def _training_entries(self) -> dict[str, tuple[Path, Path | None]]:
        listing = self.root / "dataset.json"
        training = _read_listing(listing) if listing.is_file() else []
        if training:
            return self._listed(training, listing)
        images_dir = self.root / "imagesTr"
        if not images_dir.is_dir():
            raise ZeusError(f"{self.root}: expected an MSD folder with imagesTr/ and labelsTr/, found no imagesTr/")
        entries = {}
        for path in visible_files(images_dir, (self.manifest.file_ending,)):
            case_id = check_case_id(_strip(path.name, self.manifest.file_ending), path)
            entries[case_id] = (inside(self.root, path, "image"), self.root / "labelsTr" / path.name)
        return entries

    def _listed(self, training: list[Any], listing: Path) -> dict[str, tuple[Path, Path | None]]:
        """The ``training`` entries of dataset.json, each path confined to the dataset folder."""
        entries: dict[str, tuple[Path, Path | None]] = {}
        for i, item in enumerate(training):
            if not isinstance(item, dict) or not isinstance(item.get("image"), str):
                raise ZeusError(
                    f"{listing}: training entry {i} must be an object with an 'image' path "
                    f'(like {{"image": "./imagesTr/case.nii.gz", "label": "./labelsTr/case.nii.gz"}}), found {item!r}'
                )
            if item.get("label") is not None and not isinstance(item["label"], str):
                raise ZeusError(f"{listing}: training entry {i} has a 'label' that is not a path: {item['label']!r}")
            image = inside(self.root, self.root / item["image"], f"{listing.name} training entry {i} image")
            label = item.get("label")
            label_path = (
                inside(self.root, self.root / label, f"{listing.name} training entry {i} label") if label else None
            )
            case_id = check_case_id(_strip(image.name, self.manifest.file_ending), f"{listing}, training entry {i}")
            if case_id in entries:
                raise ZeusError(
                    f"{listing}: training entries {entries[case_id][0]} and {image} have the same file name, so the "
                    f"same case id {case_id!r}: rename one"
                )
            entries[case_id] = (image, label_path)
        return entries

    def case_ids(self) -> list[str]:
        return list(self._entries)

    def sources(self, case_id: str) -> CaseSources:
        image_path, label_path = self._entries[case_id]
        volume = Nifti4D(case_id, image_path, len(self.manifest.modalities))
        images = {m.name: volume.channel(m.channel) for m in self.manifest.modalities}
        labels = [LabelSource(NiftiVolume(case_id, label_path), self.manifest.modality_names)] if label_path else []
        problems = [] if image_path.is_file() else [Problem(case_id, "image file is missing", image_path)]
        return CaseSources(case_id, images, labels, problems)


class NnUNetLayout:
    """nnU-Net v2 raw: ``imagesTr/CASE_0000.nii.gz`` ... one file per channel, ``labelsTr/CASE.nii.gz``."""

    def __init__(self, root: Path, manifest: Manifest):
        self.root, self.manifest = root, manifest
        self.images_dir = root / "imagesTr"
        if not self.images_dir.is_dir():
            raise ZeusError(f"{root}: expected an nnU-Net v2 folder with imagesTr/ and labelsTr/, found no imagesTr/")

    def _path(self, case_id: str, channel: int) -> Path:
        return self.images_dir / f"{case_id}_{channel:04d}{self.manifest.file_ending}"

    def case_ids(self) -> list[str]:
        ending = self.manifest.file_ending
        files = visible_files(self.images_dir, (ending,))
        misfits = [p for p in files if not re.fullmatch(r".+_\d{4}", _strip(p.name, ending))]
        if misfits:
            raise DataError(
                [Problem("-", f"not an nnU-Net channel file CASE_XXXX{ending}: move or rename it", p) for p in misfits]
            )
        for path in files:
            inside(self.root, path, "image")
        return sorted({check_case_id(_strip(p.name, ending)[:-5], p) for p in files})

    def sources(self, case_id: str) -> CaseSources:
        images = {m.name: NiftiVolume(case_id, self._path(case_id, m.channel)) for m in self.manifest.modalities}
        problems = [
            Problem(case_id, f"modality {name!r} is missing", source.path)
            for name, source in images.items()
            if not source.path.is_file()
        ]
        label = self.root / "labelsTr" / f"{case_id}{self.manifest.file_ending}"
        labels = [LabelSource(NiftiVolume(case_id, label), self.manifest.modality_names)]
        return CaseSources(case_id, images, labels, problems)
