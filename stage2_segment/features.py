"""The image-embedding cache: the frozen encoder runs once per slice and modality, never per epoch.

``$ZEUS_HOME/features/<dataset>/<encoder>[-bf16]-<size>px/<case>.npy``: float16 ``[Z, C, 256, 64, 64]``
(C = modalities, or 1 for early fusion, whose encoder sees the modalities stacked as input channels), with
``<case>.json`` holding the preprocessed case's image signature and the encoder's cost (images, seconds) for
the report. Written atomically; recomputed when the case's images change. The encoder runs in fp32 or in
bf16 autocast (``--encoder-precision``; ``auto`` as for training), each precision with its own folder.
Uncompressed ``.npy`` so training memory-maps it and reads only the slices of a batch.

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
from stage2_segment.runs import mixed_precision, resolve_precision

log = logging.getLogger(__name__)


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
        root: Path | None = None,
    ):
        """``precision``: the encoder's, auto (``stage2_segment.runs.resolve_precision`` on ``device``), fp32 or
        bf16 (autocast)."""
        self.cases, self.encoder, self.early = cases, encoder, early
        self.precision = resolve_precision(torch.device(device), precision)
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"the encoder's precision must be auto, fp32 or bf16, got {precision!r}")
        # On CPU one image at a time is fastest (1.33 s vs 1.80 s per image at batch 8, 2 cores); GPUs want batches.
        self.device, self.batch_size = device, batch_size or (1 if device == "cpu" else 8)
        # "colours": each modality has its own pretrained colour kernel (`early_fusion_kernels`)
        name = f"{encoder.name}-early{encoder.in_channels}-colours" if early else encoder.name
        name += "-bf16" if self.precision == "bf16" else ""  # bf16 and fp32 embeddings never share a cache
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

    def ensure(self, case_ids: list[str], progress: bool = True, copies: int = 0) -> int:
        """Compute the embeddings (and ``copies`` augmented copies) of the cases not cached yet; returns how
        many entries were computed."""
        todo = [(c, k) for c in case_ids for k in range(copies + 1) if not self.is_current(c, k)]
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

    @torch.no_grad()
    def _compute(self, pixels: np.ndarray) -> np.ndarray:
        image = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))  # C x Z x S x S
        channels, slices = image.shape[:2]
        if self.early:
            inputs = image.permute(1, 0, 2, 3)  # Z x C x S x S: one pass over all modalities
        else:
            inputs = image.permute(1, 0, 2, 3).reshape(slices * channels, 1, *image.shape[2:])
        encoder = self.encoder.to(self.device)
        with mixed_precision(torch.device(self.device), self.precision):
            out = [
                encoder(inputs[i : i + self.batch_size].to(self.device)).to("cpu", torch.float16)
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
