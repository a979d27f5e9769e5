from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.data import get_testdata_file

from shared.demo import MODALITIES, centred_grid
from shared.geometry import Geometry, to_array, to_canonical
from shared.manifest import resolve_dataset
from shared.readers import open_layout
from shared.readers.chaos import DicomSeries
from shared.registration import coregister
from tests.factories import TINY, phantoms, write_chaos_ct, write_chaos_mr, write_msd, write_nnunet


def _canonical_truth(phantom, config=TINY, direction=None) -> np.ndarray:
    """The phantom's label on the canonical (identity-direction) T1 grid, computed analytically."""
    grid = centred_grid((*config.size, config.slices), config.spacing, direction or (1, 0, 0, 0, 1, 0, 0, 0, 1))
    return phantom.label(grid)


def test_msd_4d_reader_gives_each_channel_and_the_label(tmp_path):
    dataset = resolve_dataset(str(write_msd(tmp_path)))
    layout = open_layout(dataset)
    assert dataset.manifest.layout == "msd"
    assert layout.case_ids() == ["demo_001", "demo_002"]
    sources = layout.sources("demo_001")
    images = {name: src.read() for name, src in sources.images.items()}
    assert list(images) == list(MODALITIES)
    # Each channel keeps the file's 3-D geometry (RAS-stored: x and y point to -L, -P).
    for image in images.values():
        assert image.GetSize() == (48, 40, 6)
        assert Geometry.of(image).direction == (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
        assert image.GetSpacing() == (8.0, 8.0, 20.0)
    # Channels differ in contrast: the liver is brighter than the kidneys on T1, darker on T2.
    label = to_array(sources.labels[0].source.read())
    t1, t2 = to_array(images["T1_in"]), to_array(images["T2"])
    assert t1[label == 1].mean() > t1[label == 2].mean()
    assert t2[label == 1].mean() < t2[label == 2].mean()


def test_msd_reader_ignores_macos_fork_files_when_listing(tmp_path):
    folder = write_msd(tmp_path)
    (folder / "dataset.json").unlink()  # force the folder scan
    (folder / "imagesTr" / "._demo_001.nii.gz").write_bytes(b"\x00\x05\x16\x07")
    layout = open_layout(resolve_dataset("demo", folder))
    assert layout.case_ids() == ["demo_001", "demo_002"]


def test_nnunet_reader_matches_msd_content(tmp_path):
    msd = coregister(
        open_layout(resolve_dataset(str(write_msd(tmp_path / "a")))).sources("demo_001"),
        resolve_dataset(str(tmp_path / "a" / "Task90_ZeusDemo")).manifest,
        with_label=True,
    )
    dataset = resolve_dataset(str(write_nnunet(tmp_path / "b")))
    assert dataset.manifest.layout == "nnunet_v2"
    assert dataset.name == "dataset901_tiny"
    layout = open_layout(dataset)
    assert layout.case_ids() == ["tiny_001", "tiny_002"]
    nnunet = coregister(layout.sources("tiny_001"), dataset.manifest, with_label=True)
    np.testing.assert_array_equal(nnunet.label, msd.label)
    for m in ("T1_in", "T1_out"):  # same phantom, same grid, same noise seed
        np.testing.assert_array_equal(nnunet.images[m], msd.images[m])


def test_chaos_mr_reader_pairs_masks_with_files_in_name_order(tmp_path):
    root = write_chaos_mr(tmp_path / "CHAOS")
    dataset = resolve_dataset("chaos", root)
    layout = open_layout(dataset)
    assert layout.case_ids() == ["1", "2"]
    sources = layout.sources("1")
    # In- and opposed-phase share the T1-DUAL mask; T2-SPIR has its own.
    assert [label.modalities for label in sources.labels] == [("T1_in", "T1_out"), ("T2",)]
    series = sources.images["T1_in"]
    assert isinstance(series, DicomSeries)
    # The demo writes file names top-down, so position order is the reverse of name order.
    assert series.order() == list(range(TINY.slices))[::-1]
    label = sources.labels[0].source.read()
    assert Geometry.of(label).matches(Geometry.of(series.read()))
    np.testing.assert_array_equal(to_array(label), _canonical_truth(phantoms()[0]))
    t2_label = to_array(sources.labels[1].source.read())
    assert t2_label.shape == sources.images["T2"].read().GetSize()[::-1]
    assert set(np.unique(t2_label)) == {0, 1, 2, 3, 4}


def test_chaos_mr_and_msd_give_the_same_case(tmp_path):
    chaos = resolve_dataset("chaos", write_chaos_mr(tmp_path / "CHAOS"))
    msd = resolve_dataset(str(write_msd(tmp_path / "msd")))
    a = coregister(open_layout(chaos).sources("1"), chaos.manifest, with_label=True)
    b = coregister(open_layout(msd).sources("demo_001"), msd.manifest, with_label=True)
    assert a.grid.matches(b.grid)
    np.testing.assert_array_equal(a.label, b.label)


def test_chaos_ct_reader_keeps_hounsfield_units_and_binary_liver(tmp_path):
    dataset = resolve_dataset("chaos_ct", write_chaos_ct(tmp_path / "CHAOS", hu_liver=60))
    layout = open_layout(dataset)
    case = coregister(layout.sources("1"), dataset.manifest, with_label=True)
    ct = case.images["CT"]
    assert set(np.unique(case.label)) == {0, 1}
    assert np.all(ct[case.label == 1] == 60)
    assert ct.min() == -1000
    np.testing.assert_array_equal(case.label, (_canonical_truth(phantoms()[0], TINY) == 1).astype(np.uint8))


def test_dicom_series_reads_a_real_scanner_file(tmp_path):
    """pydicom's CT_small.dcm, a real CT slice: SimpleITK's series reader gives pydicom's HU values."""
    folder = tmp_path / "series"
    folder.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), folder / "CT_small.dcm")
    image = DicomSeries("real", folder).read()
    ds = pydicom.dcmread(folder / "CT_small.dcm")
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(to_array(image)[0], hu)
    assert image.GetSpacing()[:2] == pytest.approx([float(s) for s in ds.PixelSpacing][::-1])
    assert image.GetOrigin() == pytest.approx([float(v) for v in ds.ImagePositionPatient])


def test_canonical_orientation_flips_axes_and_keeps_physical_content(tmp_path):
    grid = centred_grid((48, 40, 6), (8.0, 8.0, 20.0), (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
    label = phantoms()[0].label(grid)
    stored = sitk.GetImageFromArray(label)
    grid.stamp(stored)
    canonical = to_canonical(stored)
    assert canonical.GetDirection() == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    # The same physical point holds the same label value before and after.
    for index in [(0, 0, 0), (10, 30, 2), (47, 39, 5)]:
        point = stored.TransformIndexToPhysicalPoint(index)
        assert canonical[canonical.TransformPhysicalPointToIndex(point)] == stored[index]
    # Patient's right (negative x) is on the left of each canonical slice: the liver's columns come first.
    cols = np.nonzero(to_array(canonical) == 1)[2]
    spleen_cols = np.nonzero(to_array(canonical) == 4)[2]
    assert cols.mean() < spleen_cols.mean()


def test_missing_chaos_layout_names_the_expected_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(Exception, match="Train_Sets/MR"):
        open_layout(resolve_dataset("chaos", tmp_path / "empty"))


def test_root_resolution_uses_zeus_data_root(tmp_path, monkeypatch):
    root = write_chaos_mr(tmp_path / "data" / "CHAOS")
    monkeypatch.setenv("ZEUS_DATA_ROOT", str(Path(root).parent))
    assert resolve_dataset("chaos").root == root
