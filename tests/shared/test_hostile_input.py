"""Bad and hostile input to the data commands: each gives a clear message, a non-zero exit, no traceback,
and nothing is read or written outside the folders it belongs to."""

from __future__ import annotations

import errno
import gzip
import json
import os
import re
import shutil
import stat
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

import shared.cases
from tests.factories import write_msd, write_nnunet
from zeus.cli import app

runner = CliRunner()
_PREPARE_CASE = shared.cases._prepare_case


def _invoke(*args: str):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def _json(folder: Path) -> dict:
    return json.loads((folder / "dataset.json").read_text(encoding="utf-8"))


def _set_json(folder: Path, data: dict) -> None:
    (folder / "dataset.json").write_text(json.dumps(data), encoding="utf-8")


def _edit_json(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        data = _json(folder)
        edit(data)
        _set_json(folder, data)

    return apply


def _outside_entry(folder: Path) -> None:
    outside = folder.parent / "outside.nii.gz"
    shutil.copy(folder / "imagesTr" / "demo_001.nii.gz", outside)
    data = _json(folder)
    data["training"][0]["image"] = "../../../../../../../../" + str(outside).lstrip("/")
    _set_json(folder, data)


def _absolute_entry(folder: Path) -> None:
    outside = folder.parent / "outside.nii.gz"
    shutil.copy(folder / "imagesTr" / "demo_001.nii.gz", outside)
    data = _json(folder)
    data["training"][0]["image"] = str(outside)
    _set_json(folder, data)


def _symlink_out(folder: Path) -> None:
    outside = folder.parent / "elsewhere.nii.gz"
    shutil.copy(folder / "imagesTr" / "demo_001.nii.gz", outside)
    data = _json(folder)
    del data["training"]
    _set_json(folder, data)
    (folder / "imagesTr" / "demo_009.nii.gz").symlink_to(outside)


def _dots_name(folder: Path) -> None:
    shutil.copy(folder / "imagesTr" / "demo_001.nii.gz", folder / "imagesTr" / "...nii.gz")
    data = _json(folder)
    data["training"][0]["image"] = "./imagesTr/...nii.gz"  # case id ".."
    _set_json(folder, data)


def _same_file_name(folder: Path) -> None:
    (folder / "other").mkdir()
    shutil.copy(folder / "imagesTr" / "demo_001.nii.gz", folder / "other" / "demo_001.nii.gz")
    data = _json(folder)
    data["training"][1]["image"] = "./other/demo_001.nii.gz"
    _set_json(folder, data)


MSD_CASES = {
    "modality is a list": (_edit_json(lambda d: d.update(modality=["T1", "T2"])), "'modality' must map integer"),
    "label keys are not integers": (
        _edit_json(lambda d: d.update(labels={"zero": "background", "one": "liver"})),
        "'labels' must map integer",
    ),
    "training entry without image": (
        _edit_json(lambda d: d["training"][0].pop("image")),
        "training entry 0 must be an object with an 'image'",
    ),
    "training is a list of strings": (
        _edit_json(lambda d: d.update(training=["imagesTr/demo_001.nii.gz"])),
        "training entry 0 must be an object with an 'image'",
    ),
    "training entry climbs out of the root": (_outside_entry, "leads outside"),
    "training entry is an absolute path": (_absolute_entry, "leads outside"),
    "symbolic link out of the root": (_symlink_out, "leads outside"),
    "an image named ...nii.gz": (_dots_name, "is not a safe name"),
    "two entries with the same file name": (_same_file_name, "have the same file name"),
}


@pytest.mark.parametrize("case", sorted(MSD_CASES))
def test_a_bad_msd_dataset_json_is_refused_clearly(case, tmp_path):
    folder = write_msd(tmp_path / "data")
    mutate, message = MSD_CASES[case]
    mutate(folder)
    for command in (("data", "check", folder), ("data", "prepare", folder, "--workers", "1")):
        result = _invoke(*command)
        assert result.exit_code != 0 and message in result.output, (command, result.output)
    assert not list((tmp_path / "zeus_home").rglob("image.npz"))  # nothing was cached


NNUNET_CASES = {
    "channel keys are not integers": (
        _edit_json(lambda d: d.update(channel_names={"first": "T1_in"})),
        "'channel_names' must map integer",
    ),
    "no labels": (_edit_json(lambda d: d.pop("labels")), "needs 'labels'"),
    "label values are not integers": (
        _edit_json(lambda d: d.update(labels={"background": 0, "liver": "one"})),
        "label values must be integers",
    ),
    "a stray file in imagesTr": (
        lambda folder: shutil.copy(folder / "imagesTr" / "tiny_001_0000.nii.gz", folder / "imagesTr" / "readme.nii.gz"),
        "not an nnU-Net channel file CASE_XXXX.nii.gz",
    ),
}


@pytest.mark.parametrize("case", sorted(NNUNET_CASES))
def test_a_bad_nnunet_dataset_is_refused_clearly(case, tmp_path):
    folder = write_nnunet(tmp_path / "data")
    mutate, message = NNUNET_CASES[case]
    mutate(folder)
    result = _invoke("data", "check", folder)
    assert result.exit_code != 0 and message in result.output, result.output
    if case == "a stray file in imagesTr":
        assert "readme.nii.gz" in result.output


@pytest.mark.parametrize("case", ["/abs/path/x", "../../x", "unknown"])
def test_case_options_must_name_cases_of_the_dataset(case, tmp_path):
    folder = write_msd(tmp_path / "data")
    for command in ("check", "prepare", "fingerprint"):
        extra = ("--json", tmp_path / "fp.json") if command == "fingerprint" else ()
        result = _invoke("data", command, folder, "--case", case, *extra)
        assert result.exit_code == 2 and f"cases [{case!r}] are not in" in result.output, result.output
    assert not Path(f"{case}_0000.nii.gz").exists() and not (tmp_path / "fp.json").exists()


def test_a_missing_dataset_folder_says_it_does_not_exist(tmp_path):
    result = _invoke("data", "check", tmp_path / "no" / "such" / "folder")
    assert result.exit_code == 2 and "does not exist" in result.output and "unknown dataset" not in result.output


def _poison(path: Path, value: float, count: int = 5) -> None:
    image = sitk.ReadImage(str(path), sitk.sitkFloat32)
    array = sitk.GetArrayFromImage(image)
    array.reshape(-1)[:count] = value
    out = sitk.GetImageFromArray(array, isVector=False)
    out.CopyInformation(image)
    sitk.WriteImage(out, str(path))


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_voxels_are_reported_and_refused(value, tmp_path):
    folder = write_nnunet(tmp_path / "data")
    _poison(folder / "imagesTr" / "tiny_001_0001.nii.gz", value)
    checked = _invoke("data", "check", folder)
    assert checked.exit_code == 1 and "infinite voxel" in checked.output and "tiny_001_0001" in checked.output
    assert ("5 NaN" if np.isnan(value) else "0 NaN and 5 infinite") in checked.output
    prepared = _invoke("data", "prepare", folder, "--workers", "1")
    assert prepared.exit_code == 1 and "infinite voxel" in prepared.output and "tiny_001_0001" in prepared.output
    assert "1 built" in prepared.output  # the healthy case is prepared; the poisoned one is not


def test_output_paths_are_checked_before_any_work(tmp_path, monkeypatch):
    folder = write_msd(tmp_path / "data")
    (tmp_path / "a_folder").mkdir()
    result = _invoke("data", "fingerprint", folder, "--json", tmp_path / "a_folder")
    assert result.exit_code == 2 and "is a folder" in result.output
    home_file = tmp_path / "home_is_a_file"
    home_file.write_text("not a folder", encoding="utf-8")
    monkeypatch.setenv("ZEUS_HOME", str(home_file))
    result = _invoke("data", "prepare", folder, "--workers", "1")
    assert result.exit_code == 3 and "a file stands where a folder is needed" in result.output
    assert str(home_file) in result.output


def _killed_on_the_second_case(dataset, size, folder, case_id, *rest):
    if case_id.endswith("002"):
        os._exit(9)  # what the out-of-memory killer leaves: the process is gone, no exception
    return _PREPARE_CASE(dataset, size, folder, case_id, *rest)


def test_a_preparation_process_killed_for_memory_is_a_clear_error(tmp_path, monkeypatch):
    import shared.cases

    monkeypatch.setattr(shared.cases, "_prepare_case", _killed_on_the_second_case)  # forked workers inherit it
    fork = partial(ProcessPoolExecutor, mp_context=get_context("fork"))
    monkeypatch.setattr(shared.cases, "ProcessPoolExecutor", fork)
    folder = write_nnunet(tmp_path / "data")
    result = _invoke("data", "prepare", folder, "--workers", "2")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "stopped abruptly (killed for lack of memory?)" in result.output
    # the case in the other process may have been lost with the pool, or finished before it broke
    assert re.search(r"were not: (tiny_001, )?tiny_002\.", result.output) and "fewer than --workers 2" in result.output


def test_a_full_disk_during_prepare_is_a_clear_error_and_leaves_no_partial_file(tmp_path, monkeypatch):
    import shared.cases

    folder = write_msd(tmp_path / "data")

    def full(path, **arrays):
        Path(path).write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(shared.cases, "_savez", full)
    result = _invoke("data", "prepare", folder, "--workers", "1")
    assert result.exit_code == 3 and "No space left on device" in result.output and "free some disk" in result.output
    home = tmp_path / "zeus_home"
    assert not list(home.rglob("image.npz")) and not list(home.rglob("meta.json"))
    assert not [p for p in home.rglob("*") if p.is_file() and ".tmp" in p.name]


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("damaged", ["meta.json", "image.npz", "label.npz"])
def test_a_damaged_cache_entry_is_detected_and_rebuilt(damaged, tmp_path):
    folder = write_msd(tmp_path / "data")
    assert _invoke("data", "prepare", folder, "--workers", "1").exit_code == 0
    entry = next((tmp_path / "zeus_home" / "preprocessed").rglob("demo_001"))
    _truncate(entry / damaged)
    result = _invoke("data", "prepare", folder, "--workers", "1")
    assert result.exit_code == 0 and "1 built, 1 already cached" in result.output, result.output
    from shared.cases import CaseCache
    from shared.manifest import resolve_dataset

    case = CaseCache(resolve_dataset(str(folder))).load("demo_001")
    assert case.image.shape[0] == 3 and case.label is not None


def test_a_damaged_entry_read_directly_names_the_file(tmp_path):
    from shared.cases import CaseCache
    from shared.errors import ZeusError
    from shared.manifest import resolve_dataset

    dataset = resolve_dataset(str(write_msd(tmp_path / "data")))
    cache = CaseCache(dataset)
    cache.prepare(progress=False)
    _truncate(cache.case_dir("demo_001") / "image.npz")
    with pytest.raises(ZeusError, match=r"image\.npz is damaged .*run `zeus data prepare"):
        cache.load("demo_001")
    (cache.case_dir("demo_002") / "meta.json").write_text('{"case_id": "demo_0', encoding="utf-8")
    with pytest.raises(ZeusError, match=r"meta\.json is damaged"):
        cache.meta("demo_002")


def test_written_files_follow_the_users_umask(tmp_path):
    from shared.atomic import write_json

    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        os.umask(0o077)
        write_json(tmp_path / "b.json", {"x": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b.json").stat().st_mode) == 0o600


def test_a_text_file_named_nii_gz_is_not_an_image(tmp_path):
    from shared.errors import ZeusError
    from shared.manifest import resolve_manifest
    from shared.readers.scan import scan_sources

    fake = tmp_path / "notes.nii.gz"
    fake.write_bytes(gzip.compress(b"just some text"))
    with pytest.raises(ZeusError, match="cannot be read as NIfTI"):
        scan_sources(resolve_manifest("demo"), [str(fake)])
    with pytest.raises(ZeusError, match="is not a safe name"):
        scan_sources(resolve_manifest("demo"), [str(fake)], case_id="../../escaped")


def test_non_finite_voxels_in_other_image_formats_are_refused_too(tmp_path):
    from shared.errors import DataError
    from shared.readers.base import read_image_file

    array = np.zeros((4, 4, 4), np.float32)
    array[0, 0, :3] = np.inf
    path = tmp_path / "scan.mha"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    with pytest.raises(DataError, match=r"0 NaN and 3 infinite voxel"):
        read_image_file(path, "x")


def _rgb(path: Path) -> None:
    grey = sitk.ReadImage(str(path), sitk.sitkUInt8)
    rgb = sitk.Compose(grey, grey, grey)
    sitk.WriteImage(rgb, str(path))


def _complex(path: Path) -> None:
    real = sitk.ReadImage(str(path), sitk.sitkFloat32)
    sitk.WriteImage(sitk.RealAndImaginaryToComplex(real, real), str(path))


@pytest.mark.parametrize(("damage", "found"), [(_rgb, "3 components"), (_complex, "complex")])
def test_an_image_that_is_not_grey_values_is_refused_by_check_and_prepare(damage, found, tmp_path):
    folder = write_nnunet(tmp_path / "data")
    damage(folder / "imagesTr" / "tiny_001_0001.nii.gz")
    for command in ("check", "prepare"):
        result = _invoke("data", command, folder, *(["--workers", "2"] if command == "prepare" else []))
        assert result.exit_code == 1, result.output
        assert "expected one real grey value per voxel" in result.output and found in result.output
        assert "tiny_001_0001.nii.gz" in result.output
    assert "1 built" in result.output  # the other case is prepared


def test_a_header_promising_a_huge_volume_is_refused_before_its_data_is_read(tmp_path, monkeypatch):
    import nibabel as nib

    folder = write_nnunet(tmp_path / "data")
    path = folder / "imagesTr" / "tiny_001_0001.nii.gz"
    header = nib.load(path).header.copy()
    header.set_data_shape((4096, 4096, 4096))
    header.set_data_dtype(np.uint8)
    with gzip.open(path, "wb") as f:  # a header and a stream of zeros: a bomb would go on for 64 GiB
        f.write(header.binaryblock + bytes(4) + bytes(1 << 20))
    read_image = sitk.ReadImage

    def read_but_not_the_bomb(file, *args, **kwargs):
        assert Path(file) != path, "the bomb's pixel data was read"
        return read_image(file, *args, **kwargs)

    monkeypatch.setattr(sitk, "ReadImage", read_but_not_the_bomb)
    result = _invoke("data", "check", folder)
    assert result.exit_code == 1 and "size [4096, 4096, 4096]" in result.output
    assert "68719476736 voxels, more than ZEUS_MAX_VOXELS" in result.output and "tiny_001_0001" in result.output
    monkeypatch.undo()
    monkeypatch.setenv("ZEUS_MAX_VOXELS", "1000")  # the limit is the user's to raise (or lower)
    result = _invoke("data", "check", folder)
    assert result.exit_code == 1 and "more than ZEUS_MAX_VOXELS (1000)" in result.output
    assert "tiny_002" in result.output  # the healthy case's 11 520 voxels are over this limit too


def test_a_folder_of_scans_groups_channel_files_and_finds_chaos_patients(tmp_path):
    from shared.errors import ZeusError
    from shared.manifest import resolve_manifest
    from shared.readers.scan import is_scan_folder, scans_in_folder

    msd = resolve_manifest("msd_prostate")
    folder = tmp_path / "imagesTs"
    folder.mkdir()
    for name in ("case_2_0001.nii.gz", "case_2_0000.nii.gz", "case_10_0000.nii.gz", "case_10_0001.nii.gz"):
        (folder / name).write_bytes(b"")
    assert is_scan_folder(msd, folder)
    assert scans_in_folder(msd, folder) == [
        [str(folder / "case_2_0000.nii.gz"), str(folder / "case_2_0001.nii.gz")],
        [str(folder / "case_10_0000.nii.gz"), str(folder / "case_10_0001.nii.gz")],
    ]
    chaos = resolve_manifest("chaos")
    test_sets = tmp_path / "Test_Sets"
    for patient in ("3", "11"):
        (test_sets / "MR" / patient / "T2SPIR" / "DICOM_anon").mkdir(parents=True)
    (test_sets / "MR" / "notes").mkdir()
    assert is_scan_folder(chaos, test_sets) and not is_scan_folder(chaos, test_sets / "MR" / "3")
    assert scans_in_folder(chaos, test_sets) == [[str(test_sets / "MR" / "3")], [str(test_sets / "MR" / "11")]]
    with pytest.raises(ZeusError, match="no scans in"):
        scans_in_folder(msd, test_sets)


def test_a_long_gzip_stream_behind_a_small_header_is_not_read_to_its_end(tmp_path, monkeypatch):
    """A gzip bomb whose header states a small size: the truncation check stops where the header's data ends."""
    from shared.readers.base import read_image_file

    folder = write_nnunet(tmp_path / "data")
    path = folder / "imagesTr" / "tiny_001_0001.nii.gz"
    with gzip.open(path, "rb") as f:
        healthy = f.read()
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(healthy + bytes(64 << 20))  # 64 MiB of zeros after the image: a real bomb goes on for gigabytes
    read, counted = gzip.GzipFile.read, []

    def counting_read(self, size=-1):
        chunk = read(self, size)
        counted.append(len(chunk))
        return chunk

    monkeypatch.setattr(gzip.GzipFile, "read", counting_read)
    image = read_image_file(path, "tiny_001")
    assert sum(counted) <= 2 * len(healthy)  # the header (nibabel reads it too) and its data: not the 64 MiB
    assert image.GetSize() == sitk.ReadImage(str(folder / "imagesTr" / "tiny_001_0000.nii.gz")).GetSize()


def _chaos_ct_series(tmp_path: Path) -> tuple[Path, Path]:
    from tests.factories import write_chaos_ct

    root = write_chaos_ct(tmp_path / "CHAOS", n_cases=1)
    patient = root / "Train_Sets" / "CT" / "1"
    return root, patient


def _no_series_read(monkeypatch) -> None:
    def refuse(self):
        raise AssertionError("the series' pixel data was read")

    monkeypatch.setattr(sitk.ImageSeriesReader, "Execute", refuse)


def test_a_dicom_file_promising_a_huge_slice_is_refused_before_the_series_is_read(tmp_path, monkeypatch):
    import pydicom

    from shared.errors import DataError
    from shared.readers.chaos import DicomSeries

    _, patient = _chaos_ct_series(tmp_path)
    files = sorted((patient / "DICOM_anon").iterdir())
    ds = pydicom.dcmread(files[2])
    ds.Rows = ds.Columns = 65535  # 4.3 G pixels promised, a few hundred bytes of pixel data
    ds.save_as(files[2])
    _no_series_read(monkeypatch)
    with pytest.raises(DataError, match=r"size \[65535, 65535, 1\]: 4294836225 voxels, more than ZEUS_MAX_VOXELS"):
        DicomSeries("1", patient / "DICOM_anon").read()


def test_a_dicom_series_of_too_many_voxels_in_all_is_refused_before_it_is_read(tmp_path, monkeypatch):
    from shared.errors import DataError
    from shared.readers.chaos import DicomSeries

    _, patient = _chaos_ct_series(tmp_path)  # 6 slices of 48 x 40 = 1920 voxels each
    monkeypatch.setenv("ZEUS_MAX_VOXELS", "5000")
    _no_series_read(monkeypatch)
    with pytest.raises(DataError, match=r"the series' 6 DICOM files: 11520 voxels, more than ZEUS_MAX_VOXELS \(5000\)"):
        DicomSeries("1", patient / "DICOM_anon").read()
    monkeypatch.undo()  # the real reader back: within the limit the series reads
    monkeypatch.setenv("ZEUS_MAX_VOXELS", "20000")
    assert DicomSeries("1", patient / "DICOM_anon").read().GetSize() == (48, 40, 6)


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG that states its size and holds no pixels: what a decompression bomb shows before its data."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))


@pytest.mark.parametrize(("size", "found"), [((40000, 40000), "exceeds limit"), ((41, 48), "mask is 48x41")])
def test_a_png_mask_of_the_wrong_size_is_refused_before_its_pixels_are_decoded(size, found, tmp_path):
    from shared.errors import DataError
    from shared.manifest import resolve_dataset
    from shared.readers import open_layout

    root, patient = _chaos_ct_series(tmp_path)
    mask = sorted((patient / "Ground").iterdir())[3]
    _png_header_only(mask, *size)  # decoding it would fail (no pixel data): only its header may be read
    sources = open_layout(resolve_dataset("chaos_ct", root)).sources("1")
    with pytest.raises(DataError, match=found) as error:
        sources.labels[0].source.read()
    assert mask.name in str(error.value)
