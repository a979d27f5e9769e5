"""``zeus data check`` finds each kind of bad input, names case and file, and exits non-zero."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from shared.check import check_dataset
from shared.errors import DataError
from shared.geometry import Geometry
from shared.manifest import resolve_dataset
from shared.readers.base import read_image_file
from tests.factories import write_chaos_mr, write_msd, write_nnunet


def _problems(dataset_path, root=None) -> list[str]:
    dataset = resolve_dataset(str(dataset_path), root)
    return [str(p) for p in check_dataset(dataset, progress=False)]


def _rewrite_label(path, edit) -> None:
    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image)
    out = edit(array, image)
    sitk.WriteImage(out, str(path))


def test_clean_datasets_have_no_problems(tmp_path):
    assert _problems(write_msd(tmp_path / "msd")) == []
    assert _problems(write_nnunet(tmp_path / "nnunet")) == []
    assert _problems("chaos", write_chaos_mr(tmp_path / "CHAOS")) == []


def test_missing_modality(tmp_path):
    folder = write_nnunet(tmp_path)
    missing = folder / "imagesTr" / "tiny_002_0001.nii.gz"
    missing.unlink()
    assert _problems(folder) == [f"tiny_002: modality 'T1_out' is missing [{missing}]"]


def test_missing_chaos_series_folder(tmp_path):
    root = write_chaos_mr(tmp_path / "CHAOS")
    folder = root / "Train_Sets/MR/2/T2SPIR/DICOM_anon"
    for f in folder.iterdir():
        f.unlink()
    folder.rmdir()
    problems = _problems("chaos", root)
    assert problems[0] == f"2: modality 'T2' is missing: no DICOM folder [{folder}]"


@pytest.mark.parametrize("keep", [0.05, 0.9])
def test_truncated_file(tmp_path, keep):
    folder = write_msd(tmp_path)
    path = folder / "imagesTr" / "demo_001.nii.gz"
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    problems = _problems(folder)
    assert len(problems) == 1  # the 4-D file is reported once, not once per channel
    assert problems[0].startswith("demo_001: cannot read the file (truncated or not NIfTI?)"), problems
    assert problems[0].endswith(f"[{path}]")


def test_truncated_uncompressed_nifti(tmp_path):
    folder = write_nnunet(tmp_path)
    source = folder / "labelsTr" / "tiny_001.nii.gz"
    target = source.with_name("tiny_001.nii")
    sitk.WriteImage(sitk.ReadImage(str(source)), str(target), useCompression=False)
    target.write_bytes(target.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"file is truncated: \d+ bytes of image data, the header promises \d+"):
        read_image_file(target, "tiny_001")


def test_unreadable_dicom_file_in_a_series(tmp_path):
    root = write_chaos_mr(tmp_path / "CHAOS")
    bad = sorted((root / "Train_Sets/MR/1/T1DUAL/DICOM_anon/InPhase").iterdir())[2]
    bad.write_bytes(b"not a dicom file at all")
    problems = _problems("chaos", root)
    assert any(p.startswith("1: 1 file(s) are not readable as part of the series") for p in problems), problems


def test_shape_mismatch_between_channels_and_label(tmp_path):
    folder = write_nnunet(tmp_path)
    label = folder / "labelsTr" / "tiny_001.nii.gz"

    def crop(array, image):
        out = sitk.GetImageFromArray(array[:, :, :-4])
        out.CopyInformation(image[:-4, :, :])
        return out

    _rewrite_label(label, crop)
    problems = _problems(folder)
    assert len(problems) == 3  # one per channel on that grid
    assert all(p.startswith("tiny_001: T1") or p.startswith("tiny_001: T2") for p in problems)
    assert "size [48, 40, 6]" in problems[0] and "size [44, 40, 6]" in problems[0]
    assert problems[0].endswith(f"[{label}]")


def test_geometry_mismatch_between_channels_and_label(tmp_path):
    folder = write_msd(tmp_path)
    label = folder / "labelsTr" / "demo_002.nii.gz"

    def move(array, image):
        image.SetOrigin(tuple(np.add(image.GetOrigin(), (0.0, 0.0, 5.0))))
        return image

    _rewrite_label(label, move)
    problems = _problems(folder)
    assert len(problems) == 3
    assert all("does not match its label's" in p and p.startswith("demo_002:") for p in problems)


def test_label_values_not_in_the_manifest(tmp_path):
    folder = write_msd(tmp_path)
    label = folder / "labelsTr" / "demo_001.nii.gz"

    def add_seven(array, image):
        array[0, 0, 0] = 7
        out = sitk.GetImageFromArray(array)
        out.CopyInformation(image)
        return out

    _rewrite_label(label, add_seven)
    assert _problems(folder) == [
        f"demo_001: label values [7] are not in the manifest (expected a subset of [0, 1, 2, 3, 4]) [{label}]"
    ]


def test_empty_label(tmp_path):
    folder = write_msd(tmp_path)
    label = folder / "labelsTr" / "demo_002.nii.gz"
    _rewrite_label(label, lambda array, image: image * 0)
    assert _problems(folder) == [f"demo_002: label is empty: no foreground voxel [{label}]"]


def test_chaos_mask_count_and_grey_levels(tmp_path):
    root = write_chaos_mr(tmp_path / "CHAOS")
    ground = root / "Train_Sets/MR/1/T2SPIR/Ground"
    sorted(ground.iterdir())[0].unlink()
    stray = sorted((root / "Train_Sets/MR/2/T1DUAL/Ground").iterdir())[3]
    grey = np.asarray(Image.open(stray)).copy()
    grey[0, 0] = 90  # between the liver (55-70) and right-kidney (110-135) ranges
    Image.fromarray(grey).save(stray)
    problems = _problems("chaos", root)
    assert problems[0].startswith("1: 4 masks for 5 DICOM slices of DICOM_anon: expected one each")
    assert problems[1].startswith("2: grey levels [90] fall in no label range of the manifest")
    assert problems[1].endswith(f"[{stray}]")
    assert len(problems) == 2


def test_cli_lists_problems_and_exits_non_zero_without_traceback(tmp_path):
    folder = write_nnunet(tmp_path)
    (folder / "imagesTr" / "tiny_001_0002.nii.gz").unlink()
    (folder / "labelsTr" / "tiny_002.nii.gz").write_bytes(b"\x1f\x8b garbage")
    result = subprocess.run(
        [sys.executable, "-m", "zeus.cli", "data", "check", str(folder)], capture_output=True, encoding="utf-8"
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "2 problem(s):" in result.stderr
    assert "tiny_001: modality 'T2' is missing" in result.stderr
    assert "tiny_002: cannot read the file" in result.stderr


def test_geometry_helper_detects_spacing_changes():
    a = Geometry((2, 2, 2), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    b = Geometry((2, 2, 2), (1.0, 1.0, 1.01), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    assert a.matches(a) and not a.matches(b)
