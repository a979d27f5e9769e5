"""What the report shows, read from the workspace: runs, their evaluations, logs and the costs of both stages.

Nothing here runs a model: the report only reads what ``zeus train``, ``zeus evaluate`` and
``zeus instructions`` wrote (run folders, feature sidecars, the stage-1 run log).
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.schema import RUN_LOG
from shared.workspace import features_dir, instructions_dir, runs_dir
from stage2_segment.evaluate import evaluation_dir
from stage2_segment.train import TrainConfig, run_folders

EVALUATED_SPLIT = "test"


@dataclass
class RunRecord:
    name: str
    folder: Path
    info: dict[str, Any]  # config.json
    log: list[dict[str, float]]  # log.csv rows
    evaluation: dict[str, Any] | None  # evaluation/test/summary.json

    @property
    def train(self) -> dict[str, Any]:
        return self.info["train"]

    @property
    def model(self) -> str:
        return self.train["model"]

    @property
    def label(self) -> str:
        """What the run is, in words: the model, its fusion and its text conditioning."""
        if self.model == "unet":
            return "U-Net (from scratch)"
        return f"Zeus {self.train['fusion']} / {self.train['text']}"

    @property
    def role(self) -> str:
        if self.model == "unet":
            return "baseline: 2-D U-Net from scratch, no SAM, no text"
        text, fusion = self.train["text"], self.train["fusion"]
        if text == "none":
            return "ablation: no instructions (learned class tokens)"
        if text == "template":
            return "ablation: template instructions (no LLM)"
        return "Zeus" if fusion == "late" else f"fusion ablation: {fusion}"

    @property
    def tag(self) -> str | None:
        """The stage-1 store the run was trained on (None for runs without instructions)."""
        return TrainConfig(**self.train).tag

    @property
    def parameters(self) -> dict[str, int]:
        counts = self.info.get("parameters", {})
        trainable, frozen = counts.get("trainable", 0), counts.get("frozen", 0)
        encoder = self.info.get("encoder_parameters", 0)
        return {"trainable": trainable, "total": trainable + frozen + encoder}

    @property
    def config_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.train, sort_keys=True).encode()).hexdigest()[:12]

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
    runs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def cold(self) -> dict[str, Any] | None:
        """The run that generated the most (the first full pass, typically)."""
        generated = [r for r in self.runs if r["requests"] > r["cached"]]
        return max(generated, key=lambda r: r["requests"] - r["cached"]) if generated else None

    @property
    def latest(self) -> dict[str, Any] | None:
        return self.runs[-1] if self.runs else None


@dataclass
class FeatureCost:
    encoder_folder: str
    cases: int
    images: int  # slices x modalities (one for early fusion)
    seconds: float


def collect_runs(dataset: str) -> list[RunRecord]:
    records = []
    for folder in run_folders(dataset):
        info = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        summary = evaluation_dir(folder, EVALUATED_SPLIT) / "summary.json"
        evaluation = json.loads(summary.read_text(encoding="utf-8")) if summary.is_file() else None
        records.append(RunRecord(folder.name, folder, info, _read_log(folder / "log.csv"), evaluation))
    return records


def _read_log(path: Path) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    with path.open(encoding="utf-8", newline="") as f:
        return [{k: (float(v) if v not in ("", None) else None) for k, v in row.items()} for row in csv.DictReader(f)]


def stage_one_costs(dataset: str, tags: set[str]) -> list[StageOneCost]:
    costs = []
    for tag in sorted(tags):
        folder = instructions_dir(dataset) / tag
        log = folder / RUN_LOG
        runs = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()] if log.is_file() else []
        costs.append(StageOneCost(tag, runs))
    return costs


def feature_costs(dataset: str) -> list[FeatureCost]:
    costs = []
    for folder in sorted(p for p in features_dir(dataset).glob("*") if p.is_dir()):
        sidecars = [json.loads(p.read_text(encoding="utf-8")) for p in folder.glob("*.json")]
        timed = [s for s in sidecars if "images" in s]
        if timed:
            costs.append(
                FeatureCost(folder.name, len(timed), sum(s["images"] for s in timed), sum(s["seconds"] for s in timed))
            )
    return costs


def datasets_with_runs() -> list[str]:
    return sorted(p.name for p in runs_dir().glob("*") if any(p.glob("*/config.json")))
