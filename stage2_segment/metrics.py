"""Segmentation metrics: Dice, IoU and HD95 per case and class, on label volumes or slices.

Definitions (also in docs/reference.md; every number of ``zeus evaluate`` and the report follows them):

- **Dice** = 2|P ∩ G| / (|P| + |G|) and **IoU** = |P ∩ G| / |P ∪ G|, over the voxels of one class.
- **HD95** (mm) = max(d95(P → G), d95(G → P)): d95(A → B) is the 95th percentile of the distances from every
  boundary voxel of A to the nearest boundary voxel of B; a boundary voxel is a mask voxel with a background
  neighbour. Distances are Euclidean in physical units with the volume's (anisotropic) voxel spacing; computed
  with MONAI's ``compute_hausdorff_distance(percentile=95)``.
- **Empty masks**: a class absent from both P and G has undefined Dice, IoU and HD95 (NaN, left out of means
  and counted as ``empty``), as in nnU-Net, never a silent 1.0. A class present in exactly one of them scores
  Dice 0, IoU 0 and HD95 = the diagonal of the image extent in mm (the largest distance the grid allows), so a
  missed or hallucinated structure is penalised instead of dropped.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Scores:
    dice: float
    iou: float
    hd95: float
    predicted_voxels: int
    true_voxels: int


def dice(predicted: np.ndarray, true: np.ndarray) -> float:
    """Dice of two boolean masks of equal shape; NaN where both are empty (the case says nothing of the class)."""
    total = int(predicted.sum()) + int(true.sum())
    return float("nan") if total == 0 else 2 * int(np.logical_and(predicted, true).sum()) / total


def score_masks(predicted: np.ndarray, true: np.ndarray, spacing: tuple[float, ...]) -> Scores:
    """Boolean masks of equal shape (2-D or 3-D), ``spacing`` in mm per array axis."""
    p, g = int(predicted.sum()), int(true.sum())
    if p == 0 and g == 0:
        return Scores(np.nan, np.nan, np.nan, 0, 0)
    if p == 0 or g == 0:
        return Scores(0.0, 0.0, extent_diagonal(true.shape, spacing), p, g)
    overlap = dice(predicted, true)
    return Scores(overlap, overlap / (2 - overlap), hd95(predicted, true, spacing), p, g)  # IoU = D / (2 - D)


def hd95(predicted: np.ndarray, true: np.ndarray, spacing: tuple[float, ...]) -> float:
    """Symmetric 95th-percentile Hausdorff distance in mm between two non-empty boolean masks."""
    from monai.metrics import compute_hausdorff_distance

    as_batch = lambda mask: torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]  # noqa: E731
    millimetres = [float(s) for s in spacing]  # MONAI wants one number type
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns about its own deprecated arguments
        distance = compute_hausdorff_distance(
            as_batch(predicted), as_batch(true), include_background=True, percentile=95, spacing=millimetres
        )
    return float(distance.item())


def extent_diagonal(shape: tuple[int, ...], spacing: tuple[float, ...]) -> float:
    return float(np.linalg.norm(np.asarray(shape) * np.asarray(spacing)))


class VolumeOverlap:
    """Accumulates, per case and class, intersection and the two volumes; Dice per case and class.

    Used for validation during training, on model slices; a class absent from both prediction and ground
    truth of a case has undefined Dice (NaN), as above.
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

    def mean_dice_per_class(self) -> np.ndarray:
        values = np.stack(list(self.dice().values())) if self.counts else np.full((1, self.num_targets), np.nan)
        return np.nanmean(values, axis=0) if np.isfinite(values).any() else np.full(self.num_targets, np.nan)
