"""Benchmark stage 2 on the demo data (CPU here; CUDA when available).

1. training slices/s with cached image embeddings vs recomputing the frozen encoder every step, against the
   FLOP bound (75 + 10.8 P) / (10.8 P) for P decoder prompts per encoded image (docs/architecture.md);
2. data pipeline: steps/s through the real loader (memory-mapped embeddings, Parquet instructions) vs the
   same batches held in memory (target >= 90 %);
3. per fusion (and the U-Net baseline): a short training run in its own process, its peak memory (target
   <= 4 GiB) and validation Dice per class.

    python benchmarks/train.py [--epochs 3] [--slices-per-epoch 32] [--skip-fusions]

Needs the demo prepared with instructions (``make demo``, or it runs ``zeus demo-data`` etc. itself).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

from shared.instructions import PRESETS

TAG = PRESETS["template"].tag


def _setup_demo() -> None:
    """Demo data, preprocessing and template instructions, each skipped when already there."""
    from shared.demo import write_demo
    from shared.manifest import resolve_dataset
    from shared.workspace import demo_dir
    from stage1_instruct.config import Stage1Config
    from stage1_instruct.runners import run_local

    if not (demo_dir() / "Task90_ZeusDemo" / "dataset.json").is_file():
        write_demo(demo_dir(), progress=False)
    run_local(resolve_dataset("demo"), Stage1Config(instruct="template"), progress=False)


def _step_rate(model, optimizer, batches, encoder=None) -> float:
    from stage2_segment.losses import union_loss

    start = time.perf_counter()
    for inputs, text, label in batches:
        if encoder is not None:  # recompute the frozen encoder, as training without the cache would
            inputs = encoder(inputs)[:, None]
        loss = union_loss(model(inputs, text), label)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return len(batches) / (time.perf_counter() - start)


def cache_speedup(steps: int) -> dict:
    from shared.cases import CaseCache
    from shared.manifest import resolve_dataset
    from stage2_segment.data import SliceDataset
    from stage2_segment.features import FeatureCache
    from stage2_segment.instructions import InstructionTable
    from stage2_segment.modeling.encoders import FrozenImageEncoder
    from stage2_segment.modeling.segmenter import SegmenterConfig, ZeusSegmenter

    dataset = resolve_dataset("demo")
    cases = CaseCache(dataset, 256)
    cases.prepare(progress=False)
    encoder = FrozenImageEncoder.early_fusion(3)
    features = FeatureCache(cases, encoder, early=True)
    features.ensure(["demo_001"], progress=False)
    data = SliceDataset(["demo_001"], cases, features, InstructionTable(dataset.manifest, TAG))
    images = torch.from_numpy(cases.load("demo_001", with_label=False).image)  # C x Z x S x S
    samples = [data[z] for z in range(steps)]
    cached = [(s["inputs"][None], s["text"][None], s["label"][None]) for s in samples]
    raw = [(images[:, z][None], s["text"][None], s["label"][None]) for z, s in enumerate(samples)]
    model = ZeusSegmenter(SegmenterConfig(fusion="early", num_modalities=3, num_targets=4))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    _step_rate(model, optimizer, cached[:1])  # warm up
    with_cache = _step_rate(model, optimizer, cached)
    without = _step_rate(model, optimizer, raw, encoder=encoder)

    # The loader against in-memory batches, batch 4 as in training.
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    start = time.perf_counter()
    n = 0
    for batch in loader:
        loss = model(batch["inputs"], batch["text"]).float().mean()
        loss.backward()
        n += 1
    through_loader = n / (time.perf_counter() - start)
    held = list(loader)
    start = time.perf_counter()
    for batch in held:
        model(batch["inputs"], batch["text"]).float().mean().backward()
    in_memory = len(held) / (time.perf_counter() - start)
    prompts = 4  # early fusion: one encoded image per slice, decoded once per target
    return {
        "cached_slices_per_s": with_cache,
        "recompute_slices_per_s": without,
        "speedup": with_cache / without,
        "bound": (75 + 10.8 * prompts) / (10.8 * prompts),
        "loader_steps_per_s": through_loader,
        "memory_steps_per_s": in_memory,
    }


def _train_run(model: str, fusion: str, epochs: int, slices: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(os.cpu_count() or 1)}
    start = time.perf_counter()
    run_name = f"bench_{model}_{fusion}"
    command = [
        sys.executable,
        __file__,
        "--phase",
        "train",
        "--model",
        model,
        "--fusion",
        fusion,
        "--epochs",
        str(epochs),
        "--slices-per-epoch",
        str(slices),
        "--run-name",
        run_name,
    ]
    out = subprocess.run(command, env=env, check=True, capture_output=True, encoding="utf-8").stdout
    result = json.loads(out.strip().splitlines()[-1])
    result["seconds"] = time.perf_counter() - start
    return result


def phase_train(args) -> dict:
    from shared.manifest import resolve_dataset
    from stage2_segment.config import TrainConfig
    from stage2_segment.runs import RunFolder
    from stage2_segment.train import train

    config = TrainConfig(
        model=args.model,
        fusion=args.fusion,
        text="template",
        epochs=args.epochs,
        slices_per_epoch=args.slices_per_epoch,
        run_name=args.run_name,
        batch_size=4,
    )
    trained = train(resolve_dataset("demo"), config, progress=False)
    rows = RunFolder(trained.run_dir).read_log()
    best = max(rows, key=lambda r: r["val_dice"] or 0)
    return {
        "epochs": trained.epochs,
        "best_val_dice": trained.best_val_dice,
        "run_dir": str(trained.run_dir),
        "dice": {k[5:]: best[k] for k in best if k.startswith("dice_")},
        "peak_mib": _peak_mib(),
    }


def _peak_mib() -> float:
    """This process's peak resident memory. VmHWM belongs to the process image, so unlike ``ru_maxrss`` (which
    Linux carries across exec) it does not include the parent's memory at the time it was started."""
    with open("/proc/self/status", encoding="utf-8") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--slices-per-epoch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--skip-fusions", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--runs", default="early,hybrid,late,unet", help="which trainings to run")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--model", default="zeus", help=argparse.SUPPRESS)
    parser.add_argument("--fusion", default="late", help=argparse.SUPPRESS)
    parser.add_argument("--run-name", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase == "train":
        print(json.dumps(phase_train(args)))
        return

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _setup_demo()
    print(f"device: {'cuda' if torch.cuda.is_available() else 'cpu'}, torch threads {torch.get_num_threads()}")
    if not args.skip_speed:
        _print_speed(cache_speedup(args.steps))
    if args.skip_fusions:
        return
    for name in args.runs.split(","):
        model, fusion = ("unet", "late") if name == "unet" else ("zeus", name)
        result = _train_run(model, fusion, args.epochs, args.slices_per_epoch)
        dice = ", ".join(f"{k} {float(v):.3f}" if v else f"{k} n/a" for k, v in result["dice"].items())
        print(
            f"{name:7s}: {args.epochs} epochs x {args.slices_per_epoch} slices in {result['seconds']:.0f} s, "
            f"peak memory {result['peak_mib']:.0f} MiB, best val Dice {result['best_val_dice']:.3f} ({dice})"
        )


def _print_speed(r: dict) -> None:
    print(
        f"cached embeddings: {r['cached_slices_per_s']:.2f} slices/s; recomputing the encoder: "
        f"{r['recompute_slices_per_s']:.2f} slices/s; speed-up {r['speedup']:.1f}x (FLOP bound {r['bound']:.1f}x "
        "at 4 prompts per encoded image)"
    )
    print(
        f"data pipeline: {r['loader_steps_per_s']:.2f} steps/s through the loader vs {r['memory_steps_per_s']:.2f} "
        f"in memory = {100 * r['loader_steps_per_s'] / r['memory_steps_per_s']:.0f} %"
    )


if __name__ == "__main__":
    main()
