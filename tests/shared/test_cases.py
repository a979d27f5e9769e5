from __future__ import annotations

import os
import shutil

import nibabel as nib
import numpy as np
import pytest

from shared import atomic
from shared.cases import CaseCache
from shared.manifest import resolve_dataset
from tests.factories import write_msd


@pytest.fixture
def dataset(tmp_path):
    return resolve_dataset(str(write_msd(tmp_path)))


def _mtimes(cache: CaseCache) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in cache.folder.rglob("*") if p.is_file()}


def test_cache_entry_contents(dataset, zeus_home):
    cache = CaseCache(dataset, image_size=64)
    summary = cache.prepare(progress=False)
    assert summary.built == ["demo_001", "demo_002"] and not summary.problems
    assert cache.folder == zeus_home / "preprocessed" / "zeusdemo" / "64px"
    case = cache.load("demo_002")
    assert case.image.shape == (3, 6, 64, 64) and case.image.dtype == np.float32
    assert case.image.min() >= 0.0 and case.image.max() <= 1.0
    assert case.label.shape == (6, 64, 64) and set(np.unique(case.label)) == {0, 1, 2, 3, 4}
    assert case.meta.modalities == ("T1_in", "T1_out", "T2")
    assert case.meta.transform.resized == (53, 64)  # 40 x 48 native slice, aspect kept
    assert not list(cache.folder.rglob("*.tmp"))


def test_second_prepare_does_no_work_and_overwrite_rebuilds(dataset):
    cache = CaseCache(dataset, image_size=64)
    cache.prepare(progress=False)
    before = _mtimes(cache)
    again = cache.prepare(progress=False)
    assert again.built == [] and again.skipped == ["demo_001", "demo_002"]
    assert _mtimes(cache) == before
    rebuilt = cache.prepare(["demo_001"], overwrite=True, progress=False)
    assert rebuilt.built == ["demo_001"]
    changed = {k for k, v in _mtimes(cache).items() if before[k] != v}
    assert changed and all("demo_001" in k for k in changed)


def test_a_changed_source_file_is_rebuilt(dataset):
    cache = CaseCache(dataset, image_size=64)
    cache.prepare(progress=False)
    image_file = dataset.root / "imagesTr" / "demo_002.nii.gz"
    image = nib.load(image_file)
    voxels = np.asanyarray(image.dataobj).copy()
    voxels.flat[0] += 1
    nib.save(nib.Nifti1Image(voxels, image.affine, image.header), image_file)
    assert cache.prepare(progress=False).built == ["demo_002"]


def test_a_copied_or_touched_dataset_keeps_its_cache(dataset, tmp_path):
    """The signature is the files' names and contents: a fresh copy of the data (new paths, new mtimes) or a
    touched file is the same data and must not re-encode anything."""
    cache = CaseCache(dataset, image_size=64)
    cache.prepare(progress=False)
    before = _mtimes(cache)
    image_file = dataset.root / "imagesTr" / "demo_002.nii.gz"
    os.utime(image_file, ns=(image_file.stat().st_atime_ns, image_file.stat().st_mtime_ns + 10**9))
    copy = tmp_path / "copy"
    shutil.copytree(dataset.root, copy)
    for moved in (dataset, resolve_dataset(str(copy))):
        again = CaseCache(moved, image_size=64).prepare(progress=False)
        assert again.built == [] and again.skipped == ["demo_001", "demo_002"]
    assert _mtimes(cache) == before


def test_images_prepare_without_opening_labels(dataset):
    for label in (dataset.root / "labelsTr").iterdir():
        label.unlink()
    cache = CaseCache(dataset, image_size=64)
    summary = cache.prepare(with_labels=False, progress=False)
    assert summary.built == ["demo_001", "demo_002"] and not summary.problems
    assert cache.load("demo_001", with_label=False).label is None
    assert not (cache.case_dir("demo_001") / "label.npz").exists()


def test_labels_are_added_to_an_image_only_entry(dataset):
    cache = CaseCache(dataset, image_size=64)
    cache.prepare(with_labels=False, progress=False)
    image_mtime = (cache.case_dir("demo_001") / "image.npz").stat().st_mtime_ns
    assert cache.prepare(progress=False).built == ["demo_001", "demo_002"]
    assert (cache.case_dir("demo_001") / "image.npz").stat().st_mtime_ns == image_mtime  # images not redone
    assert cache.load("demo_001").label is not None


def test_a_crash_while_writing_leaves_no_partial_entry(dataset, monkeypatch):
    cache = CaseCache(dataset, image_size=64)

    def crash(path, obj):
        raise KeyboardInterrupt

    monkeypatch.setattr("shared.cases.write_json", crash)
    with pytest.raises(KeyboardInterrupt):
        cache.prepare(["demo_001"], progress=False)
    assert cache.cached_case_ids() == []  # meta.json is the commit marker: never written
    assert not list(cache.folder.rglob("*.tmp"))
    monkeypatch.undo()
    assert cache.prepare(["demo_001"], progress=False).built == ["demo_001"]


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "x.json"
    atomic.write_json(target, {"v": 1})

    def fail(tmp):
        tmp.write_text("half", encoding="utf-8")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic.write_atomic(target, fail)
    assert target.read_text(encoding="utf-8").strip().endswith("}") and '"v": 1' in target.read_text(encoding="utf-8")
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_parallel_prepare_matches_serial(dataset, tmp_path):
    serial = CaseCache(dataset, image_size=64, root=tmp_path / "serial")
    parallel = CaseCache(dataset, image_size=64, root=tmp_path / "parallel")
    serial.prepare(progress=False)
    assert sorted(parallel.prepare(workers=2, progress=False).built) == ["demo_001", "demo_002"]
    for case_id in ("demo_001", "demo_002"):
        np.testing.assert_array_equal(serial.load(case_id).image, parallel.load(case_id).image)
