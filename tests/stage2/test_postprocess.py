from __future__ import annotations

import json

import numpy as np
import pytest

from shared.cases import CaseCache
from shared.errors import ZeusError
from shared.splits import load_splits
from stage2_segment.finalize import ValidationCase, decide
from stage2_segment.postprocess import apply, keep_largest_component
from stage2_segment.refine import BoxRefiner
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
    decision = decide([ValidationCase(pred, true)], {"organ": 1, "paired": 2, "absent": 3})
    assert decision.largest_component == ["organ"]
    assert decision.val_dice_largest_component["organ"] == pytest.approx(1.0)
    assert decision.val_dice_raw["organ"] == pytest.approx(2 * 48 / (52 + 48))
    assert decision.val_dice_raw["paired"] == pytest.approx(1.0)
    assert decision.val_dice_largest_component["paired"] < 1.0
    assert decision.val_dice_raw["absent"] is None  # empty in every case: undefined, never chosen
    assert decision.box_refine == [] and decision.val_dice_box_refined == {}  # no refiner: not considered


def test_box_refinement_is_chosen_per_class_and_box_where_it_raises_validation_dice():
    true = np.zeros((2, 8, 8), np.uint8)
    true[:, 1:5, 1:5] = 1
    true[:, 5:8, 5:8] = 2
    true[:, 0, 6:8] = 3
    pred = true.copy()
    pred[:, 1, 1:5] = 0  # class 1 under-segmented: boxes around all pieces restore it
    pred[:, 0, 4:6] = 3  # class 3 overdrawn: boxes around the largest piece restore it, the others do not
    seen = []

    def refiner(labels, embeddings, whole, piece):
        seen.append((labels.copy(), embeddings, sorted(whole), sorted(piece)))
        out = labels.copy()
        if whole:
            out[true == 1] = 1  # redraws class 1 exactly
            out[(labels == 2) & (np.arange(8) == 7)] = 0  # and damages class 2
            out[(labels == 3) & (true == 0)] = 0  # and class 3 loses its false piece but also half of itself
            out[:, 0, 7] = 0
        if piece:
            out[(labels == 3) & (true == 0)] = 0  # class 3 redrawn exactly, the others as they were
        return out

    embeddings = np.zeros((2, 1, 4, 4, 4), np.float16)
    targets = {"organ": 1, "other": 2, "paired": 3}
    decision = decide([ValidationCase(pred, true, embeddings)], targets, refiner)
    assert decision.box_refine == ["organ"] and decision.box_refine_piece == ["paired"]
    assert decision.val_dice_box_refined["organ"] == pytest.approx(1.0)
    assert decision.val_dice_box_refined_piece["organ"] == decision.val_dice_largest_component["organ"] < 1.0
    assert decision.val_dice_box_refined["other"] < decision.val_dice_largest_component["other"] == 1.0
    assert decision.val_dice_box_refined["paired"] < decision.val_dice_box_refined_piece["paired"] == 1.0
    # the refiner saw the maps after the largest-component step (chosen for no class: each is one piece), the
    # case's embeddings and every class, once per kind of box
    assert decision.largest_component == []
    assert [(np.array_equal(s[0], pred), s[1] is embeddings, s[2], s[3]) for s in seen] == [
        (True, True, [1, 2, 3], []),
        (True, True, [], [1, 2, 3]),
    ]
    # a case without embeddings (the U-Net has none): box refinement is not considered
    assert decide([ValidationCase(pred, true)], {"organ": 1}, refiner).box_refine == []


def test_the_decision_round_trips_and_a_damaged_one_is_named(tmp_path):
    run = RunFolder(tmp_path)
    assert run.read_postprocessing() is None
    decision = Postprocessing(
        ["liver"], {"liver": 0.8}, {"liver": 0.85}, ["liver"], {"liver": 0.9}, ["spleen"], {"liver": 0.88}
    )
    run.write_postprocessing(decision)
    assert run.read_postprocessing() == decision
    # a decision written before box refinement existed redraws nothing
    run.postprocessing_json.write_text(json.dumps({"largest_component": ["liver"]}), encoding="utf-8")
    assert run.read_postprocessing() == Postprocessing(["liver"])
    run.postprocessing_json.write_text(json.dumps({"largest_component": "liver"}), encoding="utf-8")
    with pytest.raises(ZeusError, match=r"postprocessing\.json is damaged"):
        run.read_postprocessing()
    both = {"largest_component": [], "box_refine": ["liver"], "box_refine_piece": ["liver"]}
    run.postprocessing_json.write_text(json.dumps(both), encoding="utf-8")
    with pytest.raises(ZeusError, match="in both box_refine and box_refine_piece"):
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
    assert set(decision.val_dice_box_refined) == set(targets)  # box refinement was considered for every class
    assert set(decision.val_dice_box_refined_piece) == set(targets)
    assert set(decision.box_refine) | set(decision.box_refine_piece) <= set(targets)

    run.write_postprocessing(Postprocessing(list(targets)))
    predictor = Predictor.from_run(run.path)
    assert predictor.largest_component == list(targets.values())
    probabilities = np.random.default_rng(0).random((len(targets) + 1, 3, 32, 32)).astype(np.float32)
    raw = predictor.raw_label_map(probabilities)
    assert np.array_equal(predictor.label_map(probabilities), apply(raw, targets.values()))
    assert not np.array_equal(predictor.label_map(probabilities), raw)  # random maps have many islands

    # box refinement redraws the chosen class from the case's embeddings, after the largest-component step
    first, value = next(iter(targets.items()))
    run.write_postprocessing(Postprocessing(list(targets), box_refine=[first]))
    predictor = Predictor.from_run(run.path)
    cases = CaseCache(stage2_dataset, 256)
    (case_id,) = load_splits(stage2_dataset.name).test
    features = predictor.features(cases)
    segmentation = predictor.segment_case(case_id, cases, features, predictor.instructions(stage2_dataset))
    kept = apply(predictor.raw_label_map(segmentation.probabilities), targets.values())
    refiner = BoxRefiner(list(targets.values()))
    assert np.array_equal(segmentation.labels, refiner(kept, features.load(case_id), [value]))
    # ... and from boxes around its largest pieces where that was chosen
    run.write_postprocessing(Postprocessing(list(targets), box_refine_piece=[first]))
    piece = Predictor.from_run(run.path).label_map(segmentation.probabilities, features.load(case_id))
    assert np.array_equal(piece, refiner(kept, features.load(case_id), [], [value]))
    with pytest.raises(ValueError, match="pass the case's image embeddings"):
        predictor.label_map(segmentation.probabilities)

    run.write_postprocessing(Postprocessing(["pancreas"]))
    with pytest.raises(ZeusError, match="names classes the run does not have"):
        Predictor.from_run(run.path)
