"""A new scan given on the command line (``zeus predict --input ...``), read like a case of its dataset.

Accepted forms, checked against the modalities the model was trained on:

- one 4-D NIfTI (an MSD image): its channels in the manifest's order;
- one file per channel in nnU-Net style (``CASE_0000.nii.gz``, ``CASE_0001.nii.gz``, ...): name all of them,
  or only ``CASE_0000.nii.gz`` and the others are found beside it;
- ``MODALITY=PATH`` for each modality, PATH a 3-D image file (NIfTI, MHA, NRRD) or a DICOM series folder;
- for a CHAOS dataset, a patient folder (``.../MR/<id>`` holding ``T1DUAL/`` and ``T2SPIR/``).

A scan has no label: the sources carry images only.

``scans_in_folder`` lists the scans of a folder of many (``imagesTs`` of an MSD / nnU-Net dataset: 4-D NIfTIs
or channel files grouped by case; a CHAOS ``Test_Sets`` folder, or its ``MR`` / ``CT`` folder, of patient
folders), each as the inputs ``scan_sources`` takes.
"""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib

from shared.errors import ZeusError
from shared.manifest import Manifest
from shared.paths import check_case_id
from shared.readers.base import IMAGE_ENDINGS, CaseSources, VolumeSource, image_stem, natural_key, visible_files
from shared.readers.chaos import ChaosLayout, DicomSeries
from shared.readers.nifti import Nifti4D, NiftiVolume

NNUNET_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})(?P<ending>\.nii(\.gz)?)$")


def scan_sources(manifest: Manifest, inputs: list[str], case_id: str | None = None) -> CaseSources:
    """The image sources of one new scan; a mismatch with the manifest's modalities is a ``ZeusError``, and so is
    a case id (``case_id``, or taken from the file name) that is not a safe file name."""
    if case_id is not None:
        check_case_id(case_id, "--case-id")
    sources = _sources(manifest, inputs, case_id)
    check_case_id(sources.case_id, "the scan's file name: pass --case-id")
    return sources


def _sources(manifest: Manifest, inputs: list[str], case_id: str | None) -> CaseSources:
    if not inputs:
        raise ZeusError("no --input given: pass the scan (a file, per-modality files, or a folder)")
    if all("=" in item for item in inputs):
        return _named(manifest, inputs, case_id)
    paths = [Path(item).expanduser() for item in inputs]
    for path in paths:
        if not path.exists():
            raise ZeusError(f"--input {path} does not exist")
    if len(paths) == 1 and paths[0].is_dir():
        return _chaos_patient(manifest, paths[0], case_id)
    if len(paths) == 1 and not NNUNET_CHANNEL.match(paths[0].name):
        return _four_d(manifest, paths[0], case_id)
    if all(NNUNET_CHANNEL.match(p.name) for p in paths):
        return _nnunet_channels(manifest, paths, case_id)
    raise ZeusError(
        f"cannot tell which input is which modality ({', '.join(manifest.modality_names)}): give one 4-D NIfTI, "
        "nnU-Net channel files CASE_0000.nii.gz ..., or MODALITY=PATH for each modality"
    )


def _named(manifest: Manifest, inputs: list[str], case_id: str | None) -> CaseSources:
    given = dict(item.split("=", 1) for item in inputs)
    unknown = sorted(set(given) - set(manifest.modality_names))
    missing = [name for name in manifest.modality_names if name not in given]
    if unknown or missing:
        raise ZeusError(
            f"the model was trained on the modalities {list(manifest.modality_names)}; the scan gives "
            f"{sorted(given)} (unknown: {unknown}, missing: {missing})"
        )
    paths = {name: Path(path).expanduser() for name, path in given.items()}
    case = case_id or image_stem(paths[manifest.reference_modality])
    images = {name: _volume(case, path) for name, path in paths.items()}
    return CaseSources(case, {m: images[m] for m in manifest.modality_names}, [])


def _volume(case_id: str, path: Path) -> VolumeSource:
    if path.is_dir():
        return DicomSeries(case_id, path)
    if path.is_file() and path.name.lower().endswith(IMAGE_ENDINGS):
        return NiftiVolume(case_id, path)
    raise ZeusError(f"{path}: expected an image file ({', '.join(IMAGE_ENDINGS)}) or a DICOM series folder")


