"""The frozen image encoder (LiteMedSAM's TinyViT) in fp32 and in bf16 autocast: seconds per image, how far
the bf16 embeddings are from the fp32 ones, and what that does to segmentation, measured as the box-prompted
reference's Dice (frozen LiteMedSAM prompted with ground-truth boxes) from each precision's embeddings.

    python benchmarks/encoder.py DATASET [--cases 8] [--slices-per-case 12]

DATASET is a built-in manifest name or a dataset folder; its cases are prepared (labels included) in the
workspace if they are not already. Slices are taken evenly over each case's slices that hold a target.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from shared.cases import CaseCache
from shared.manifest import resolve_dataset
from stage2_segment import postprocess
from stage2_segment.modeling.encoders import FrozenImageEncoder
from stage2_segment.refine import BoxRefiner
from stage2_segment.runs import cpu_has_bf16, mixed_precision


def encode(encoder: FrozenImageEncoder, images: torch.Tensor, precision: str) -> tuple[torch.Tensor, float]:
    """Embeddings (float32) of ``images`` ``N x 1 x S x S`` one at a time, in ``precision`` as the feature cache
    runs the encoder, and seconds per image."""
    out, start = [], time.perf_counter()
    with mixed_precision(torch.device("cpu"), precision):
        for image in images:
            out.append(encoder(image[None]).float())
    return torch.cat(out), (time.perf_counter() - start) / len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--slices-per-case", type=int, default=12)
    args = parser.parse_args()

    dataset = resolve_dataset(args.dataset)
    targets = dataset.manifest.targets
    cases = CaseCache(dataset)
    cases.prepare(progress=False)
    case_ids = cases.cached_case_ids()[: args.cases]
    reference = dataset.manifest.modality_names.index(dataset.manifest.reference_modality)
    images, labels = [], []
    for case_id in case_ids:
        case = cases.load(case_id)
        with_target = np.flatnonzero(case.label.any(axis=(1, 2)))
        for z in with_target[np.linspace(0, len(with_target) - 1, args.slices_per_case).round().astype(int)]:
            images.append(case.image[reference, z])
            labels.append(case.label[z])
    images_t = torch.from_numpy(np.asarray(images, np.float32))[:, None]
    threads, native = torch.get_num_threads(), cpu_has_bf16()
    print(f"{len(images)} slices of {len(case_ids)} cases, {threads} threads, bf16 native on this CPU: {native}")

    encoder = FrozenImageEncoder()
    encode(encoder, images_t[:2], "fp32"), encode(encoder, images_t[:2], "bf16")  # warm-up
    fp32, fp32_s = encode(encoder, images_t, "fp32")
    bf16, bf16_s = encode(encoder, images_t, "bf16")
    fp32, bf16 = fp32.half().float(), bf16.half().float()  # what the cache stores
    relative = ((bf16 - fp32).norm(dim=1) / fp32.norm(dim=1)).flatten()  # per embedding position
    print(f"fp32 {fp32_s:.3f} s per image, bf16 {bf16_s:.3f} s per image ({fp32_s / bf16_s:.2f}x)")
    print(
        f"bf16 vs fp32 embeddings, relative error per position: median {relative.median():.4f}, "
        f"p99 {relative.quantile(0.99):.4f}"
    )

    truth = np.asarray(labels)
    box_reference = BoxRefiner(list(targets.values()))  # the frozen box decoder, prompted with each class's box
    for name, embeddings in (("fp32", fp32), ("bf16", bf16)):
        predicted = box_reference.box_prompted(truth, embeddings[:, None].numpy())
        dice = [postprocess.dice(predicted == v, truth == v) for v in targets.values()]
        print(
            f"box reference from {name} embeddings, Dice over the slices: "
            + " ".join(f"{t} {d:.4f}" for t, d in zip(targets, dice, strict=True))
        )


if __name__ == "__main__":
    main()
