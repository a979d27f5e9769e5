"""The training configuration: every option of ``zeus train`` with its one default."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from shared.errors import ZeusError
from shared.instructions import PRESETS
from shared.paths import check_name
from shared.preprocess import DEFAULT_IMAGE_SIZE

# ``--text`` -> the stage-1 store it reads (named by shared's presets; ``none``: learned class tokens;
# ``shuffled``: the instructions, each slice given another slice's, the control of ``zeus ablate``).
SHUFFLED = "shuffled"
TEXT_MODES = {
    "instructions": PRESETS["offline"].tag,
    "template": PRESETS["template"].tag,
    "none": None,
    SHUFFLED: PRESETS["offline"].tag,
}
# zeus: the method; unet: a 2-D U-Net from scratch (baseline); litemedsam-boxes: frozen LiteMedSAM prompted
# with ground-truth boxes (a reference that sees the ground truth at test time; nothing is trained).
MODELS = ("zeus", "unet", "litemedsam-boxes")
BOX_REFERENCE = "litemedsam-boxes"
FUSIONS = ("early", "hybrid", "late")
# per-target: one decoder pass per (image, target), as SAM; joint: all targets of an image in one pass.
DECODERS = ("per-target", "joint")
# The recipe measured on the real dev data (docs/reference.md, "Defaults from the dev data"; docs/experiments/):
# a Zeus run trains with these unless told otherwise. The U-Net baseline and the box reference read neither
# (their default is 0).
RECIPE_AUGMENT_COPIES = 2
RECIPE_SLICE_CONTEXT = 1
# How --lr is scaled with --batch-size (from the batch REFERENCE_BATCH it was tuned at): none, linear or sqrt.
LR_SCALINGS = ("none", "linear", "sqrt")
REFERENCE_BATCH = 4
# auto: bf16 autocast on CUDA and on CPUs with native bf16, else fp32 (stage2_segment.runs.resolve_precision).
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class TrainConfig:
    model: str = "zeus"  # one of MODELS
    encoder: str = "litemedsam"  # litemedsam | sam-vit-b (needs encoder_checkpoint)
    encoder_checkpoint: str | None = None
    fusion: str = "late"
    decoder: str = "per-target"  # one of DECODERS
    text: str = "instructions"  # one of TEXT_MODES
    instructions_tag: str | None = None  # default: the stage-1 tag of ``text``
    fold: int = 0
    epochs: int = 10
    batch_size: int = 4
    lr: float = 3e-4  # at REFERENCE_BATCH; see lr_scaling
    lr_scaling: str = "none"  # one of LR_SCALINGS: larger batches (on a GPU) scale the learning rate
    weight_decay: float = 0.01
    warmup_steps: int = 10
    # validate, keep and predict with an exponential moving average of the weights, updated every step with
    # this decay (0: the trained weights themselves). Off by default: 0.99 did not beat the trained weights on
    # the dev data (docs/experiments/2026-12-04-a-moving-average-of-the-weights.md)
    ema_decay: float = 0.0
    seed: int = 0
    precision: str = "auto"  # one of PRECISIONS
    # The frozen encoder's precision when it fills the image-embedding cache (one of PRECISIONS; bf16 caches
    # live in their own folder). bf16 encodes 2.6x faster than fp32 on 2 CPU cores with AMX and leaves the
    # box-prompted reference's Dice on the dev data within 0.001 (benchmarks/encoder.py; docs/experiments/
    # 2026-12-04-the-frozen-encoder-in-bf16.md and 2026-12-06-encoder-speed.md)
    encoder_precision: str = "auto"
    num_tokens: int = 2
    # 2.5-D: each slice's embedding also takes in the embeddings of this many slices on either side
    # (None: RECIPE_SLICE_CONTEXT for Zeus, 0 for the other models; resolved when the config is made)
    slice_context: int | None = None
    image_size: int = DEFAULT_IMAGE_SIZE
    # augmented copies per training case, encoded once (stage2_segment.augment); 0: the original slices only
    # (None: RECIPE_AUGMENT_COPIES for Zeus, 0 for the other models)
    augment_copies: int | None = None
    slices_per_epoch: int | None = None  # sample this many slices per epoch (default: all)
    # seconds the whole `zeus train` may take: epochs are then planned from the measured step time
    time_budget: float | None = None
    early_stopping: int | None = None  # stop after this many epochs without a better validation Dice
    num_workers: int = 0
    # torch.compile the model the training step runs (TorchInductor kernels: fewer launches on a GPU).
    compile: bool = False
    # Hold the training set on the device and index batches there (DeviceSlices); None: on CUDA only.
    data_on_device: bool | None = None
    run_name: str | None = None

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ZeusError(f"--model must be one of {MODELS}, got {self.model!r}")
        zeus = self.model == "zeus"
        if self.slice_context is None:
            object.__setattr__(self, "slice_context", RECIPE_SLICE_CONTEXT if zeus else 0)
        if self.augment_copies is None:
            object.__setattr__(self, "augment_copies", RECIPE_AUGMENT_COPIES if zeus else 0)
        if self.fusion not in FUSIONS:
            raise ZeusError(f"--fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if self.decoder not in DECODERS:
            raise ZeusError(f"--decoder must be one of {DECODERS}, got {self.decoder!r}")
        if self.precision not in PRECISIONS:
            raise ZeusError(f"--precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.encoder_precision not in PRECISIONS:
            raise ZeusError(f"--encoder-precision must be one of {PRECISIONS}, got {self.encoder_precision!r}")
        if self.lr_scaling not in LR_SCALINGS:
            raise ZeusError(f"--lr-scaling must be one of {LR_SCALINGS}, got {self.lr_scaling!r}")
        if self.text not in TEXT_MODES:
            raise ZeusError(f"--text must be one of {list(TEXT_MODES)}, got {self.text!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ZeusError("epochs, batch size and learning rate must be positive")
        if self.augment_copies < 0:
            raise ZeusError(f"--augment-copies must be 0 or more, got {self.augment_copies}")
        if self.slice_context < 0:
            raise ZeusError(f"--slice-context must be 0 or more, got {self.slice_context}")
        if not 0 <= self.ema_decay < 1:
            raise ZeusError(f"--ema-decay must be in [0, 1), got {self.ema_decay}")
        if self.slice_context and self.model != "zeus":
            raise ZeusError("--slice-context is an input of the Zeus segmenter: --model zeus only")
        if self.augment_copies and not self.uses_features:
            raise ZeusError("--augment-copies augments cached image embeddings: the U-Net baseline has none")
        if self.time_budget is not None and self.time_budget <= 0:
            raise ZeusError(f"--time-budget must be positive, got {self.time_budget} s")
        if self.model == BOX_REFERENCE and self.fusion == "early":
            raise ZeusError(
                "--model litemedsam-boxes prompts the reference modality's own embedding: use --fusion late"
            )
        if self.run_name is not None:
            check_name(self.run_name, "run name", "--run-name")

    @property
    def tag(self) -> str | None:
        """The stage-1 store the run reads (None: no instructions)."""
        if self.model != "zeus" or TEXT_MODES[self.text] is None:  # --text none reads no store, whatever the tag
            return None
        return self.instructions_tag or TEXT_MODES[self.text]

    @property
    def effective_lr(self) -> float:
        """The learning rate the optimizer gets: ``lr`` scaled from REFERENCE_BATCH to ``batch_size``
        (linear: Goyal et al. 2017; sqrt: the usual rule for Adam-type optimizers)."""
        ratio = self.batch_size / REFERENCE_BATCH
        return self.lr * {"none": 1.0, "linear": ratio, "sqrt": ratio**0.5}[self.lr_scaling]

    @property
    def uses_features(self) -> bool:
        """Whether the run reads the frozen encoder's cached embeddings (the U-Net reads the slices)."""
        return self.model != "unet"

    @property
    def name(self) -> str:
        if self.run_name:
            return self.run_name
        if self.model != "zeus":
            return f"{self.model}__fold{self.fold}"
        decoder = "-joint" if self.decoder == "joint" else ""
        return f"{self.fusion}{decoder}__text-{self.text}__fold{self.fold}"

    def keeps_data_on_device(self, device_type: str) -> bool:
        return device_type == "cuda" if self.data_on_device is None else self.data_on_device

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainConfig:
        # A run written before an option existed ran without it, whatever today's default: before ``--decoder``
        # it decoded per target, before ``--slice-context`` and ``--augment-copies`` it read neither, before
        # ``--encoder-precision`` its embeddings were encoded in fp32.
        data = {"decoder": "per-target", "slice_context": 0, "augment_copies": 0, "encoder_precision": "fp32", **data}
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def parse_duration(text: str) -> float:
    """``"90s"``, ``"60m"``, ``"1.5h"`` or plain seconds -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    value, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        seconds = float(value) * units[unit]
    except ValueError:
        raise ZeusError(f"--time-budget: expected a duration like 90s, 60m or 1.5h, got {text!r}") from None
    if not seconds > 0 or seconds == float("inf"):
        raise ZeusError(f"--time-budget must be a positive duration, got {text!r}")
    return seconds