def _four_d(manifest: Manifest, path: Path, case_id: str | None) -> CaseSources:
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        raise ZeusError(f"{path}: a single input must be a 4-D NIfTI with one channel per modality, or a folder")
    try:
        shape = nib.load(path).header.get_data_shape()
    except (OSError, EOFError, ValueError, nib.filebasedimages.ImageFileError) as e:
        raise ZeusError(f"--input {path} cannot be read as NIfTI (not an image, or damaged?): {e}") from None
    channels = shape[3] if len(shape) == 4 else 1
    if channels != len(manifest.modalities):
        raise ZeusError(
            f"{path} has {channels} channel(s) (shape {list(shape)}); the model was trained on "
            f"{len(manifest.modalities)} modalities {list(manifest.modality_names)}, in that order"
        )
    case = case_id or image_stem(path)
    volume = Nifti4D(case, path, channels)
    return CaseSources(case, {m.name: volume.channel(m.channel) for m in manifest.modalities}, [])


def _nnunet_channels(manifest: Manifest, paths: list[Path], case_id: str | None) -> CaseSources:
    first = NNUNET_CHANNEL.match(paths[0].name)
    assert first is not None
    stem, ending = first["case"], first["ending"]
    if len(paths) == 1:  # only CASE_0000 given: its siblings hold the other channels
        paths = [paths[0].with_name(f"{stem}_{m.channel:04d}{ending}") for m in manifest.modalities]
    by_channel = {int(NNUNET_CHANNEL.match(p.name)["channel"]): p for p in paths}  # type: ignore[index]
    wanted = {m.channel: m.name for m in manifest.modalities}
    missing = [f"{name} (_{c:04d})" for c, name in wanted.items() if c not in by_channel or not by_channel[c].is_file()]
    extra = sorted(set(by_channel) - set(wanted))
    if missing or extra:
        raise ZeusError(
            f"the model was trained on the modalities {list(manifest.modality_names)}; for {stem} the channel "
            f"files of {missing} are missing" + (f" and channels {extra} are not in the model" if extra else "")
        )
    case = case_id or stem
    return CaseSources(case, {m.name: NiftiVolume(case, by_channel[m.channel]) for m in manifest.modalities}, [])


def _chaos_patient(manifest: Manifest, folder: Path, case_id: str | None) -> CaseSources:
    if not manifest.layout.startswith("chaos"):
        raise ZeusError(
            f"{folder} is a folder; for the {manifest.name!r} model give image files "
            f"(a 4-D NIfTI, nnU-Net channel files, or MODALITY=PATH for {list(manifest.modality_names)})"
        )
    layout = ChaosLayout(folder.parent, manifest, kind="MR" if manifest.layout == "chaos_mr" else "CT")
    sources = layout.sources(folder.name)
    if sources.problems:
        raise ZeusError(
            f"{folder} does not hold the modalities the model was trained on ({list(manifest.modality_names)}): "
            + "; ".join(p.message for p in sources.problems)
        )
    case = case_id or folder.name
    return CaseSources(case, sources.images, [])


def is_scan_folder(manifest: Manifest, path: Path) -> bool:
    """A folder of several scans (not one CHAOS patient's folder)."""
    if not path.is_dir():
        return False
    return bool(visible_files(path, IMAGE_ENDINGS)) or not _is_chaos_patient(manifest, path)


def _is_chaos_patient(manifest: Manifest, folder: Path) -> bool:
    return manifest.layout.startswith("chaos") and any(
        (folder / name).is_dir() for name in ("T1DUAL", "T2SPIR", "DICOM_anon")
    )


def scans_in_folder(manifest: Manifest, folder: Path) -> list[list[str]]:
    """Each scan of ``folder`` as ``scan_sources`` inputs, in natural order; an empty folder is an error."""
    files = visible_files(folder, IMAGE_ENDINGS)
    if files:
        by_case: dict[str, list[str]] = {}
        for path in files:
            match = NNUNET_CHANNEL.match(path.name)
            by_case.setdefault(match["case"] if match else f"\0{path.name}", []).append(str(path))
        return list(by_case.values())
    if manifest.layout.startswith("chaos"):
        kind = folder / ("MR" if manifest.layout == "chaos_mr" else "CT")
        parent = kind if kind.is_dir() else folder
        patients = [
            p for p in sorted(parent.iterdir(), key=natural_key) if p.is_dir() and _is_chaos_patient(manifest, p)
        ]
        if patients:
            return [[str(p)] for p in patients]
    raise ZeusError(
        f"no scans in {folder}: expected image files ({', '.join(IMAGE_ENDINGS)}: 4-D NIfTIs or nnU-Net channel "
        "files CASE_0000.nii.gz ...)" + (" or CHAOS patient folders" if manifest.layout.startswith("chaos") else "")
    )
