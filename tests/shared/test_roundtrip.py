"""Read -> co-register -> preprocess -> inverse -> NIfTI gives back the input grid, affine and label."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from shared.cases import CaseCache
from shared.demo import DemoConfig
from shared.geometry import to_array
from shared.manifest import resolve_dataset
from shared.readers import open_layout
from tests.factories import write_chaos_mr, write_msd


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


@pytest.mark.parametrize("size", [96, 100])  # 48 -> 96 is an integer factor; 48 -> 100 is not
def test_prediction_written_back_matches_input_grid_and_affine(tmp_path, size):
    folder = write_msd(tmp_path)
    dataset = resolve_dataset(str(folder))
    cache = CaseCache(dataset, image_size=size)
    cache.prepare(progress=False)
    case = cache.load("demo_001")
    assert case.image.shape == (3, 6, size, size)

    restored = case.meta.restore(case.label, is_label=True)  # the label stands in for a perfect prediction
    out = tmp_path / "pred.nii.gz"
    sitk.WriteImage(restored, str(out))

    source = folder / "labelsTr" / "demo_001.nii.gz"
    ours, theirs = nib.load(out), nib.load(source)
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours.affine, theirs.affine, atol=1e-4)
    truth = np.asarray(theirs.dataobj)
    pred = np.asarray(ours.dataobj)
    if size == 96:
        np.testing.assert_array_equal(pred, truth)
    else:
        for value in (1, 2, 3, 4):
            assert _dice(pred == value, truth == value) > 0.9


def test_dicom_case_written_back_onto_the_dicom_grid(tmp_path):
    dataset = resolve_dataset(
        "chaos",
        write_chaos_mr(
            tmp_path / "CHAOS",
            DemoConfig(cases=1, size=(48, 40), slices=6, spacing=(8.0, 8.0, 20.0), t2_spacing=(9.0, 9.0, 24.0)),
        ),
    )
    cache = CaseCache(dataset, image_size=96)
    cache.prepare(progress=False)
    case = cache.load("1")
    restored = case.meta.restore(case.label, is_label=True)
    series = open_layout(dataset).sources("1").images["T1_in"].read()
    assert restored.GetSize() == series.GetSize()
    assert restored.GetOrigin() == pytest.approx(series.GetOrigin())
    assert restored.GetDirection() == pytest.approx(series.GetDirection())
    label = open_layout(dataset).sources("1").labels[0].source.read()
    np.testing.assert_array_equal(to_array(restored), to_array(label))


def test_probabilities_are_restored_with_linear_interpolation(tmp_path):
    dataset = resolve_dataset(str(write_msd(tmp_path)))
    cache = CaseCache(dataset, image_size=100)
    cache.prepare(progress=False)
    case = cache.load("demo_001")
    probabilities = (case.label == 1).astype(np.float32)
    restored = to_array(case.meta.restore(probabilities, is_label=False))
    assert restored.dtype == np.float32
    assert restored.min() >= 0.0 and restored.max() <= 1.0
    assert len(np.unique(restored)) > 2  # interpolated, not nearest
