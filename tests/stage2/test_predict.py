from __future__ import annotations

import shutil

import numpy as np
import pyarrow.parquet as pq
import SimpleITK as sitk
from typer.testing import CliRunner

from shared.instructions import PRESETS
from shared.splits import load_splits
from tests.factories import private_workspace
from zeus.cli import app

TAG = PRESETS["template"].tag


def test_predict_a_new_scan_to_nifti_on_its_own_grid(evaluated_run, tmp_path, monkeypatch):
    workspace, dataset, run = evaluated_run
    private_workspace(workspace, tmp_path / "home")
    monkeypatch.setenv("ZEUS_HOME", str(tmp_path / "home"))
    run = tmp_path / "home" / run.relative_to(workspace)
    (case,) = load_splits(dataset.name).test
    scan = tmp_path / "scan" / "patient_x.nii.gz"
    scan.parent.mkdir()
    shutil.copy(dataset.root / "imagesTr" / f"{case}.nii.gz", scan)

    args = ["predict", "--run", str(run), "--input", str(scan), "--output", str(tmp_path / "out"), "--probabilities"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output

    label = sitk.ReadImage(str(tmp_path / "out" / "patient_x.nii.gz"))
    reference = sitk.ReadImage(str(scan))  # 4-D: its first three axes are the reference grid
    assert label.GetSize() == reference.GetSize()[:3]
    np.testing.assert_allclose(label.GetSpacing(), reference.GetSpacing()[:3])
    np.testing.assert_allclose(label.GetOrigin(), reference.GetOrigin()[:3])
    np.testing.assert_allclose(
        np.asarray(label.GetDirection()).reshape(3, 3), np.asarray(reference.GetDirection()).reshape(4, 4)[:3, :3]
    )
    # the same model on the same images: identical to the evaluation's prediction of that case
    evaluated = sitk.ReadImage(str(run / "evaluation" / "test" / "predictions" / f"{case}.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(label), sitk.GetArrayFromImage(evaluated))
    probabilities = np.stack(
        [
            sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / f"patient_x_prob_{name}.nii.gz")))
            for name in ("liver", "right_kidney", "left_kidney", "spleen")
        ]
    )
    assert probabilities.dtype == np.float32 and np.unique(probabilities).size > 100  # probabilities, not masks
    assert probabilities.min() >= 0 and probabilities.sum(axis=0).max() <= 1 + 1e-5
    # its stage-1 instructions are cached in their own namespace, never among the dataset's cases
    shard = tmp_path / "home" / "instructions" / f"{dataset.name}-scans" / TAG / "patient_x.parquet"
    assert pq.read_metadata(shard).num_rows == 3 * (3 + 1) * 4  # slices x (modalities + union) x targets
    assert not (tmp_path / "home" / "instructions" / dataset.name / TAG / "patient_x.parquet").exists()


def test_predict_refuses_a_scan_with_other_modalities(evaluated_run, tmp_path, monkeypatch):
    workspace, _, run = evaluated_run
    monkeypatch.setenv("ZEUS_HOME", str(workspace))
    two_channels = sitk.JoinSeries([sitk.Image(8, 8, 4, sitk.sitkFloat32)] * 2)
    sitk.WriteImage(two_channels, str(tmp_path / "two.nii.gz"))
    args = ["predict", "--run", str(run), "--input", str(tmp_path / "two.nii.gz"), "--output", str(tmp_path / "out")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "has 2 channel(s)" in result.output and "trained on 3 modalities" in result.output
    assert not (tmp_path / "out").exists()


def test_predict_a_folder_of_scans_loads_once_and_skips_what_exists(evaluated_run, tmp_path, monkeypatch):
    workspace, dataset, run = evaluated_run
    private_workspace(workspace, tmp_path / "home")
    monkeypatch.setenv("ZEUS_HOME", str(tmp_path / "home"))
    run = tmp_path / "home" / run.relative_to(workspace)
    images = tmp_path / "imagesTs"
    images.mkdir()
    for case in sorted(p.name for p in (dataset.root / "imagesTr").glob("*.nii.gz"))[:2]:
        shutil.copy(dataset.root / "imagesTr" / case, images / f"new_{case}")
    (images / ".hidden.nii.gz").write_bytes(b"")  # macOS fork-style files are not scans
    args = ["predict", "--run", str(run), "--input", str(images), "--output", str(tmp_path / "out")]

    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == sorted(p.name for p in images.glob("new_*.nii.gz"))
    assert "2 file(s) written" in first.output and "0 scan(s) skipped" in first.output
    stamp = (tmp_path / "out" / written[0]).stat().st_mtime_ns

    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and "0 file(s) written" in again.output and "2 scan(s) skipped" in again.output
    assert (tmp_path / "out" / written[0]).stat().st_mtime_ns == stamp
    redo = CliRunner().invoke(app, [*args, "--overwrite"])
    assert redo.exit_code == 0 and "2 file(s) written" in redo.output

    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(app, ["predict", "--run", str(run), "--input", str(empty), "--output", str(tmp_path)])
    assert result.exit_code == 2 and "no scans in" in result.output
