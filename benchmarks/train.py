"""Benchmark stage 2 on the demo data (CPU here; CUDA when available).

1. training slices/s with cached image embeddings vs recomputing the frozen encoder every step, against the
   FLOP bound (75 + 10.8 P) / (10.8 P) for P decoder prompts per encoded image (docs/architecture.md);
2. data pipeline: steps/s through the real loader (memory-mapped embeddings, Parquet instructions) vs the
   same batches held in memory (target >= 90 %);
3. per fusion (and the U-Net baseline): a short training run in its own process, its peak memory (target
   <= 4 GiB) and validation Dice per class;
4. the decoder step against its FLOP floor, per decoding (per-target, joint), batch size and precision, each in
   its own process: FLOPs per step (torch's FLOP counter, forward + backward), steps/s, achieved FLOP/s, the
   machine's peak (a measured large matmul in the same precision), the ratio of the step's time to its floor
   (FLOPs / peak), and peak memory (CUDA: allocator peak; CPU: the process's resident peak).

    python benchmarks/train.py [--epochs 3] [--slices-per-epoch 32] [--skip-fusions]
    python benchmarks/train.py --skip-speed --skip-fusions --decoder-batches 1,4,16 --precisions fp32,bf16

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


def phase_decoder(args) -> dict:
    """One decoding x batch size x precision: a late-fusion training step on random inputs of real shapes (the
    decoder's cost does not depend on the values), 4 targets, the demo's 3 modalities."""
    from torch.utils.flop_counter import FlopCounterMode

    from stage2_segment.losses import union_loss
    from stage2_segment.modeling.segmenter import SegmenterConfig, ZeusSegmenter

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if args.precision == "bf16" else None
    config = SegmenterConfig(fusion="late", num_modalities=3, num_targets=4, decoder=args.decoder)
    model = ZeusSegmenter(config).to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    b = args.batch
    images = torch.randn(b, 3, 256, 64, 64, device=device)
    text = torch.randn(b, 4, 4, 384, device=device)
    label = torch.randint(0, 5, (b, 256, 256), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(images, text)
        loss = union_loss(logits, label)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    flops = counter.get_total_flops()
    for _ in range(2):
        step()  # warm up
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start, steps = time.perf_counter(), 0
    while steps < args.decoder_steps or time.perf_counter() - start < 2.0:
        step()
        steps += 1
        _sync(device)
    seconds = (time.perf_counter() - start) / steps
    peak = _matmul_peak(device, dtype or torch.float32)
    memory = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else _peak_mib()
    return {
        "device": device.type,
        "flops_per_step": flops,
        "steps_per_s": 1 / seconds,
        "achieved_flops": flops / seconds,
        "peak_flops": peak,
        "floor_ratio": seconds / (flops / peak),
        "peak_mib": memory,
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 4096) -> float:
    """FLOP/s of a large square matmul in ``dtype``: what this machine does at best in that precision."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    _sync(device)
    start, reps = time.perf_counter(), 0
    while reps < 3 or time.perf_counter() - start < 1.0:
        a @ b
        reps += 1
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start)


def decoder_runs(decoders: list[str], batches: list[int], precisions: list[str], steps: int) -> None:
    for decoder in decoders:
        for precision in precisions:
            for batch in batches:
                command = [sys.executable, __file__, "--phase", "decoder", "--decoder", decoder]
                command += ["--batch", str(batch), "--precision", precision, "--decoder-steps", str(steps)]
                out = subprocess.run(command, check=True, capture_output=True, encoding="utf-8").stdout
                r = json.loads(out.strip().splitlines()[-1])
                print(
                    f"decoder {decoder:10s} {precision} batch {batch:3d} ({r['device']}): "
                    f"{r['flops_per_step'] / 1e9:7.1f} GFLOP/step, {r['steps_per_s']:6.2f} steps/s, "
                    f"{r['achieved_flops'] / 1e9:8.1f} GFLOP/s of {r['peak_flops'] / 1e9:8.1f} peak, "
                    f"{r['floor_ratio']:5.1f}x the floor, peak memory {r['peak_mib']:.0f} MiB"
                )


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
    parser.add_argument("--decoders", default="per-target,joint", help="decodings for the FLOP-floor table")
    parser.add_argument("--decoder-batches", default="1,4,16", help="batch sizes for the FLOP-floor table")
    parser.add_argument("--precisions", default="fp32,bf16", help="fp32 and/or bf16 (autocast)")
    parser.add_argument("--decoder-steps", type=int, default=3, help="timed steps per decoder configuration")
    parser.add_argument("--skip-decoder", action="store_true")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--decoder", default="joint", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=4, help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--model", default="zeus", help=argparse.SUPPRESS)
    parser.add_argument("--fusion", default="late", help=argparse.SUPPRESS)
    parser.add_argument("--run-name", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase == "train":
        print(json.dumps(phase_train(args)))
        return
    if args.phase == "decoder":
        print(json.dumps(phase_decoder(args)))
        return
    if not args.skip_decoder:
        batches = [int(b) for b in args.decoder_batches.split(",")]
        decoder_runs(args.decoders.split(","), batches, args.precisions.split(","), args.decoder_steps)

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
