"""Readers for the dataset layouts: MSD and nnU-Net v2 NIfTI, CHAOS DICOM + PNG."""

from __future__ import annotations

from shared.errors import ZeusError
from shared.manifest import Dataset
from shared.readers.base import CaseSources, LabelSource, Layout, VolumeSource
from shared.readers.chaos import ChaosLayout
from shared.readers.nifti import MsdLayout, NnUNetLayout

__all__ = ["CaseSources", "LabelSource", "Layout", "VolumeSource", "open_layout", "select_cases"]


def open_layout(dataset: Dataset) -> Layout:
    manifest = dataset.manifest
    if manifest.layout == "msd":
        return MsdLayout(dataset.root, manifest)
    if manifest.layout == "nnunet_v2":
        return NnUNetLayout(dataset.root, manifest)
    return ChaosLayout(dataset.root, manifest, kind="MR" if manifest.layout == "chaos_mr" else "CT")


def select_cases(dataset: Dataset, case_ids: list[str] | None, layout: Layout | None = None) -> list[str]:
    """The dataset's cases (``None``), or the requested ones if each is a case of the dataset (``--case``);
    ``layout``: the dataset's, when the caller has opened it already."""
    known = (layout or open_layout(dataset)).case_ids()
    if case_ids is None:
        return known
    unknown = [c for c in dict.fromkeys(case_ids) if c not in known]
    if unknown:
        listed = ", ".join(known[:10]) + (" ..." if len(known) > 10 else "")
        raise ZeusError(f"cases {unknown} are not in {dataset.name} (it has {len(known)}: {listed})")
    return list(dict.fromkeys(case_ids))
