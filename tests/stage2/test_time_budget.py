from __future__ import annotations

import pytest

from shared.errors import ZeusError
from stage2_segment.config import TrainConfig, parse_duration
from stage2_segment.runs import RunFolder
from stage2_segment.train import Trainer, train


def test_durations_parse_with_units_and_bad_ones_are_named():
    assert parse_duration("90s") == 90 and parse_duration("60m") == 3600 and parse_duration("1.5h") == 5400
    assert parse_duration("45") == 45
    for bad in ("soon", "-5m", "0", "m", "infh"):
        with pytest.raises(ZeusError, match="--time-budget"):
            parse_duration(bad)


def test_the_budget_plans_the_epochs_from_the_measured_step_time_and_resume_keeps_them(stage2_dataset, monkeypatch):
    # 20 s per epoch + 5 s of validation and checkpoints, measured; one more validation pass for the decision
    monkeypatch.setattr(Trainer, "measure_epoch_seconds", lambda self, steps=3: (20.0, 5.0))
    config = TrainConfig(fusion="late", text="template", batch_size=2, slices_per_epoch=2, decoder="joint")
    budgeted = TrainConfig(**{**config.to_json(), "time_budget": 110.0, "run_name": "budget"})
    result = train(stage2_dataset, budgeted, progress=False)
    assert result.epochs == 3  # (110 - 5) // (25 * 1.1); 4 without the 10 % margin
    info = RunFolder(result.run_dir).read_info()
    assert info.train.epochs == 3 and info.train.time_budget == 110.0
    # a resumed run keeps the planned schedule even if the machine now measures otherwise
    monkeypatch.setattr(Trainer, "measure_epoch_seconds", lambda self, steps=3: (1.0, 0.0))
    assert train(stage2_dataset, budgeted, resume=True, progress=False).epochs == 3
    tiny = TrainConfig(**{**config.to_json(), "time_budget": 1.0, "run_name": "tiny"})
    assert train(stage2_dataset, tiny, progress=False).epochs == 1  # shorter than an epoch: one epoch


def test_measuring_trains_a_throwaway_trainer_and_gives_positive_figures(stage2_dataset):
    from stage2_segment.train import prepare_training_data

    config = TrainConfig(fusion="late", text="template", batch_size=1, slices_per_epoch=3, decoder="joint")
    trainer = Trainer(prepare_training_data(stage2_dataset, config, progress=False), config, progress=False)
    train_seconds, validation_seconds = trainer.measure_epoch_seconds(steps=1)
    assert train_seconds > 0 and validation_seconds > 0
    assert not trainer.run_dir.exists()  # nothing written to the run folder
