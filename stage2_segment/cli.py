"""``zeus train``: train the Zeus segmenter on a dataset's cached instructions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def train(
    dataset: Annotated[str, typer.Argument(help="Built-in manifest name, manifest .json, or dataset folder.")] = "demo",
    root: Annotated[Path | None, typer.Option("--root", help="Folder holding the dataset.")] = None,
    model: Annotated[str, typer.Option(help="zeus, or unet (a 2-D U-Net from scratch: the baseline).")] = "zeus",
    fusion: Annotated[str, typer.Option(help="early, hybrid or late.")] = "late",
    encoder: Annotated[str, typer.Option(help="Frozen image encoder: litemedsam, or sam-vit-b.")] = "litemedsam",
    encoder_checkpoint: Annotated[
        Path | None, typer.Option(help="SAM / MedSAM ViT-B checkpoint (.pth) for --encoder sam-vit-b.")
    ] = None,
    text: Annotated[
        str, typer.Option(help="instructions, template (no-LLM instructions) or none (class tokens).")
    ] = "instructions",
    instructions_tag: Annotated[str | None, typer.Option(help="Stage-1 store folder (default from --text).")] = None,
    fold: Annotated[int, typer.Option(min=0)] = 0,
    epochs: Annotated[int, typer.Option(min=1)] = 10,
    batch_size: Annotated[int, typer.Option(min=1)] = 4,
    lr: Annotated[float, typer.Option()] = 3e-4,
    seed: int = 0,
    slices_per_epoch: Annotated[int | None, typer.Option(help="Sample this many training slices per epoch.")] = None,
    early_stopping: Annotated[int | None, typer.Option(help="Patience in epochs (validation Dice).")] = None,
    num_workers: Annotated[int, typer.Option(min=0, help="Data-loader processes.")] = 0,
    run_name: Annotated[str | None, typer.Option(help="Run folder name (default: fusion__text__fold).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run from its last checkpoint.")] = False,
) -> None:
    """Train on cached image and instruction embeddings (the LLM is never loaded). Under torchrun: DDP."""
    from shared.manifest import resolve_dataset
    from stage2_segment.train import TrainConfig
    from stage2_segment.train import train as run

    config = TrainConfig(
        model=model,
        encoder=encoder,
        encoder_checkpoint=str(encoder_checkpoint) if encoder_checkpoint else None,
        fusion=fusion,
        text=text,
        instructions_tag=instructions_tag,
        fold=fold,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        slices_per_epoch=slices_per_epoch,
        early_stopping=early_stopping,
        num_workers=num_workers,
        run_name=run_name,
    )
    result = run(resolve_dataset(dataset, root), config, resume=resume)
    best = result["best_val_dice"]
    typer.echo(f"trained {result['epochs']} epoch(s); best validation Dice {best:.4f} -> {result['run_dir']}")
