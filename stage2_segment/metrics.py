"""Dice and IoU per class, accumulated over the slices of a volume."""

from __future__ import annotations

import numpy as np
import torch


class VolumeOverlap:
    """Accumulates, per case and class, intersection and the two volumes; Dice/IoU per case and class.

    A class absent from both prediction and ground truth of a case has undefined Dice (NaN), as in nnU-Net.
    """

    def __init__(self, num_targets: int):
        self.num_targets = num_targets
        self.counts: dict[str, np.ndarray] = {}  # case -> [T, 3]: intersection, predicted, true

    def update(self, case_ids: list[str], predictions: torch.Tensor, labels: torch.Tensor) -> None:
        """predictions, labels: BxHxW class indices."""
        for case_id, pred, true in zip(case_ids, predictions, labels, strict=True):
            counts = self.counts.setdefault(case_id, np.zeros((self.num_targets, 3), np.int64))
            for t in range(self.num_targets):
                p, g = pred == t + 1, true == t + 1
                counts[t] += [int((p & g).sum()), int(p.sum()), int(g.sum())]

    def dice(self) -> dict[str, np.ndarray]:
        """case -> float[T] Dice (NaN where both are empty)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return {c: 2 * v[:, 0] / (v[:, 1] + v[:, 2]) for c, v in self.counts.items()}

    def iou(self) -> dict[str, np.ndarray]:
        with np.errstate(invalid="ignore", divide="ignore"):
            return {c: v[:, 0] / (v[:, 1] + v[:, 2] - v[:, 0]) for c, v in self.counts.items()}

    def mean_dice_per_class(self) -> np.ndarray:
        values = np.stack(list(self.dice().values())) if self.counts else np.full((1, self.num_targets), np.nan)
        return np.nanmean(values, axis=0) if np.isfinite(values).any() else np.full(self.num_targets, np.nan)
