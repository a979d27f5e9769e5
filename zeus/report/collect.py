"""What the report shows, read from the workspace: runs, their evaluations, logs and the costs of both stages.

Nothing here runs a model: the report only reads what ``zeus train``, ``zeus evaluate`` and
``zeus instructions`` wrote, through the owners of those files (``stage2_segment.runs`` for run folders,
``shared.instructions`` for the stage-1 run log, ``stage2_segment.features`` for the encoder's costs).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field

from shared.errors import ZeusError
from shared.instructions import InstructionStore, RunLogEntry
from stage2_segment.config import BOX_REFERENCE, TrainConfig
from stage2_segment.modeling.box_reference import BOX_MARGIN
from stage2_segment.runs import EvaluationSummary, Postprocessing, RunFolder, RunInfo, list_runs, reported_split

log = logging.getLogger(__name__)


@dataclass
class RunRecord:
    folder: RunFolder
    info: RunInfo  # config.json
    log: list[dict[str, float | None]]  # log.csv rows
    evaluation: EvaluationSummary | None  # evaluation/<split>/summary.json
    split: str  # the split evaluated: reported_split of the dataset
    postprocessing: Postprocessing | None = None  # postprocessing.json: what the evaluation applied

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def train(self) -> TrainConfig:
        return self.info.train

    @property
    def model(self) -> str:
        return self.train.model

    @property
    def label(self) -> str:
        """What the run is, in words: the model, its fusion and its text conditioning."""
        if self.model == "unet":
            return "U-Net (from scratch)"
        if self.model == BOX_REFERENCE:
            return "LiteMedSAM + ground-truth boxes"
        decoder = " (joint decoder)" if self.train.decoder == "joint" else ""
        ensemble = f", ensemble of {len(self.info.ensemble)}" if self.info.ensemble else ""
        return f"Zeus {self.train.fusion} / {self.train.text}{decoder}{ensemble}"

    @property
    def title(self) -> str:
        """The label and the run folder's name, which tells apart runs of one recipe (folds, seeds, ensembles)."""
        return f"{self.label} ({self.name})"

    @property
    def role(self) -> str:
        if self.model == "unet":
            return "baseline: 2-D U-Net from scratch, no SAM, no text"
        if self.model == BOX_REFERENCE:
            return (
                f"reference: frozen LiteMedSAM, a ground-truth box (+{BOX_MARGIN} px) per target and slice "
                "— uses the ground truth at test time"
            )
        text, fusion = self.train.text, self.train.fusion
        if self.info.ensemble:
            return f"ensemble: mean probabilities of {', '.join(self.info.ensemble)}"
        if text == "none":
            return "ablation: no instructions (learned class tokens)"
        if text == "template":
            return "ablation: template instructions (no LLM)"
        return "Zeus" if fusion == "late" else f"fusion ablation: {fusion}"

    @property
    def tag(self) -> str | None:
        """The stage-1 store the run was trained on (None for runs without instructions)."""
        return self.train.tag

    @property
    def parameters(self) -> dict[str, int]:
        counts = self.info.parameters
        trainable, frozen = counts.get("trainable", 0), counts.get("frozen", 0)
        return {"trainable": trainable, "total": trainable + frozen + self.info.encoder_parameters}

    @property
    def config_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.train.to_json(), sort_keys=True).encode()).hexdigest()[:12]

    @property
    def best_epoch(self) -> int | None:
        scored = [r for r in self.log if r.get("val_dice") is not None]
        return int(max(scored, key=lambda r: r["val_dice"])["epoch"]) if scored else None

    @property
    def train_seconds(self) -> float:
        return sum(r.get("seconds") or 0.0 for r in self.log)


@dataclass
class StageOneCost:
    tag: str
    runs: list[RunLogEntry] = field(default_factory=list)

    @property
    def cold(self) -> RunLogEntry | None:
        """The run that generated the most (the first full pass, typically)."""
        generated = [r for r in self.runs if r.requests > r.cached]
        return max(generated, key=lambda r: r.requests - r.cached) if generated else None

    @property
    def latest(self) -> RunLogEntry | None:
        return self.runs[-1] if self.runs else None


@dataclass(frozen=True)
class DamagedRun:
    """A run folder the report leaves out, and why (the damaged file is named in ``reason``)."""

    name: str
    reason: str


def collect_runs(dataset: str) -> tuple[list[RunRecord], list[DamagedRun]]:
    """Every run of the dataset that can be read; a run with a damaged file is listed apart, not fatal."""
    records, damaged, split = [], [], reported_split(dataset)
    for run in list_runs(dataset):
        try:
            evaluation = run.evaluation(split).read_summary()
            records.append(
                RunRecord(run, run.read_info(), run.read_log(), evaluation, split, run.read_postprocessing())
            )
        except ZeusError as e:
            log.warning("report: leaving out run %s: %s", run.path, e)
            damaged.append(DamagedRun(run.name, str(e)))
    return records, damaged


def stage_one_costs(dataset: str, tags: set[str]) -> list[StageOneCost]:
    return [StageOneCost(tag, InstructionStore.of(dataset, tag).runs()) for tag in sorted(tags)]
