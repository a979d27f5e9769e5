"""Training: the Zeus segmenter on cached image embeddings and cached instruction embeddings.

``train`` runs the explicit steps before training (``prepare_training_data``: cases prepared with labels,
patient-level splits, image embeddings), then ``Trainer`` trains. Device and precision come from
``stage2_segment.runs`` (bf16 autocast on CUDA and on CPUs with native bf16, else fp32). Every epoch writes a
full-state checkpoint (model, optimizer, scheduler, epoch, RNG states), so ``resume`` continues exactly; the
best checkpoint is chosen by validation Dice, never by training loss. With ``--ema-decay`` validation, the
checkpoints' ``model`` and so prediction use an exponential moving average of the weights (torch's
``AveragedModel``); the trained weights are kept beside it for resuming. Under ``torchrun`` it trains with DDP
(gloo on CPU, NCCL on GPU); rank 0 validates, logs and writes.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import random
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader
from tqdm import tqdm

from shared.cases import CaseCache
from shared.errors import DataError, ZeusError
from shared.manifest import Dataset
from shared.provenance import git_revision, package_versions
from shared.splits import ensure_splits
from stage2_segment.config import TrainConfig
from stage2_segment.data import DeviceSlices, SliceDataset, forward_batch
from stage2_segment.features import FeatureCache, feature_cache
from stage2_segment.finalize import decide_for_run
from stage2_segment.instructions import InstructionTable, instruction_table
from stage2_segment.losses import union_loss
from stage2_segment.metrics import VolumeOverlap
from stage2_segment.modeling.build import build_model, check_input_size
from stage2_segment.modeling.segmenter import SegmenterConfig, ZeusSegmenter
from stage2_segment.runs import (
    BEST,
    LAST,
    RUN_PACKAGES,
    RunFolder,
    RunInfo,
    TrainResult,
    load_checkpoint,
    mixed_precision,
    pick_device,
    save_checkpoint,
)

log = logging.getLogger(__name__)

# Settings that do not change what a run computes: a resumed run may use others.
RESUME_MAY_CHANGE = frozenset({"num_workers", "data_on_device"})


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

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


@dataclass
class TrainingData:
    """What a run trains and validates on, ready before the trainer starts."""

    dataset: Dataset
    cases: CaseCache
    train_ids: list[str]
    val_ids: list[str]
    features: FeatureCache | None  # None for the U-Net baseline (it reads the slices)
    instructions: InstructionTable | None  # None for ``--text none`` and the U-Net


def prepare_training_data(
    dataset: Dataset,
    config: TrainConfig,
    *,
    device: torch.device | None = None,
    distributed: Distributed | None = None,
    progress: bool = True,
) -> TrainingData:
    """Cases prepared with labels at the run's image size, the persisted splits, the instruction table, and
    the image embeddings of the frozen encoder (computed by rank 0 while the others wait)."""
    check_input_size(config)
    device = device or pick_device()
    distributed = distributed or Distributed()
    cases = CaseCache(dataset, config.image_size)
    _check_image_size(cases)
    instructions = instruction_table(dataset.manifest, config)
    if instructions is not None:
        instructions.check_image_size(config.image_size)
    summary = cases.prepare(progress=progress and distributed.main, workers=1)
    if summary.problems:
        raise DataError(summary.problems)
    splits = ensure_splits(dataset.name, cases.cached_case_ids())
    train_ids, val_ids = (list(ids) for ids in splits.fold(config.fold))
    features = feature_cache(config, cases, device) if config.uses_features else None
    if features is not None and distributed.main and config.time_budget is not None:
        check_encoding_budget(features, train_ids, val_ids, config)
    if features is not None and distributed.main:
        features.ensure(train_ids, progress=progress, copies=config.augment_copies)
        features.ensure(val_ids, progress=progress)
    distributed.barrier()
    return TrainingData(dataset, cases, train_ids, val_ids, features, instructions)


# Encoding must leave at least this share of a --time-budget to training, or the schedule is too short to be
# worth running (a few epochs): then the run is refused before any work, with what to change.
MIN_TRAINING_SHARE = 0.5


def check_encoding_budget(
    features: FeatureCache, train_ids: list[str], val_ids: list[str], config: TrainConfig
) -> None:
    """Estimate the encoding still to do from a measured batch, log it, and refuse a budget it would mostly use."""
    entries = features.pending(train_ids, config.augment_copies) + features.pending(val_ids)
    if not entries:
        return
    originals, copies = [e for e in entries if e[1] == 0], [e for e in entries if e[1] > 0]
    images_originals, images_copies = features.image_count(originals), features.image_count(copies)
    per_image = features.seconds_per_image(entries[0][0], images=images_originals + images_copies)
    seconds_originals, seconds_copies = per_image * images_originals, per_image * images_copies
    encoding = seconds_originals + seconds_copies
    log.info(
        "encoding %d cached entries: about %.1f min (%.3f s per image, measured)",
        len(originals) + len(copies),
        encoding / 60,
        per_image,
    )
    if encoding <= (1 - MIN_TRAINING_SHARE) * config.time_budget:
        return
    advice = [f"raise --time-budget to at least {_minutes(encoding / (1 - MIN_TRAINING_SHARE))}"]
    if copies:  # only copies still to encode can be saved (none: the advice would divide by zero)
        per_copy = seconds_copies / config.augment_copies
        fitting = int(((1 - MIN_TRAINING_SHARE) * config.time_budget - seconds_originals) // per_copy)
        lower = f"lower --augment-copies from {config.augment_copies} to {max(0, fitting)}"
        advice.insert(0, f"{lower} ({_minutes(per_copy)} each)")
    raise ZeusError(
        f"encoding the images not cached yet takes about {_minutes(encoding)} on {features.device} "
        f"({per_image:.2f} s per image, measured), more than {(1 - MIN_TRAINING_SHARE) * 100:.0f} % of --time-budget "
        f"{_minutes(config.time_budget)}: too little would be left to train. " + ", or ".join(advice) + "."
    )


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 120 else f"{seconds:.0f} s"


def _check_image_size(cases: CaseCache) -> None:
    """Training at a size the dataset was never prepared at, while it was prepared at another, is a slip."""
    prepared = cases.prepared_sizes()
    others = [size for size in prepared if size != cases.image_size]
    if others and cases.image_size not in prepared:
        sizes = ", ".join(f"{s} px" for s in others)
        raise ZeusError(
            f"{cases.dataset.name} is prepared at {sizes}, not at --image-size {cases.image_size}: pass "
            f"--image-size {others[0]}, or run `zeus data prepare {cases.dataset.name} --image-size {cases.image_size}`"
        )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def warmup_cosine(warmup_steps: int, total_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


class Trainer:
    """Trains one run on prepared data: the loop, checkpoints, validation, the run folder's records."""

    def __init__(
        self,
        data: TrainingData,
        config: TrainConfig,
        *,
        run: RunFolder | None = None,
        device: torch.device | None = None,
        distributed: Distributed | None = None,
        progress: bool = True,
    ):
        self.data, self.dataset, self.config, self.progress = data, data.dataset, config, progress
        self.device = device or pick_device()
        self.dist = distributed or Distributed()
        self.run = run or RunFolder.of(data.dataset.name, config.name)
        self.autocast = mixed_precision(self.device, config.precision)
        self.features = data.features
        self.train_set = SliceDataset(
            data.train_ids,
            data.cases,
            data.features,
            data.instructions,
            copies=config.augment_copies,
            seed=config.seed,
            context=config.slice_context,
        )
        self.val_set = (
            SliceDataset(data.val_ids, data.cases, data.features, data.instructions, context=config.slice_context)
            if data.val_ids
            else None
        )
        on_device = config.keeps_data_on_device(self.device.type)
        self.device_data = DeviceSlices(self.train_set, self.device) if on_device else None
        seed_everything(config.seed)
        self.model = self._model(data.instructions).to(self.device)
        self.ddp_model = (
            torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
            if self.dist.world_size > 1
            else self.model
        )
        if config.compile:  # the step runs the compiled graph; checkpoints and validation use the module itself
            self.ddp_model = torch.compile(self.ddp_model)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.steps_per_epoch = math.ceil(self._epoch_size() / (config.batch_size * self.dist.world_size))
        self.optimizer = self.scheduler = None  # the box-prompted reference has nothing to train
        if trainable:
            self.optimizer = torch.optim.AdamW(trainable, lr=config.effective_lr, weight_decay=config.weight_decay)
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(
                self.optimizer, warmup_cosine(config.warmup_steps, self.steps_per_epoch * config.epochs)
            )
        self.ema = (
            AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay), use_buffers=True)
            if trainable and config.ema_decay
            else None
        )
        self.epoch, self.best_dice, self.stale_epochs = 0, -1.0, 0

    @property
    def run_dir(self) -> Path:
        return self.run.path

    @property
    def predicting_model(self) -> torch.nn.Module:
        """The weights that validate, fill the checkpoints' ``model`` and predict: the moving average where
        ``--ema-decay`` is set, else the trained weights."""
        return self.ema.module if self.ema is not None else self.model

    def _model(self, table: InstructionTable | None) -> torch.nn.Module:
        manifest = self.dataset.manifest
        segmenter = SegmenterConfig(
            fusion=self.config.fusion,
            num_modalities=len(manifest.modalities),
            num_targets=len(manifest.targets),
            text_dim=table.dim if table else 384,
            use_text=table is not None,
            num_tokens=self.config.num_tokens,
            decoder=self.config.decoder,
            slice_context=self.config.slice_context,
        )
        return build_model(self.config, manifest, segmenter)

    # -- state ----------------------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "model": self.predicting_model.state_dict(),
            # with a moving average: the trained weights and the number of averaged steps, to resume from
            "trained": self.model.state_dict() if self.ema is not None else None,
            "ema_updates": int(self.ema.n_averaged) if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict() if self.optimizer else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "epoch": self.epoch,
            "best_dice": self.best_dice,
            "stale_epochs": self.stale_epochs,
            "config": self.config.to_json(),
            "schedule": self._schedule(),
            "segmenter": asdict(self.model.config) if isinstance(self.model, ZeusSegmenter) else None,
            "rng": _rng_state(),
        }

    def save(self, name: str) -> None:
        save_checkpoint(self.run.checkpoint(name), self.state())

    def resume(self) -> None:
        path = self.run.checkpoint(LAST)
        if not path.is_file():
            raise ZeusError(f"nothing to resume: {path} does not exist")
        state = load_checkpoint(path, self.device)
        self._check_resumable(state, path)
        if self.optimizer is None:
            raise ZeusError(f"{path}: {self.config.model} has nothing to train, so nothing to resume")
        if self.ema is not None:
            self.model.load_state_dict(state["trained"], strict=True)
            self.ema.module.load_state_dict(state["model"], strict=True)
            self.ema.n_averaged.fill_(state["ema_updates"])
        else:
            self.model.load_state_dict(state["model"], strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.best_dice, self.stale_epochs = state["epoch"], state["best_dice"], state["stale_epochs"]
        _set_rng_state(state["rng"])
        log.info("resumed %s at epoch %d", path, self.epoch)

    def _schedule(self) -> dict[str, int]:
        """What fixes the learning-rate schedule: a resumed run must have the same."""
        total = self.steps_per_epoch * self.config.epochs
        return {"steps_per_epoch": self.steps_per_epoch, "total_steps": total, "warmup_steps": self.config.warmup_steps}

    def _check_resumable(self, state: dict[str, Any], path: Path) -> None:
        """Resuming continues the stored run exactly, or not at all: any other setting is refused by name."""
        stored = TrainConfig.from_json(state["config"]).to_json()
        current = self.config.to_json()
        changed = [k for k in current if k not in RESUME_MAY_CHANGE and stored.get(k) != current[k]]
        if changed:
            settings = "; ".join(
                f"--{k.replace('_', '-')}: the run has {stored.get(k)!r}, now {current[k]!r}" for k in changed
            )
            raise ZeusError(
                f"cannot resume {path} with other settings ({settings}): resume with the run's settings, "
                "or start a new run with --run-name"
            )
        schedule = state.get("schedule")
        if schedule is not None and schedule != self._schedule():
            raise ZeusError(
                f"cannot resume {path}: its schedule {schedule} differs from this command's {self._schedule()} "
                "(the training cases changed?): start a new run with --run-name"
            )

    # -- loop -----------------------------------------------------------------------------------------------

    def fit(self) -> TrainResult:
        cfg = self.config
        if self.epoch == 0 and self.run.checkpoint(LAST).is_file():
            raise ZeusError(
                f"run {self.run_dir} already has checkpoints: pass --resume to continue it, "
                "or --run-name for a new run (or delete the folder)"
            )
        if self.dist.main:
            self.run.path.mkdir(parents=True, exist_ok=True)
            self.run.write_info(self._run_info())
            log.info("parameters: %s", self.model.parameter_counts())
        if self.optimizer is None:  # nothing to train (the box-prompted reference): validate once, as epoch 0
            self._close_epoch(float("nan"), time.perf_counter())
        while self.optimizer is not None and self.epoch < cfg.epochs:
            start = time.perf_counter()
            train_loss = self._train_epoch()
            self.epoch += 1
            self._close_epoch(train_loss, start)
            if cfg.early_stopping and self.stale_epochs >= cfg.early_stopping:
                log.info("early stop: %d epochs without a better validation Dice", self.stale_epochs)
                break
        self.dist.barrier()
        return TrainResult(self.epoch, self.best_dice, self.run_dir)

    def _close_epoch(self, train_loss: float, start: float) -> None:
        """Validate, keep the best, write the checkpoints and the log row of the epoch just trained."""
        dice = self._broadcast(self.validate() if self.dist.main else np.zeros(len(self.dataset.manifest.targets)))
        # what the moving average adds, in the log: the trained weights' validation Dice beside it
        trained = self.validate(model=self.model) if self.ema is not None and self.dist.main else None
        mean_dice = float(np.nanmean(dice)) if np.isfinite(dice).any() else 0.0
        # Without validation cases nothing tells epochs apart: best.pt is the latest, not the first.
        improved = mean_dice > self.best_dice or self.val_set is None
        self.best_dice, self.stale_epochs = (mean_dice, 0) if improved else (self.best_dice, self.stale_epochs + 1)
        if self.dist.main:
            self.save(LAST)
            if improved:
                self.save(BEST)
            self._log(train_loss, dice, time.perf_counter() - start, trained)

    def _epoch_size(self) -> int:
        return min(len(self.train_set), self.config.slices_per_epoch or len(self.train_set))

    def _epoch_indices(self) -> list[int]:
        """This epoch's slices: a seeded permutation (it depends on the epoch only, so a resumed run sees the
        same order), cut to ``slices_per_epoch`` and to a multiple of the world size (DDP ranks must take equal
        numbers of steps), dealt round-robin to the ranks."""
        generator = torch.Generator().manual_seed(self.config.seed + self.epoch)
        world = self.dist.world_size
        size = max(world, self._epoch_size() // world * world)
        order = torch.randperm(len(self.train_set), generator=generator)[:size]
        return order[self.dist.rank :: world].tolist()

    def _batches(self):
        """This epoch's batches: cut from the device-resident set, or collated by the loader (the same values)."""
        indices, size = self._epoch_indices(), self.config.batch_size
        self.train_set.set_epoch(self.epoch)  # which augmented copy each slice reads
        if self.device_data is not None:
            chunks = [torch.tensor(indices[i : i + size]) for i in range(0, len(indices), size)]
            return map(self.device_data.batch, chunks)
        return DataLoader(self.train_set, batch_size=size, sampler=indices, num_workers=self.config.num_workers)

    def _train_epoch(self) -> float:
        self.ddp_model.train()
        losses = []
        bar = tqdm(
            self._batches(),
            total=self.steps_per_epoch,
            desc=f"epoch {self.epoch + 1}/{self.config.epochs}",
            unit="batch",
            disable=not (self.progress and self.dist.main),
        )
        for batch in bar:
            losses.append(self._step(batch))
            bar.set_postfix(loss=f"{np.mean(losses):.4f}")
        return float(np.mean(losses))

    def _step(self, batch: dict[str, torch.Tensor]) -> float:
        with self.autocast:
            logits = forward_batch(self.ddp_model, batch, self.device)
        loss = union_loss(logits, batch["label"].to(self.device))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        return loss.item()

    @torch.no_grad()
    def validate(self, max_batches: int | None = None, model: torch.nn.Module | None = None) -> np.ndarray:
        """Mean Dice per target over the validation cases (3-D, accumulated over slices), of ``model`` (default:
        the predicting weights)."""
        if self.val_set is None:
            return np.full(len(self.dataset.manifest.targets), np.nan)
        model = model if model is not None else self.predicting_model
        model.eval()
        overlap = VolumeOverlap(len(self.dataset.manifest.targets))
        loader = DataLoader(self.val_set, batch_size=self.config.batch_size, shuffle=False)
        for batch in itertools.islice(loader, max_batches):
            case_ids = [self.val_set.case_of(int(i)) for i in batch["index"]]
            with self.autocast:
                logits = forward_batch(model, batch, self.device)
            overlap.update(case_ids, logits.argmax(dim=1).cpu(), batch["label"])
        return overlap.mean_dice_per_class()

    def measure_epoch_seconds(self, steps: int = 3) -> tuple[float, float]:
        """(seconds of one training epoch, seconds of one validation pass + checkpoints), from ``steps`` timed
        training steps after a warm-up step and two timed validation batches. It trains: use a trainer that
        is thrown away afterwards."""
        batches = iter(self._batches())
        self.ddp_model.train()
        self._step(next(batches))  # warm-up: first-call allocations
        timed = list(itertools.islice(batches, steps))
        start = time.perf_counter()
        for batch in timed:
            self._step(batch)
        step_seconds = (time.perf_counter() - start) / max(1, len(timed))
        validation = 0.0
        if self.val_set is not None:
            batches_per_pass = math.ceil(len(self.val_set) / self.config.batch_size)
            self.validate(max_batches=1)  # warm-up
            start = time.perf_counter()
            self.validate(max_batches=min(2, batches_per_pass))
            validation = (time.perf_counter() - start) / min(2, batches_per_pass) * batches_per_pass
            validation *= 2 if self.ema is not None else 1  # the trained weights are validated too
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            save_checkpoint(Path(folder) / "timing.pt", self.state())
            checkpoints = 2 * (time.perf_counter() - start)  # last.pt, and best.pt when it improves
        return step_seconds * self.steps_per_epoch, validation + checkpoints

    # -- run folder -----------------------------------------------------------------------------------------

    def _run_info(self) -> RunInfo:
        features = self.features
        return RunInfo(
            dataset=self.dataset.name,
            dataset_root=str(self.dataset.root.resolve()),
            manifest=self.dataset.manifest,
            train=self.config,
            segmenter=asdict(self.model.config) if isinstance(self.model, ZeusSegmenter) else None,
            parameters=self.model.parameter_counts(),
            encoder=features.encoder.name if features else None,
            encoder_parameters=features.encoder.parameter_count() if features else 0,
            train_cases=self.data.train_ids,
            val_cases=self.data.val_ids,
            git_revision=git_revision(),
            packages=package_versions(*RUN_PACKAGES),
        )

    def _log(self, train_loss: float, dice: np.ndarray, seconds: float, trained: np.ndarray | None = None) -> None:
        targets = list(self.dataset.manifest.targets)
        row = {
            "epoch": self.epoch,
            "train_loss": round(train_loss, 6),
            "val_dice": _mean(dice),
            **({"val_dice_trained": _mean(trained)} if trained is not None else {}),
            **{f"dice_{t}": ("" if np.isnan(d) else round(float(d), 6)) for t, d in zip(targets, dice, strict=True)},
            "lr": self.scheduler.get_last_lr()[0] if self.scheduler else 0.0,
            "seconds": round(seconds, 2),
        }
        self.run.append_log(row)
        _tensorboard(self.run.tensorboard, row)
        log.info("epoch %d: %s", self.epoch, json.dumps(row))

    def _broadcast(self, values: np.ndarray) -> np.ndarray:
        """Rank 0's validation result on every rank, so all take the same best/early-stopping decisions."""
        if self.dist.world_size == 1:
            return values
        tensor = torch.as_tensor(values, dtype=torch.float64, device=self.device)
        dist.broadcast(tensor, src=0)
        return tensor.cpu().numpy()


def _mean(dice: np.ndarray) -> float | str:
    """The mean over targets for the log row; empty without validation cases."""
    return round(float(np.nanmean(dice)), 6) if np.isfinite(dice).any() else ""


def _rng_state() -> dict[str, Any]:
    """Every RNG's state as plain data (numpy's key array as a tensor), so checkpoints load with weights_only."""
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(rng: dict[str, Any]) -> None:
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    n = rng["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["bit_generator"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(rng["torch"].cpu())
    if rng["cuda"]:
        torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])


def _tensorboard(folder: Path, row: dict[str, Any]) -> None:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional; log.csv has the same numbers
        return
    with SummaryWriter(str(folder)) as writer:
        for key, value in row.items():
            if key != "epoch" and value != "":
                writer.add_scalar(key, float(value), row["epoch"])


# A few measured steps underestimate a whole run's epochs: on the dev data (2 CPU cores) 94 s were measured and
# the 21 epochs took 91-117 s (mean 100 s), so a 60-minute budget ended after 62.4 min. Plan with 10 % to spare.
EPOCH_TIME_MARGIN = 1.1


def plan_epochs(
    data: TrainingData, config: TrainConfig, budget: float, *, device: torch.device, distributed: Distributed
) -> int:
    """How many epochs fit in ``budget`` seconds, validation, checkpoints and the post-processing decision
    included, measured with a trainer that is thrown away (the run's own trainer starts from its seed).
    Every DDP rank takes rank 0's figure."""
    trainer = Trainer(data, replace(config, epochs=1), device=device, distributed=distributed, progress=False)
    start = time.perf_counter()
    train_seconds, validation_seconds = trainer.measure_epoch_seconds()
    measured = time.perf_counter() - start
    # after the last epoch: the post-processing decision predicts the validation cases (about one pass)
    available = budget - measured - validation_seconds
    epochs = max(1, int(available // ((train_seconds + validation_seconds) * EPOCH_TIME_MARGIN)))
    if distributed.world_size > 1:
        shared = torch.tensor([epochs], device=device)
        dist.broadcast(shared, src=0)
        epochs = int(shared.item())
    if distributed.main:
        log.info(
            "time budget %.0f s: %.1f s per epoch + %.1f s validation and checkpoints -> %d epoch(s)",
            budget,
            train_seconds,
            validation_seconds,
            epochs,
        )
        if available < train_seconds + validation_seconds:
            log.warning("the time budget is shorter than one epoch: training 1 epoch")
    return epochs


def _budgeted(
    data: TrainingData,
    config: TrainConfig,
    elapsed: float,
    *,
    resume: bool,
    device: torch.device,
    distributed: Distributed,
) -> TrainConfig:
    """The configuration with ``epochs`` sized to the time budget; a resumed run keeps its planned epochs."""
    run = RunFolder.of(data.dataset.name, config.name)
    if resume and run.checkpoint(LAST).is_file():
        stored = run.read_info().train
        if stored.time_budget == config.time_budget:
            return replace(config, epochs=stored.epochs)
    budget = config.time_budget - elapsed
    return replace(config, epochs=plan_epochs(data, config, budget, device=device, distributed=distributed))


def train(dataset: Dataset, config: TrainConfig, *, resume: bool = False, progress: bool = True) -> TrainResult:
    """Prepare the run's data (explicitly, before the trainer exists), then train; under torchrun, DDP.
    With ``config.time_budget`` the epochs are planned so that the whole command ends inside it."""
    start = time.perf_counter()
    device = pick_device()
    distributed = Distributed.setup(device)
    data = prepare_training_data(dataset, config, device=device, distributed=distributed, progress=progress)
    if config.time_budget is not None:
        elapsed = time.perf_counter() - start
        config = _budgeted(data, config, elapsed, resume=resume, device=device, distributed=distributed)
    trainer = Trainer(data, config, device=device, distributed=distributed, progress=progress)
    if resume and trainer.run.checkpoint(LAST).is_file():
        trainer.resume()
    elif resume:
        log.info("no checkpoint in %s yet: starting the run", trainer.run_dir)
    result = trainer.fit()
    if distributed.main and data.val_ids:
        decide_for_run(result.run_dir, progress=progress)
    distributed.barrier()
    return result
