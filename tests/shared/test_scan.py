"""A new scan given on the command line is read like a case of its dataset, in any supported form."""

from __future__ import annotations

import numpy as np
import pytest

from shared.errors import ZeusError
from shared.geometry import to_array
from shared.manifest import resolve_dataset
from shared.readers import open_layout
from shared.readers.scan import scan_sources
from tests.factories import write_chaos_mr, write_msd, write_nnunet


def _arrays(sources) -> dict[str, np.ndarray]:
    return {name: to_array(source.read()) for name, source in sources.images.items()}


def test_msd_4d_nnunet_channels_and_named_files_give_the_dataset_images(tmp_path):
    msd = resolve_dataset(str(write_msd(tmp_path / "msd")))
    nnunet = resolve_dataset(str(write_nnunet(tmp_path / "nnunet")))
    manifest = msd.manifest
    four_d = scan_sources(manifest, [str(msd.root / "imagesTr" / "demo_001.nii.gz")])
    assert four_d.case_id == "demo_001" and four_d.labels == []
    first_channel = scan_sources(manifest, [str(nnunet.root / "imagesTr" / "tiny_001_0000.nii.gz")])
    assert first_channel.case_id == "tiny_001"
    files = [nnunet.root / "imagesTr" / f"tiny_001_{c:04d}.nii.gz" for c in range(3)]
    named = scan_sources(manifest, [f"{m}={f}" for m, f in zip(manifest.modality_names, files, strict=True)], "new")
    assert named.case_id == "new"
    for sources, expected in (
        (four_d, open_layout(msd).sources("demo_001")),
        (first_channel, open_layout(nnunet).sources("tiny_001")),
        (named, open_layout(nnunet).sources("tiny_001")),
    ):
        arrays, reference = _arrays(sources), list(_arrays(expected).values())
        assert list(arrays) == list(manifest.modality_names)
        for array, wanted in zip(arrays.values(), reference, strict=True):
            np.testing.assert_array_equal(array, wanted)


def test_a_chaos_patient_folder_is_a_scan(tmp_path):
    root = write_chaos_mr(tmp_path / "CHAOS")
    chaos = resolve_dataset("chaos", root)
    patient = next(p for p in root.rglob("*") if p.is_dir() and p.name == "1" and (p / "T2SPIR").is_dir())
    sources = scan_sources(chaos.manifest, [str(patient)])
    assert sources.case_id == "1" and sources.labels == []
    expected = _arrays(open_layout(chaos).sources("1"))
    for name, array in _arrays(sources).items():
        np.testing.assert_array_equal(array, expected[name])
    # the same series named one by one, as DICOM folders
    named = [f"{m.name}={patient / m.source}" for m in chaos.manifest.modalities]
    for name, array in _arrays(scan_sources(chaos.manifest, named)).items():
        np.testing.assert_array_equal(array, expected[name])


def test_modality_mismatches_are_clear_errors(tmp_path):
    msd = resolve_dataset(str(write_msd(tmp_path / "msd")))
    nnunet = write_nnunet(tmp_path / "nnunet")
    prostate = resolve_dataset("msd_prostate", tmp_path).manifest  # two modalities: T2, ADC
    with pytest.raises(ZeusError, match=r"has 3 channel\(s\).*trained on 2 modalities \['T2', 'ADC'\]"):
        scan_sources(prostate, [str(msd.root / "imagesTr" / "demo_001.nii.gz")])
    manifest = msd.manifest
    with pytest.raises(ZeusError, match=r"unknown: \['FLAIR'\], missing: \['T1_out', 'T2'\]"):
        scan_sources(manifest, [f"T1_in={nnunet}/imagesTr/tiny_001_0000.nii.gz", f"FLAIR={nnunet}/x.nii.gz"])
    (nnunet / "imagesTr" / "tiny_001_0002.nii.gz").unlink()
    with pytest.raises(ZeusError, match=r"channel files of \['T2 \(_0002\)'\] are missing"):
        scan_sources(manifest, [str(nnunet / "imagesTr" / "tiny_001_0000.nii.gz")])
    with pytest.raises(ZeusError, match="does not exist"):
        scan_sources(manifest, [str(tmp_path / "nothing.nii.gz")])
    with pytest.raises(ZeusError, match="is a folder"):
        scan_sources(manifest, [str(tmp_path)])
