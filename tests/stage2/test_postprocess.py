from __future__ import annotations

import json

import numpy as np
import pytest

from shared.errors import ZeusError
from stage2_segment.postprocess import apply, decide, keep_largest_component
from stage2_segment.runs import Postprocessing, RunFolder


def _volume() -> np.ndarray:
    labels = np.zeros((6, 10, 10), np.uint8)
    labels[1:4, 2:6, 2:6] = 1  # the organ: 48 voxels
    labels[5, 8:10, 8:10] = 1  # an island on a far slice: 4 voxels
    labels[0:2, 7:9, 0:2] = 2  # class 2, one piece
    return labels


def test_largest_component_removes_islands_of_that_class_only():
    labels = _volume()
    kept = keep_largest_component(labels, 1)
    assert (kept == 1).sum() == 48 and kept[5, 8:10, 8:10].sum() == 0
    assert np.array_equal(kept == 2, labels == 2)
    # diagonal neighbours belong to one component (26-connectivity)
    diagonal = np.zeros((2, 2, 2), np.uint8)
    diagonal[0, 0, 0] = diagonal[1, 1, 1] = 1
    assert np.array_equal(keep_largest_component(diagonal, 1), diagonal)
    assert np.array_equal(apply(labels, []), labels)


def test_decide_keeps_the_step_only_where_validation_dice_rises():
    true = np.zeros((6, 10, 10), np.uint8)
    true[1:4, 2:6, 2:6] = 1
    true[0:2, 7:9, 0:2] = 2
    true[4, 0:2, 7:9] = 2  # class 2 really has two pieces: dropping the smaller one costs Dice
    pred = _volume()
    pred[4, 0:2, 7:9] = 2
    decision = decide([(pred, true)], {"organ": 1, "paired": 2, "absent": 3})
    assert decision.largest_component == ["organ"]
    assert decision.val_dice_largest_component["organ"] == pytest.approx(1.0)
    assert decision.val_dice_raw["organ"] == pytest.approx(2 * 48 / (52 + 48))
    assert decision.val_dice_raw["paired"] == pytest.approx(1.0)
    assert decision.val_dice_largest_component["paired"] < 1.0
    assert decision.val_dice_raw["absent"] is None  # empty in every case: undefined, never chosen


def test_the_decision_round_trips_and_a_damaged_one_is_named(tmp_path):
    run = RunFolder(tmp_path)
    assert run.read_postprocessing() is None
    decision = Postprocessing(["liver"], {"liver": 0.8}, {"liver": 0.85})
    run.write_postprocessing(decision)
    assert run.read_postprocessing() == decision
    run.postprocessing_json.write_text(json.dumps({"largest_component": "liver"}), encoding="utf-8")
    with pytest.raises(ZeusError, match=r"postprocessing\.json is damaged"):
        run.read_postprocessing()


def test_training_decides_on_validation_and_prediction_applies_the_decision(stage2_dataset):
    from stage2_segment.config import TrainConfig
    from stage2_segment.predict import Predictor
    from stage2_segment.train import train

    config = TrainConfig(fusion="late", text="template", epochs=1, batch_size=2, slices_per_epoch=2, decoder="joint")
    run = RunFolder(train(stage2_dataset, config, progress=False).run_dir)
    decision = run.read_postprocessing()
    targets = stage2_dataset.manifest.targets
    assert decision is not None and set(decision.val_dice_raw) == set(targets)
    assert set(decision.largest_component) <= set(targets)

    run.write_postprocessing(Postprocessing(list(targets)))
    predictor = Predictor.from_run(run.path)
    assert predictor.largest_component == list(targets.values())
    probabilities = np.random.default_rng(0).random((len(targets) + 1, 3, 32, 32)).astype(np.float32)
    raw = predictor.raw_label_map(probabilities)
    assert np.array_equal(predictor.label_map(probabilities), apply(raw, targets.values()))
    assert not np.array_equal(predictor.label_map(probabilities), raw)  # random maps have many islands

    run.write_postprocessing(Postprocessing(["pancreas"]))
    with pytest.raises(ZeusError, match="names classes the run does not have"):
        Predictor.from_run(run.path)
