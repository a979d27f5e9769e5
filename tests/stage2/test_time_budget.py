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


def test_the_budget_refuses_up_front_when_encoding_would_take_most_of_it(stage2_dataset, tmp_path, monkeypatch):
    from shared.cases import CaseCache
    from stage2_segment.features import FeatureCache
    from stage2_segment.modeling.encoders import FrozenImageEncoder
    from stage2_segment.train import check_encoding_budget

    empty = FeatureCache(CaseCache(stage2_dataset, 256), FrozenImageEncoder(), compile=False, root=tmp_path / "f")
    assert 0 < empty.seconds_per_image("demo_001", slices=1) < 60  # really measured, on one slice
    assert empty.image_count(empty.pending(["demo_001"])) == 3 * 3  # 3 slices x 3 modalities
    # 10 s per image: the 2 cases are 180 s, each augmented copy of the training case 90 s -> 360 s in all
    monkeypatch.setattr(FeatureCache, "seconds_per_image", lambda self, case_id, slices=4, images=0: 10.0)
    config = TrainConfig(fusion="late", text="template", augment_copies=2, time_budget=600.0)
    with pytest.raises(ZeusError) as refused:
        check_encoding_budget(empty, ["demo_001"], ["demo_002"], config)
    message = str(refused.value)
    assert "takes about 6 min" in message and "10.00 s per image" in message and "more than 50 %" in message
    assert "lower --augment-copies from 2 to 1 (90 s each)" in message  # (300 - 180) // 90
    assert "raise --time-budget to at least 12 min" in message
    check_encoding_budget(empty, ["demo_001"], ["demo_002"], TrainConfig(**{**config.to_json(), "time_budget": 720.0}))
    assert not list((tmp_path / "f").glob("*.npy"))  # the check encodes nothing it keeps
    # no copy left to encode (here: no training case): the advice is the budget alone
    with pytest.raises(ZeusError) as refused:
        check_encoding_budget(empty, [], ["demo_002"], TrainConfig(**{**config.to_json(), "time_budget": 100.0}))
    assert "--augment-copies" not in str(refused.value) and "at least 3 min" in str(refused.value)
