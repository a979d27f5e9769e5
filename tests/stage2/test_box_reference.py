"""The box-prompted LiteMedSAM reference: boxes from the ground truth, a frozen decoder, a run that evaluates
like any other and is labelled in the report as using the ground truth."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from shared.errors import ZeusError
from shared.splits import load_splits
from stage2_segment.config import TrainConfig
from stage2_segment.evaluate import evaluate_run
from stage2_segment.modeling.box_reference import ABSENT, BoxPromptedSAM, boxes_from_labels
from stage2_segment.train import train
from zeus.pipeline import predict_scan
from zeus.report.build import build_reports


def test_boxes_are_the_ground_truths_extent_grown_by_the_margin_and_clipped():
    labels = torch.zeros(2, 32, 32, dtype=torch.long)
    labels[0, 10:20, 4:8] = 1  # target 0: rows 10-19, columns 4-7
    labels[0, 0:3, 28:32] = 2  # target 1 at the corner: clipped
    boxes = boxes_from_labels(labels, num_targets=3, margin=5)
    assert boxes[0, 0].tolist() == [0.0, 5.0, 12.0, 24.0]  # x0, y0, x1, y1
    assert boxes[0, 1].tolist() == [23.0, 0.0, 31.0, 7.0]
    assert torch.isnan(boxes[0, 2]).all() and torch.isnan(boxes[1]).all()  # absent targets: no box


def test_only_targets_with_a_box_are_predicted_and_inside_their_box():
    model = BoxPromptedSAM(num_targets=2).eval()
    torch.manual_seed(0)
    embeddings = torch.randn(1, 1, 256, 64, 64)
    boxes = torch.tensor([[[40.0, 60.0, 140.0, 180.0], [math.nan] * 4]])
    logits = model(embeddings, boxes)
    assert logits.shape == (1, 3, 256, 256)
    assert (logits[0, 2] == ABSENT).all()  # no box, no prediction
    assert (logits[0, 0] == 0).all()  # the background logit
    assert model.parameter_counts()["trainable"] == 0


def test_the_reference_runs_evaluates_and_is_labelled_as_using_ground_truth(stage2_dataset, tmp_path):
    config = TrainConfig(model="litemedsam-boxes", batch_size=2)
    result = train(stage2_dataset, config, progress=False)
    assert result.epochs == 0 and result.run_dir.name == "litemedsam-boxes__fold0"
    assert 0.0 <= result.best_val_dice <= 1.0
    summary = evaluate_run(result.run_dir, progress=False)
    dice = [c.volume["dice"].mean for c in summary.classes.values()]
    assert all(d is not None and d > 0.3 for d in dice), dice  # boxes around the phantom organs find them
    (case,) = load_splits(stage2_dataset.name).test
    with pytest.raises(ZeusError, match="cannot segment a new scan"):
        predict_scan(result.run_dir, [str(stage2_dataset.root / "imagesTr" / f"{case}.nii.gz")], tmp_path / "out")
    (html,) = build_reports([stage2_dataset.name], tmp_path / "reports")
    markdown = html.with_suffix(".md").read_text(encoding="utf-8")
    row = next(
        line
        for line in markdown.splitlines()
        if line.startswith(f"| LiteMedSAM + ground-truth boxes (`{result.run_dir.name}`) |")
    )
    assert "uses the ground truth at test time" in markdown and np.isfinite(float(row.split("|")[2].split()[0]))
