from __future__ import annotations

import json
import os
import shutil
import time

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from shared.cases import CaseCache
from shared.errors import ZeusError
from shared.splits import load_splits
from shared.workspace import splits_path
from stage2_segment.config import TrainConfig
from stage2_segment.ensemble import EnsemblePredictor, create_ensemble, load_predictor, mean_probabilities
from stage2_segment.predict import Predictor
from stage2_segment.runs import Postprocessing, RunFolder, pending_evaluations
from stage2_segment.train import Trainer, prepare_training_data
from zeus.cli import app
from zeus.report.build import build_reports
from zeus.report.collect import collect_runs


def _trained(dataset, name: str, **overrides) -> RunFolder:
    config = TrainConfig(
        **{
            "fusion": "late",
            "decoder": "joint",
            "text": "template",
            "epochs": 1,
            "batch_size": 2,
            "lr": 1e-3,
            "slices_per_epoch": 2,
            "warmup_steps": 1,
            "precision": "fp32",
            "run_name": name,
            **overrides,
        }
    )
    trainer = Trainer(prepare_training_data(dataset, config, progress=False), config, progress=False)
    trainer.fit()
    return trainer.run


def test_an_ensemble_averages_its_members_and_is_evaluated_like_a_run(stage2_dataset):
    members = [_trained(stage2_dataset, "seed0", seed=0), _trained(stage2_dataset, "seed1", seed=1, slice_context=1)]
    result = CliRunner().invoke(app, ["ensemble", *(str(m.path) for m in members), "--name", "both"])
    assert result.exit_code == 0, result.output
    ensemble = RunFolder(members[0].path.parent / "both")
    assert ensemble.read_info().ensemble == ["seed0", "seed1"]
    assert ensemble.read_postprocessing() is not None  # decided for the ensemble on the shared validation case
    summary = ensemble.evaluation("test").read_summary()
    assert summary is not None and summary.source.case_ids == list(load_splits(stage2_dataset.name).test)

    assert not any(m.postprocessing_json.exists() for m in members)  # Trainer.fit alone decides nothing
    for member in members:  # members whose own decision redraws every class ...
        member.write_postprocessing(Postprocessing([], box_refine=list(stage2_dataset.manifest.targets)))
    predictor = load_predictor(ensemble.path)
    assert isinstance(predictor, EnsemblePredictor) and len(predictor.members) == 2
    cases = CaseCache(stage2_dataset, 256)
    features, instructions = predictor.features(cases), predictor.instructions(stage2_dataset)
    case_id = summary.source.case_ids[0]
    each = [Predictor.from_run(m.path).predict_case(case_id, cases, features, instructions) for m in members]
    assert not np.allclose(each[0], each[1])  # two different models ...
    mean = predictor.predict_case(case_id, cases, features, instructions)
    np.testing.assert_allclose(mean, (each[0] + each[1]) / 2, rtol=1e-6, atol=1e-6)  # ... averaged
    np.testing.assert_allclose(mean.sum(axis=0), 1.0, atol=1e-5)
    predictor.label_map(mean, features.load(case_id))
    assert all("_refiner" not in m.__dict__ for m in predictor.members)  # ... never load the box decoder
    for member in members:
        member.postprocessing_json.unlink()

    # a new scan (the test case's image under another name) gets the label map the evaluation wrote
    scan = ensemble.path.parent / "scan.nii.gz"
    shutil.copy(stage2_dataset.root / "imagesTr" / f"{case_id}.nii.gz", scan)
    args = ["predict", "--run", str(ensemble.path), "--input", str(scan), "--output", str(ensemble.path / "new")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    predicted = sitk.GetArrayFromImage(sitk.ReadImage(str(ensemble.path / "new" / "scan.nii.gz")))
    evaluated = sitk.GetArrayFromImage(
        sitk.ReadImage(str(ensemble.evaluation("test").predictions / f"{case_id}.nii.gz"))
    )
    np.testing.assert_array_equal(predicted, evaluated)

    records, damaged = collect_runs(stage2_dataset.name)
    (record,) = [r for r in records if r.name == "both"]
    assert damaged == [] and "ensemble of 2" in record.label and "seed0, seed1" in record.role

    # retraining a member makes the ensemble's evaluation and post-processing stale (both are dated before the
    # member's new best.pt); `zeus report --evaluate` decides and evaluates the ensemble again
    assert "both" not in [r.name for r in pending_evaluations(stage2_dataset.name)] and not ensemble.needs_decision()
    an_hour_ago = time.time() - 3600
    for made_before in (ensemble.evaluation("test").summary_json, ensemble.postprocessing_json):
        os.utime(made_before, (an_hour_ago, an_hour_ago))
    assert "both" in [r.name for r in pending_evaluations(stage2_dataset.name)] and ensemble.needs_decision()
    result = CliRunner().invoke(app, ["report", stage2_dataset.name, "--evaluate", "--out", str(ensemble.path / "r")])
    assert result.exit_code == 0, result.output
    assert pending_evaluations(stage2_dataset.name) == [] and not ensemble.needs_decision()

    # the same members again: nothing to refuse; other members under the name: refused
    assert create_ensemble([m.path for m in members], "both").path == ensemble.path
    with pytest.raises(ZeusError, match="already an ensemble"):
        create_ensemble([members[1].path, members[0].path], "both")
    with pytest.raises(ZeusError, match="cannot be one of its own members"):
        create_ensemble([m.path for m in members], "seed0")
    shutil.copytree(members[0].path, members[0].path.parent / "other")
    with pytest.raises(ZeusError, match="already a trained run"):
        create_ensemble([m.path for m in members], "other")


def test_an_ensemble_of_folds_predicts_each_case_with_the_members_that_did_not_train_on_it(stage2_dataset, tmp_path):
    members = [_trained(stage2_dataset, "f0", fold=0), _trained(stage2_dataset, "f1", fold=1)]
    infos = [m.read_info() for m in members]
    (val0,), (val1,) = infos[0].val_cases, infos[1].val_cases
    assert val0 in infos[1].train_cases and val1 in infos[0].train_cases  # each fold trains on the other's case
    ensemble = create_ensemble([m.path for m in members], "folds")
    assert ensemble.read_info().val_cases == sorted([val0, val1])

    predictor = load_predictor(ensemble.path)
    cases = CaseCache(stage2_dataset, 256)
    features, instructions = predictor.features(cases), predictor.instructions(stage2_dataset)
    each = [Predictor.from_run(m.path) for m in members]
    for case_id, own_fold in ((val0, 0), (val1, 1)):  # a validation case: only the model of its own fold
        np.testing.assert_array_equal(
            predictor.predict_case(case_id, cases, features, instructions),
            each[own_fold].predict_case(case_id, cases, features, instructions),
        )
    (test_id,) = load_splits(stage2_dataset.name).test  # a test case: every member
    both = [m.predict_case(test_id, cases, features, instructions) for m in each]
    np.testing.assert_allclose(
        predictor.predict_case(test_id, cases, features, instructions), (both[0] + both[1]) / 2, rtol=1e-6, atol=1e-6
    )
    # post-processing is decided, and the validation split evaluated, on both folds' validation cases
    result = CliRunner().invoke(app, ["postprocess", str(ensemble.path)])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["evaluate", "--run", str(ensemble.path), "--split", "val"])
    assert result.exit_code == 0, result.output
    assert ensemble.evaluation("val").read_summary().source.case_ids == sorted([val0, val1])

    # a member that trained on a case of today's test set (the split was made again) is refused
    record = json.loads(members[1].config_json.read_text())
    record["train_cases"].append(test_id)
    members[1].config_json.write_text(json.dumps(record))
    with pytest.raises(ZeusError, match=rf"f1 trained or validated on test case\(s\) \['{test_id}'\]"):
        create_ensemble([m.path for m in members], "leaky")

    # cross-validation over every patient (`data prepare --test-fraction 0`): the ensemble and the report use
    # the folds' validation cases, each predicted out of fold, as there is no test set
    split = json.loads(splits_path(stage2_dataset.name).read_text(encoding="utf-8"))
    splits_path(stage2_dataset.name).write_text(json.dumps({**split, "test": []}), encoding="utf-8")
    result = CliRunner().invoke(app, ["ensemble", str(members[0].path), str(members[1].path), "--name", "cv"])
    assert result.exit_code == 0, result.output
    cv = RunFolder(members[0].path.parent / "cv")
    assert cv.evaluation("val").read_summary().source.case_ids == sorted([val0, val1])
    assert not cv.evaluation("test").summary_json.exists()
    (html,) = build_reports([stage2_dataset.name], tmp_path / "reports")
    markdown = html.with_suffix(".md").read_text(encoding="utf-8")
    assert "`val` split (the split has no test set: each fold's validation cases, predicted out of fold)" in markdown
    assert "## Results on the validation cases, out of fold" in markdown and "held-out test" not in markdown
    # runs of one recipe (here two ensembles of the same folds) are told apart by their folder's name
    dice = markdown.split("### DSC\n")[1].split("###")[0]
    assert "| Zeus late / template (joint decoder), ensemble of 2 (`cv`) |" in dice
    assert "| Zeus late / template (joint decoder), ensemble of 2 (`folds`) |" in dice


