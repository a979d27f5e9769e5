"""The report's figures: training curves and qualitative overlays.

matplotlib's object API (``Figure``, no pyplot): no global backend or figure state, nothing to close.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from zeus.report.collect import RunRecord

TRUTH_COLOUR, PREDICTION_COLOUR = "#00d26a", "#ff2d55"


def training_curves(runs: list[RunRecord], path: Path) -> Path | None:
    """Training loss and validation Dice per epoch, one line per run."""
    logged = [r for r in runs if r.log]
    if not logged:
        return None
    fig = Figure(figsize=(11, 3.8))
    loss_ax, dice_ax = fig.subplots(1, 2)
    for run in logged:
        epochs = [row["epoch"] for row in run.log]
        loss_ax.plot(epochs, [row["train_loss"] for row in run.log], marker="o", label=run.title)
        dice = [np.nan if row.get("val_dice") is None else row["val_dice"] for row in run.log]
        dice_ax.plot(epochs, dice, marker="o", label=run.title)
    loss_ax.set(title="training loss (Dice + CE)", xlabel="epoch", ylabel="loss")
    dice_ax.set(title="validation Dice (mean over classes)", xlabel="epoch", ylabel="Dice", ylim=(0, 1))
    for ax in (loss_ax, dice_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    dice_ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


@dataclass(frozen=True)
class OverlayPanel:
    """One slice of one class: the model input, ground truth and prediction masks, and the instruction."""

    case_id: str
    slice_index: int
    target: str
    image: np.ndarray  # [S, S] in [0, 1]
    truth: np.ndarray  # [S, S] bool
    prediction: np.ndarray  # [S, S] bool
    instruction: str
    dice: float


def overlays(panels: list[OverlayPanel], title: str, path: Path) -> Path | None:
    """Rows of panels: image with the ground truth, image with the prediction, the instruction used."""
    if not panels:
        return None
    fig = Figure(figsize=(12, 3.6 * len(panels)))
    axes = fig.subplots(len(panels), 3, squeeze=False)
    for (truth_ax, pred_ax, text_ax), panel in zip(axes, panels, strict=True):
        for ax, mask, colour, name in (
            (truth_ax, panel.truth, TRUTH_COLOUR, "ground truth"),
            (pred_ax, panel.prediction, PREDICTION_COLOUR, "prediction"),
        ):
            ax.imshow(panel.image, cmap="gray", vmin=0, vmax=1)
            ax.imshow(np.ma.masked_where(~mask, mask), cmap=ListedColormap([colour]), alpha=0.45, vmin=0, vmax=1)
            if mask.any():
                ax.contour(mask, levels=[0.5], colors=[colour], linewidths=1.2)
            ax.set_title(f"{panel.case_id} slice {panel.slice_index}: {panel.target} ({name})", fontsize=9)
            ax.axis("off")
        text_ax.axis("off")
        wrapped = textwrap.fill(panel.instruction, width=48)
        text_ax.text(0, 1, f"Dice (slice) {panel.dice:.3f}\n\ninstruction:\n{wrapped}", va="top", fontsize=9, wrap=True)
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return path
