"""Readers for the dataset layouts: MSD and nnU-Net v2 NIfTI, CHAOS DICOM + PNG."""

from __future__ import annotations

from shared.manifest import Dataset
from shared.readers.base import CaseSources, LabelSource, Layout, VolumeSource
from shared.readers.chaos import ChaosLayout
from shared.readers.nifti import MsdLayout, NnUNetLayout

__all__ = ["CaseSources", "LabelSource", "Layout", "VolumeSource", "open_layout"]


def open_layout(dataset: Dataset) -> Layout:
    manifest = dataset.manifest
    if manifest.layout == "msd":
        return MsdLayout(dataset.root, manifest)
    if manifest.layout == "nnunet_v2":
        return NnUNetLayout(dataset.root, manifest)
    return ChaosLayout(dataset.root, manifest, kind="MR" if manifest.layout == "chaos_mr" else "CT")