def test_members_must_share_data_encoder_and_instructions(stage2_dataset):
    plain = _trained(stage2_dataset, "plain")
    other_text = _trained(stage2_dataset, "no_text", text="none")
    with pytest.raises(ZeusError, match=r"no_text differs from plain in its instruction store"):
        create_ensemble([plain.path, other_text.path], "mixed")
    fp32 = plain.path.parent / "fp32_encoder"  # the same run, its embeddings encoded in another precision
    shutil.copytree(plain.path, fp32)
    config = json.loads((fp32 / "config.json").read_text(encoding="utf-8"))
    assert config["train"]["encoder_precision"] == "auto"
    config["train"]["encoder_precision"] = "fp32"
    (fp32 / "config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(ZeusError, match=r"fp32_encoder differs from plain in its image encoder .*'fp32'"):
        create_ensemble([plain.path, fp32], "mixed")
    with pytest.raises(ZeusError, match="at least 2 runs"):
        create_ensemble([plain.path], "alone")
    with pytest.raises(ZeusError, match="named twice"):
        create_ensemble([plain.path, plain.path], "twice")
    unfinished = plain.path.parent / "unfinished"
    unfinished.mkdir()
    with pytest.raises(ZeusError, match="not a finished run"):
        create_ensemble([plain.path, unfinished], "broken")
    with pytest.raises(ZeusError, match="not a safe name"):
        create_ensemble([plain.path, other_text.path], "../escape")
    assert not (plain.path.parent / "mixed").exists() and not (plain.path.parent / "broken").exists()


def test_an_ensemble_record_cannot_point_outside_its_runs_folder(stage2_dataset):
    members = [_trained(stage2_dataset, "a", seed=0), _trained(stage2_dataset, "b", seed=1)]
    ensemble = create_ensemble([m.path for m in members], "ab")
    record = json.loads(ensemble.config_json.read_text())
    record["ensemble"] = ["a", "../../../elsewhere"]
    ensemble.config_json.write_text(json.dumps(record))
    with pytest.raises(ZeusError, match=r"ensemble member '\.\./\.\./\.\./elsewhere'.*not a safe name"):
        load_predictor(ensemble.path)


def test_mean_probabilities_refuses_members_of_different_shapes():
    with pytest.raises(ValueError, match="different shapes"):
        mean_probabilities([np.zeros((3, 2, 4, 4)), np.zeros((3, 1, 4, 4))])
