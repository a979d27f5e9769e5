"""The frozen image encoder (LiteMedSAM's TinyViT) against this machine's ceiling, in one run.

Prints: the bf16 and fp32 matrix-multiply rate of this machine at the encoder's thread count (the ceiling), the
encoder's GFLOP per image (counted by torch's FLOP counter), then for each way of running it seconds per image,
GFLOP/s and the fraction of the ceiling; how far each way's embeddings are from the stock fp32 module's (median
and 99th percentile of the relative difference per embedding position); and the box-prompted reference's Dice
(frozen LiteMedSAM prompted with ground-truth boxes) from the stock fp32 embeddings and from the cache's.

    python benchmarks/encoder.py DATASET [--cases 8] [--slices-per-case 12] [--device cpu|cuda]

DATASET is a built-in manifest name or a dataset folder; its cases are prepared (labels included) in the
workspace if they are not already. Slices are taken evenly over each case's slices that hold a target.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from shared.cases import CaseCache
from shared.manifest import resolve_dataset
from stage2_segment import metrics
from stage2_segment.features import CPU_BATCH, GPU_BATCH
from stage2_segment.modeling.encoders import INPUT_SIZE, FrozenImageEncoder
from stage2_segment.refine import BoxRefiner
from stage2_segment.runs import mixed_precision


def matmul_rate(dtype: torch.dtype, device: torch.device, size: int = 2048, repeats: int = 10) -> float:
    """GFLOP/s of a ``size`` x ``size`` matrix product: the ceiling the encoder is measured against."""
    a, b = (torch.randn(size, size, dtype=dtype, device=device) for _ in range(2))
    for _ in range(3):
        a @ b
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def gflop_per_image(encoder: FrozenImageEncoder) -> float:
    with FlopCounterMode(display=False) as counter:
        encoder(torch.rand(1, 1, INPUT_SIZE, INPUT_SIZE))
    return counter.get_total_flops() / 1e9


@dataclass
class Way:
    """One way of running the encoder: a function of a batch of images, the batch size, the ceiling's dtype."""

    name: str
    encode: Callable[[torch.Tensor], torch.Tensor]
    batch: int
    ceiling: torch.dtype


def stock(encoder: FrozenImageEncoder, device: torch.device, precision: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The stock module as build 1 of the cache ran it: fp32, or bf16 autocast."""
    moved = encoder.to(device)

    def encode(images: torch.Tensor) -> torch.Tensor:
        with mixed_precision(device, precision):
            return moved(images.to(device)).float()

    return encode


def run(way: Way, images: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, float]:
    """Embeddings (float32, on the CPU) and seconds per image, after a warm-up call (compilation)."""
    way.encode(images[: way.batch])
    _sync(device)
    start, out = time.perf_counter(), []
    for i in range(0, len(images), way.batch):
        out.append(way.encode(images[i : i + way.batch]).cpu())
    _sync(device)
    return torch.cat(out), (time.perf_counter() - start) / len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--slices-per-case", type=int, default=12)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)

    dataset = resolve_dataset(args.dataset)
    targets = dataset.manifest.targets
    cases = CaseCache(dataset)
    cases.prepare(progress=False)
    case_ids = cases.cached_case_ids()[: args.cases]
    reference = dataset.manifest.modality_names.index(dataset.manifest.reference_modality)
    images, labels, slice_counts = [], [], []
    for case_id in case_ids:
        case = cases.load(case_id)
        slice_counts.append(case.image.shape[1])
        with_target = np.flatnonzero(case.label.any(axis=(1, 2)))
        for z in with_target[np.linspace(0, len(with_target) - 1, args.slices_per_case).round().astype(int)]:
            images.append(case.image[reference, z])
            labels.append(case.label[z])
    images_t = torch.from_numpy(np.asarray(images, np.float32))[:, None]

    threads = torch.get_num_threads()
    ceiling = {dt: matmul_rate(dt, device) for dt in (torch.bfloat16, torch.float32)}
    encoder = FrozenImageEncoder()
    gflop = gflop_per_image(encoder)
    print(f"{len(images)} slices of {len(case_ids)} cases on {device} ({threads} threads)")
    bf16, fp32 = ceiling[torch.bfloat16], ceiling[torch.float32]
    print(f"ceiling: {bf16:.0f} GFLOP/s bf16, {fp32:.0f} GFLOP/s fp32 (2048 x 2048 matmul)")
    print(f"encoder: {gflop:.1f} GFLOP per image (torch.utils.flop_counter, {INPUT_SIZE} x {INPUT_SIZE} input)")

    cache_batch = CPU_BATCH if device.type == "cpu" else GPU_BATCH
    ways = [
        Way("stock fp32", stock(encoder, device, "fp32"), cache_batch, torch.float32),
        Way("stock bf16 autocast (build 1)", stock(encoder, device, "bf16"), cache_batch, torch.bfloat16),
        Way("stock bf16 autocast, batch 8", stock(encoder, device, "bf16"), 8, torch.bfloat16),
        Way("fast fp32, compiled", encoder.for_inference(device, "fp32"), cache_batch, torch.float32),
        Way("fast bf16, eager", encoder.for_inference(device, "bf16", compile=False), cache_batch, torch.bfloat16),
        Way("fast bf16, compiled (the cache's)", encoder.for_inference(device, "bf16"), cache_batch, torch.bfloat16),
        Way("fast bf16, compiled, batch 8", encoder.for_inference(device, "bf16"), 8, torch.bfloat16),
    ]
    embeddings = {}
    print(f"\n{'way':<36} {'batch':>5} {'s/image':>8} {'GFLOP/s':>8} {'ceiling':>8} {'median':>8} {'p99':>8}")
    for way in ways:
        out, seconds = run(way, images_t, device)
        out = out.half().float()  # what the cache stores
        embeddings[way.name] = out
        relative = ((out - embeddings["stock fp32"]).norm(dim=1) / embeddings["stock fp32"].norm(dim=1)).flatten()
        rate = gflop / seconds
        print(
            f"{way.name:<36} {way.batch:>5} {seconds:>8.3f} {rate:>8.0f} {rate / ceiling[way.ceiling]:>7.1%} "
            f"{relative.median():>8.4f} {relative.quantile(0.99):>8.4f}"
        )
    print(
        "(median / p99: relative difference to stock fp32 per embedding position; "
        f"a case has {min(slice_counts)}-{max(slice_counts)} slices)"
    )

    truth = np.asarray(labels)
    box_reference = BoxRefiner(list(targets.values()))  # the frozen box decoder, prompted with each class's box
    for name in ("stock fp32", "stock bf16 autocast (build 1)", "fast bf16, compiled (the cache's)"):
        predicted = box_reference.box_prompted(truth, embeddings[name][:, None].numpy())
        dice = [metrics.dice(predicted == v, truth == v) for v in targets.values()]
        print(f"box reference from {name}: " + " ".join(f"{t} {d:.4f}" for t, d in zip(targets, dice, strict=True)))


if __name__ == "__main__":
    main()
