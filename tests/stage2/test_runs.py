"""The run folder's records: what training and evaluation write is what the typed readers give back."""

from __future__ import annotations

import json

import pytest

from shared.errors import ZeusError
from shared.instructions import PRESETS
from stage2_segment.config import TrainConfig
from stage2_segment.instructions import InstructionTable
from stage2_segment.runs import EvaluationSummary, RunFolder, RunInfo, list_runs, pending_evaluations
from stage2_segment.train import prepare_training_data


def test_run_info_and_evaluation_summary_round_trip_their_json(evaluated_run, monkeypatch):
    workspace, dataset, run_dir = evaluated_run
    monkeypatch.setenv("ZEUS_HOME", str(workspace))
    run = RunFolder(run_dir)
    on_disk = json.loads(run.config_json.read_text(encoding="utf-8"))
    info = run.read_info()
    assert isinstance(info, RunInfo) and info.train.fusion == "late"
    assert info.manifest.targets == dataset.manifest.targets
    assert info.to_json() == on_disk
    assert info.open_dataset().root == dataset.root.resolve()
    summary = run.evaluation("test").read_summary()
    assert isinstance(summary, EvaluationSummary)
    assert summary.to_json() == json.loads(run.evaluation("test").summary_json.read_text(encoding="utf-8"))
    assert summary.source.checkpoint == "best.pt" and summary.source.split == "test"
    assert [r.path for r in list_runs(dataset.name)] == [run_dir] and pending_evaluations(dataset.name) == []
    assert [row["epoch"] for row in run.read_log()] == [1.0, 2.0]


def test_a_size_the_dataset_was_not_prepared_at_is_a_clear_error(stage2_dataset):
    # the U-Net trains at any size, but not at one the dataset was never prepared at (a Zeus run is refused
    # earlier: its encoder takes 256 px only, tests/stage2/test_hardening.py)
    with pytest.raises(ZeusError, match=r"prepared at 256 px, not at --image-size 128: pass --image-size 256"):
        prepare_training_data(stage2_dataset, TrainConfig(model="unet", image_size=128), progress=False)
    table = InstructionTable(stage2_dataset.manifest, PRESETS["template"].tag)
    table.check_image_size(256)
    with pytest.raises(ZeusError, match=r"written from 256 px slices, not --image-size 128"):
        table.check_image_size(128)


def test_precision_auto_is_bf16_where_the_hardware_has_it_and_either_can_be_asked_for(monkeypatch):
    import torch

    from stage2_segment import runs
    from stage2_segment.runs import mixed_precision, resolve_precision

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(runs, "cpu_has_bf16", lambda: False)
    assert resolve_precision(cpu) == "fp32" and resolve_precision(cuda) == "bf16"
    monkeypatch.setattr(runs, "cpu_has_bf16", lambda: True)
    assert resolve_precision(cpu) == "bf16"
    assert resolve_precision(cuda, "fp32") == "fp32" and resolve_precision(cpu, "bf16") == "bf16"
    linear = torch.nn.Linear(4, 4)
    with mixed_precision(cpu, "bf16"):
        assert linear(torch.ones(1, 4)).dtype == torch.bfloat16
    with mixed_precision(cpu, "fp32"):
        assert linear(torch.ones(1, 4)).dtype == torch.float32


def test_an_unfinished_or_damaged_record_is_not_pending_evaluation(tmp_path):
    unfinished = RunFolder(tmp_path / "unfinished")
    unfinished.path.mkdir()
    unfinished.config_json.write_text('{"dataset": "x", "ensem', encoding="utf-8")  # cut short, no checkpoint
    assert unfinished.model_checkpoints() == [] and not unfinished.needs_evaluation()
    assert not unfinished.needs_decision()
