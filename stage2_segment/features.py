"""The image-embedding cache: the frozen encoder runs once per slice and modality, never per epoch.

``$ZEUS_HOME/features/<dataset>/<encoder>-<precision>-<build>-<size>px/<case>.npy``: float16 ``[Z, C, 256, 64, 64]``
(C = modalities, or 1 for early fusion, whose encoder sees the modalities stacked as input channels), with
``<case>.json`` holding the preprocessed case's image signature and the encoder's cost (images, seconds) for
the report. Written atomically; recomputed when the case's images change. The encoder runs in fp32 or bf16
(``--encoder-precision``; ``auto`` as for training) the fast way of ``modeling.encoder_runtime``; the folder
name says the precision and the runtime's build (``ENCODER_BUILD``), so embeddings computed another way are
never mixed in: they are recomputed under the new name. Uncompressed ``.npy`` so training memory-maps it and
reads only the slices of a batch.

Augmented copies (``--augment-copies``, ``stage2_segment.augment``): ``<case>.aug<k>.npy`` with the label moved
the same way in ``<case>.aug<k>.label.npy`` (uint8 ``[Z, S, S]`` label values) and ``<case>.aug<k>.json``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from shared.atomic import write_atomic, write_json
from shared.cases import CaseCache
from shared.workspace import features_dir
from stage2_segment.augment import AUGMENT_VERSION, SliceAugmentation
from stage2_segment.config import TrainConfig
from stage2_segment.modeling.encoders import FrozenImageEncoder
from stage2_segment.runs import resolve_precision

log = logging.getLogger(__name__)

# How the encoder is run (``encoder_runtime``: folded batch norms, row strips, bf16 weights, compiled); part of
# the cache folder's name. Build 1 (folders without it) ran the stock module, in bf16 autocast where bf16.
ENCODER_BUILD = "b2"
# Images per encoder call: on the CPU one at a time is fastest (the activations stay in the cache; batches of 8
# took 1.6x longer per image, benchmarks/README.md); a GPU wants large batches.
CPU_BATCH, GPU_BATCH = 1, 32
# torch.compile costs 20-40 s on 2 CPU cores (less once inductor's disk cache is warm) and saves 0.05 s per image
# there (0.222 -> 0.176 s in bf16): it pays from several hundred images on, so smaller jobs (a scan to predict,
# the tests' tiny datasets) run the same fast module eagerly.
COMPILE_MIN_IMAGES = 512


class FeatureCache:
    def __init__(
        self,
        cases: CaseCache,
        encoder: FrozenImageEncoder,
        *,
        early: bool = False,
        device: str = "cpu",
        precision: str = "auto",
        batch_size: int | None = None,
        compile: bool | None = None,
        root: Path | None = None,
    ):
        """``precision``: the encoder's, auto (``stage2_segment.runs.resolve_precision`` on ``device``), fp32 or
        bf16; ``compile``: torch.compile the encoder, or (None) only when at least ``COMPILE_MIN_IMAGES`` images are
        to be encoded at once."""
        self.cases, self.encoder, self.early = cases, encoder, early
        self.precision = resolve_precision(torch.device(device), precision)
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"the encoder's precision must be auto, fp32 or bf16, got {precision!r}")
        self.device = torch.device(device)
        self.batch_size = batch_size or (CPU_BATCH if self.device.type == "cpu" else GPU_BATCH)
        self.compile, self._prepared = compile, None
        # "colours": each modality has its own pretrained colour kernel; "hues" (more than 3 modalities): its own
        # mixture of them (`colour_mixture`)
        mixing = "colours" if encoder.in_channels <= 3 else "hues"
        name = f"{encoder.name}-early{encoder.in_channels}-{mixing}" if early else encoder.name
        name += f"-{self.precision}-{ENCODER_BUILD}"  # precisions and builds never share a cache
        self.folder = root or features_dir(cases.dataset.name, f"{name}-{cases.image_size}px")

    def _stem(self, case_id: str, copy: int) -> str:
        return case_id if copy == 0 else f"{case_id}.aug{copy}"

    def path(self, case_id: str, copy: int = 0) -> Path:
        return self.folder / f"{self._stem(case_id, copy)}.npy"

    def label_path(self, case_id: str, copy: int) -> Path:
        """The label of augmented copy ``copy`` (>= 1), moved with its image."""
        return self.folder / f"{self._stem(case_id, copy)}.label.npy"

    def _signature(self, case_id: str, copy: int) -> str:
        meta = self.cases.meta(case_id)
        return meta.image_signature if copy == 0 else f"{meta.image_signature}|{meta.label_signature}|{AUGMENT_VERSION}"

    def is_current(self, case_id: str, copy: int = 0) -> bool:
        """Whether the entry was computed from the case's current images and is intact: a damaged entry (a
        truncated or replaced file, a label value the dataset does not have) reads as missing, and is
        computed again."""
        sidecar = self.folder / f"{self._stem(case_id, copy)}.json"
        files = [self.path(case_id, copy), sidecar] + ([self.label_path(case_id, copy)] if copy else [])
        if not all(f.is_file() for f in files):
            return False
        try:
            record = json.loads(sidecar.read_text(encoding="utf-8"))
            if not isinstance(record, dict) or record.get("image_signature") != self._signature(case_id, copy):
                return False
            slices = record.get("slices")
            embeddings = np.load(self.path(case_id, copy), mmap_mode="r")  # reads the header, checks the length
            if embeddings.dtype != np.float16 or embeddings.ndim != 5 or slices not in (None, embeddings.shape[0]):
                return False
            if copy:
                label = np.load(self.label_path(case_id, copy))
                known = set(self.cases.dataset.manifest.labels.values())
                return (
                    label.dtype == np.uint8 and label.shape[0] == embeddings.shape[0] and set(np.unique(label)) <= known
                )
        except (OSError, ValueError, UnicodeDecodeError):  # JSONDecodeError is a ValueError
            return False
        return True

    def pending(self, case_ids: list[str], copies: int = 0) -> list[tuple[str, int]]:
        """The (case, copy) entries not cached yet, copy 0 being the case itself."""
        return [(c, k) for c in case_ids for k in range(copies + 1) if not self.is_current(c, k)]

    def image_count(self, entries: list[tuple[str, int]]) -> int:
        """How many encoder images the entries take: slices x modalities (slices for early fusion)."""
        per_slice = 1 if self.early else len(self.cases.dataset.manifest.modalities)
        return per_slice * sum(self.cases.meta(case_id).grid.size[2] for case_id, _ in entries)

    def seconds_per_image(self, case_id: str, slices: int = 4, images: int = COMPILE_MIN_IMAGES) -> float:
        """Measured on ``slices`` slices of a case, with the encoder prepared as for encoding ``images`` images (so
        compiled where that pays) and after a warm-up call."""
        self.prepared_encoder(images)
        pixels = self.cases.load(case_id).image[:, :slices]
        self._compute(pixels[:, :1])
        start = time.perf_counter()
        embeddings = self._compute(pixels)
        return (time.perf_counter() - start) / (embeddings.shape[0] * embeddings.shape[1])

    def ensure(self, case_ids: list[str], progress: bool = True, copies: int = 0) -> int:
        """Compute the embeddings (and ``copies`` augmented copies) of the cases not cached yet; returns how
        many entries were computed."""
        todo = self.pending(case_ids, copies)
        if todo and self._prepared is None:
            self.prepared_encoder(images=self.image_count(todo))
        for case_id, copy in tqdm(todo, desc="image embeddings", unit="entry", disable=not progress):
            start = time.perf_counter()
            image = self.cases.load(case_id, with_label=copy > 0)
            pixels = image.image
            if copy:
                augmentation = SliceAugmentation.draw(case_id, copy, pixels.shape[0], pixels.shape[-1])
                pixels, label = augmentation.apply(pixels, image.label)
                write_atomic(self.label_path(case_id, copy), lambda tmp, a=label: _save_npy(tmp, a))
            embeddings = self._compute(pixels)
            write_atomic(self.path(case_id, copy), lambda tmp, e=embeddings: _save_npy(tmp, e))
            sidecar = {
                "image_signature": self._signature(case_id, copy),
                "slices": int(embeddings.shape[0]),
                "images": int(embeddings.shape[0] * embeddings.shape[1]),
                "seconds": round(time.perf_counter() - start, 3),
            }
            write_json(self.folder / f"{self._stem(case_id, copy)}.json", sidecar)
        return len(todo)

    def load(self, case_id: str, copy: int = 0) -> np.ndarray:
        """float16 ``[Z, C, 256, 64, 64]``, memory-mapped."""
        return np.load(self.path(case_id, copy), mmap_mode="r")

    def load_label(self, case_id: str, copy: int) -> np.ndarray:
        """uint8 ``[Z, S, S]`` label values of augmented copy ``copy``."""
        return np.load(self.label_path(case_id, copy))

    def prepared_encoder(self, images: int = COMPILE_MIN_IMAGES) -> FrozenImageEncoder:
        """The encoder prepared for this cache's device and precision, built on first use only (a warm cache costs
        nothing); compiled as ``compile`` says, or where ``images`` are to be encoded, as many as pay for it."""
        if self._prepared is None:
            compile = self.compile if self.compile is not None else images >= COMPILE_MIN_IMAGES
            self._prepared = self.encoder.for_inference(self.device, self.precision, compile=compile)
        return self._prepared

    @torch.no_grad()
    def _compute(self, pixels: np.ndarray) -> np.ndarray:
        image = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))  # C x Z x S x S
        channels, slices = image.shape[:2]
        if self.early:
            inputs = image.permute(1, 0, 2, 3)  # Z x C x S x S: one pass over all modalities
        else:
            inputs = image.permute(1, 0, 2, 3).reshape(slices * channels, 1, *image.shape[2:])
        encoder = self.prepared_encoder()
        out = [
            encoder(inputs[i : i + self.batch_size]).to("cpu", torch.float16)
            for i in range(0, len(inputs), self.batch_size)
        ]
        embeddings = torch.cat(out).numpy()
        return embeddings.reshape(slices, 1 if self.early else channels, *embeddings.shape[1:])


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array)


def feature_cache(config: TrainConfig, cases: CaseCache, device: torch.device) -> FeatureCache:
    """The image-embedding cache of a run's frozen encoder (early fusion: modalities stacked as channels)."""
    early = config.fusion == "early"
    checkpoint = Path(config.encoder_checkpoint) if config.encoder_checkpoint else None
    channels = len(cases.dataset.manifest.modalities) if early else None
    encoder = FrozenImageEncoder.build(config.encoder, checkpoint, early_channels=channels)
    return FeatureCache(cases, encoder, early=early, device=str(device), precision=config.encoder_precision)


@dataclass(frozen=True)
class EncoderCost:
    """What one encoder's cache of a dataset cost to compute (from the sidecars)."""

    folder: str  # the cache folder's name: encoder, early-fusion channels, image size
    cases: int
    images: int  # slices x modalities (slices for early fusion)
    seconds: float


def encoder_costs(dataset: str) -> list[EncoderCost]:
    """Every image-embedding cache of a dataset with timed entries, in folder-name order."""
    costs = []
    for folder in sorted(p for p in features_dir(dataset).glob("*") if p.is_dir()):
        sidecars = {p.name: json.loads(p.read_text(encoding="utf-8")) for p in folder.glob("*.json")}
        timed = {name: s for name, s in sidecars.items() if "images" in s}
        if timed:
            images, seconds = sum(s["images"] for s in timed.values()), sum(s["seconds"] for s in timed.values())
            cases = sum(1 for name in timed if ".aug" not in name)  # augmented copies count as images, not cases
            costs.append(EncoderCost(folder.name, cases, images, seconds))
    return costs
