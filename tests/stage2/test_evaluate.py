from __future__ import annotations

import csv
import json
import math
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from shared.errors import DataError, ZeusError
from shared.splits import load_splits
from stage2_segment.evaluate import evaluate_files
from zeus.cli import app

SPACING = (0.8, 0.8, 2.5)  # x, y, z as ITK stores it
TARGETS = {"liver": 1, "spleen": 4}


def _write(path, array: np.ndarray, spacing=SPACING, origin=(10.0, -5.0, 3.0)) -> None:
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


def _pair(tmp_path):
    """Case a: liver shifted by one slice, spleen missed. Case b: liver perfect, spleen in neither."""
    gt_a, pred_a = np.zeros((8, 16, 16), np.uint8), np.zeros((8, 16, 16), np.uint8)
    gt_a[2:6, 4:9, 4:9], pred_a[3:7, 4:9, 4:9] = 1, 1
    gt_a[1:3, 10:14, 10:14] = 4
    gt_b = np.zeros((8, 16, 16), np.uint8)
    gt_b[1:4, 2:6, 2:6] = 1
    for name, gt, pred in (("a", gt_a, pred_a), ("b", gt_b, gt_b)):
        _write(tmp_path / "gt" / f"{name}.nii.gz", gt)
        _write(tmp_path / "pred" / f"{name}.nii.gz", pred)
    return tmp_path / "pred", tmp_path / "gt"


def test_folders_are_scored_per_case_class_and_slice(tmp_path):
    pred, gt = _pair(tmp_path)
    summary = evaluate_files(pred, gt, tmp_path / "out", TARGETS)
    rows = {(r["case"], r["class"]): r for r in csv.DictReader((tmp_path / "out" / "cases.csv").open(encoding="utf-8"))}
    assert float(rows["a", "liver"]["dice"]) == pytest.approx(0.75)
    assert float(rows["a", "liver"]["hd95"]) == pytest.approx(2.5)  # one slice of 2.5 mm
    assert float(rows["a", "spleen"]["dice"]) == 0.0
    assert float(rows["a", "spleen"]["hd95"]) == pytest.approx(np.linalg.norm([8 * 2.5, 16 * 0.8, 16 * 0.8]))
    assert float(rows["b", "liver"]["dice"]) == 1.0 and float(rows["b", "liver"]["hd95"]) == 0.0
    assert math.isnan(float(rows["b", "spleen"]["dice"]))  # undefined: in neither
    liver = summary.classes["liver"].volume["dice"]
    assert (liver.mean, liver.std, liver.n) == (pytest.approx(0.875), pytest.approx(0.125), 2)
    spleen = summary.classes["spleen"]
    assert spleen.volume["dice"].n == 1 and spleen.empty_cases == 1
    assert summary.foreground_mean["volume"]["dice"] == pytest.approx((0.875 + 0.0) / 2)
    slices = list(csv.DictReader((tmp_path / "out" / "slices.csv").open(encoding="utf-8")))
    liver_a = {int(r["slice"]): float(r["dice"]) for r in slices if r["case"] == "a" and r["class"] == "liver"}
    assert liver_a == {2: 0.0, 3: 1.0, 4: 1.0, 5: 1.0, 6: 0.0}  # only slices holding the class in either mask
    assert json.loads((tmp_path / "out" / "summary.json").read_text(encoding="utf-8"))["cases"] == 2


def test_without_a_manifest_classes_are_the_values_in_the_ground_truth(tmp_path):
    pred, gt = _pair(tmp_path)
    summary = evaluate_files(pred / "a.nii.gz", gt / "a.nii.gz", tmp_path / "out")
    assert list(summary.classes) == ["label 1", "label 4"]


def test_missing_prediction_and_grid_mismatch_are_clear_errors(tmp_path):
    pred, gt = _pair(tmp_path)
    (pred / "b.nii.gz").unlink()
    with pytest.raises(DataError, match="b: no prediction with this file name"):
        evaluate_files(pred, gt, tmp_path / "out", TARGETS)
    _write(pred / "b.nii.gz", np.zeros((8, 16, 16)), spacing=(1.0, 1.0, 2.5))
    with pytest.raises(DataError, match="differs from the ground truth grid"):
        evaluate_files(pred, gt, tmp_path / "out", TARGETS)
    _write(pred / "b.nii.gz", np.full((8, 16, 16), 7))
    with pytest.raises(DataError, match=r"label values \[7\] are not in the manifest"):
        evaluate_files(pred, gt, tmp_path / "out", TARGETS)
    with pytest.raises(ZeusError, match="both be image files or both folders"):
        evaluate_files(pred / "a.nii.gz", gt, tmp_path / "out", TARGETS)


def test_cli_evaluates_files_and_exits_non_zero_on_bad_input(tmp_path):
    pred, gt = _pair(tmp_path)
    result = CliRunner().invoke(app, ["evaluate", "--pred", str(pred), "--gt", str(gt), "--dataset", "demo"])
    assert result.exit_code == 0, result.output
    assert "liver" in result.output and "0.875 ± 0.125" in result.output
    assert (pred / "evaluation" / "summary.json").is_file()
    result = CliRunner().invoke(app, ["evaluate", "--pred", str(pred / "x.nii.gz"), "--gt", str(gt)])
    assert result.exit_code == 2 and "both be image files or both folders" in result.output


def test_a_run_is_evaluated_on_its_test_cases_in_the_original_geometry(evaluated_run, monkeypatch, tmp_path):
    workspace, dataset, run = evaluated_run
    monkeypatch.setenv("ZEUS_HOME", str(workspace))
    folder = run / "evaluation" / "test"
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    (test_case,) = load_splits(dataset.name).test
    assert summary["source"]["case_ids"] == [test_case]
    prediction = sitk.ReadImage(str(folder / "predictions" / f"{test_case}.nii.gz"))
    truth = sitk.ReadImage(str(dataset.root / "labelsTr" / f"{test_case}.nii.gz"))
    assert prediction.GetSize() == truth.GetSize() and prediction.GetSpacing() == truth.GetSpacing()
    assert prediction.GetOrigin() == truth.GetOrigin() and prediction.GetDirection() == truth.GetDirection()
    assert set(np.unique(sitk.GetArrayFromImage(prediction))) <= {0, 1, 2, 3, 4}
    # scoring the written files with the file evaluator gives the same numbers
    shutil.copy(dataset.root / "labelsTr" / f"{test_case}.nii.gz", tmp_path / f"{test_case}.nii.gz")
    again = evaluate_files(folder / "predictions", tmp_path, tmp_path / "again", dataset.manifest.targets)
    for name, scores in summary["classes"].items():
        assert again.to_json()["classes"][name]["volume"] == scores["volume"]
    assert (folder / "model_slices" / f"{test_case}.npz").is_file()
