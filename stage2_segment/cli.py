"""``zeus train`` and ``zeus evaluate``: stage 2's commands (the ``zeus`` root in ``zeus.cli`` mounts them)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stage2_segment.config import RECIPE_AUGMENT_COPIES, RECIPE_SLICE_CONTEXT, TrainConfig, parse_duration

# Options `zeus ablate` shares with `zeus train` whose default depends on --model (resolved by TrainConfig).
AugmentCopies = Annotated[
    int | None,
    typer.Option(
        min=0,
        help=f"Augmented copies per training case (rotation, scale, shift, gamma; no flips); default "
        f"{RECIPE_AUGMENT_COPIES} for zeus, 0 otherwise.",
    ),
]
SliceContext = Annotated[
    int | None,
    typer.Option(
        min=0,
        help=f"2.5-D: neighbouring slices on either side each slice's embedding takes in; default "
        f"{RECIPE_SLICE_CONTEXT} for zeus, 0 otherwise.",
    ),
]


def train(
    dataset: Annotated[str, typer.Argument(help="Built-in manifest name, manifest .json, or dataset folder.")] = "demo",
    root: Annotated[Path | None, typer.Option("--root", help="Folder holding the dataset.")] = None,
    model: Annotated[
        str, typer.Option(help="zeus; unet (2-D U-Net from scratch); litemedsam-boxes (reference, GT boxes).")
    ] = TrainConfig.model,
    fusion: Annotated[str, typer.Option(help="early, hybrid or late.")] = TrainConfig.fusion,
    decoder: Annotated[
        str, typer.Option(help="per-target (a decoder pass per target) or joint (all targets in one pass).")
    ] = TrainConfig.decoder,
    encoder: Annotated[str, typer.Option(help="Frozen image encoder: litemedsam, or sam-vit-b.")] = TrainConfig.encoder,
    encoder_checkpoint: Annotated[
        Path | None, typer.Option(help="SAM / MedSAM ViT-B checkpoint (.pth) for --encoder sam-vit-b.")
    ] = None,
    text: Annotated[
        str,
        typer.Option(
            help="instructions, template (no-LLM instructions), none (class tokens) or shuffled (each slice "
            "given another slice's instruction: the control of `zeus ablate`)."
        ),
    ] = TrainConfig.text,
    instructions_tag: Annotated[str | None, typer.Option(help="Stage-1 store folder (default from --text).")] = None,
    fold: Annotated[int, typer.Option(min=0)] = TrainConfig.fold,
    epochs: Annotated[int, typer.Option(min=1)] = TrainConfig.epochs,
    batch_size: Annotated[int, typer.Option(min=1)] = TrainConfig.batch_size,
    lr: Annotated[float, typer.Option(help="Learning rate at batch size 4 (see --lr-scaling).")] = TrainConfig.lr,
    lr_scaling: Annotated[
        str, typer.Option(help="Scale --lr with --batch-size from 4: none, linear or sqrt (large GPU batches).")
    ] = TrainConfig.lr_scaling,
    warmup_steps: Annotated[
        int, typer.Option(min=0, help="Linear learning-rate warm-up, in steps.")
    ] = TrainConfig.warmup_steps,
    ema_decay: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=0.9999,
            help="Validate, keep and predict with a moving average of the weights, updated every step with this "
            "decay (e.g. 0.99); 0: off.",
        ),
    ] = TrainConfig.ema_decay,
    seed: int = TrainConfig.seed,
    precision: Annotated[
        str, typer.Option(help="auto (bf16 on CUDA and on CPUs with native bf16, else fp32), fp32, or bf16 (autocast).")
    ] = TrainConfig.precision,
    encoder_precision: Annotated[
        str,
        typer.Option(help="The frozen encoder's precision when it caches image embeddings: auto, fp32 or bf16."),
    ] = TrainConfig.encoder_precision,
    augment_copies: AugmentCopies = None,
    slice_context: SliceContext = None,
    slices_per_epoch: Annotated[int | None, typer.Option(help="Sample this many training slices per epoch.")] = None,
    time_budget: Annotated[
        str | None,
        typer.Option(help="Wall time for the whole command, e.g. 60m: epochs are planned from the measured step time."),
    ] = None,
    early_stopping: Annotated[int | None, typer.Option(help="Patience in epochs (validation Dice).")] = None,
    num_workers: Annotated[int, typer.Option(min=0, help="Data-loader processes.")] = TrainConfig.num_workers,
    compile: Annotated[
        bool, typer.Option("--compile/--no-compile", help="torch.compile the training step's model (GPU).")
    ] = TrainConfig.compile,
    data_on_device: Annotated[
        bool | None,
        typer.Option(
            "--data-on-device/--data-from-loader",
            help="Hold the training set on the device and index batches there (default: on CUDA only).",
        ),
    ] = None,
    image_size: Annotated[
        int, typer.Option(help="Model slice size (pixels): the size the dataset was prepared at.")
    ] = TrainConfig.image_size,
    run_name: Annotated[str | None, typer.Option(help="Run folder name (default: fusion__text__fold).")] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue the run from its last checkpoint (start it if it has none).")
    ] = False,
) -> None:
    """Train on cached image and instruction embeddings (the LLM is never loaded). Under torchrun: DDP."""
    from shared.manifest import resolve_dataset
    from stage2_segment.train import train as run

    config = TrainConfig(
        model=model,
        encoder=encoder,
        encoder_checkpoint=str(encoder_checkpoint) if encoder_checkpoint else None,
        fusion=fusion,
        decoder=decoder,
        text=text,
        instructions_tag=instructions_tag,
        fold=fold,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        lr_scaling=lr_scaling,
        warmup_steps=warmup_steps,
        ema_decay=ema_decay,
        seed=seed,
        precision=precision,
        encoder_precision=encoder_precision,
        augment_copies=augment_copies,
        slice_context=slice_context,
        slices_per_epoch=slices_per_epoch,
        early_stopping=early_stopping,
        time_budget=parse_duration(time_budget) if time_budget else None,
        num_workers=num_workers,
        compile=compile,
        data_on_device=data_on_device,
        image_size=image_size,
        run_name=run_name,
    )
    result = run(resolve_dataset(dataset, root), config, resume=resume)
    typer.echo(f"trained {result.epochs} epoch(s); best validation Dice {result.best_val_dice:.4f} -> {result.run_dir}")


def evaluate(
    run: Annotated[Path | None, typer.Option(help="Run folder: predict and score its held-out cases.")] = None,
    split: Annotated[str, typer.Option(help="With --run: test, or val (the run's validation fold).")] = "test",
    pred: Annotated[Path | None, typer.Option(help="Prediction NIfTI file or folder (with --gt).")] = None,
    gt: Annotated[Path | None, typer.Option(help="Ground-truth NIfTI file or folder, matched by file name.")] = None,
    dataset: Annotated[
        str | None, typer.Option(help="With --pred/--gt: take class names and values from this dataset.")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Output folder for --pred/--gt (default: <pred folder>/evaluation).")
    ] = None,
    root: Annotated[Path | None, typer.Option("--root", help="Where the run's dataset is now.")] = None,
) -> None:
    """Dice, IoU and HD95 (mm) per case x class in the original geometry, and per 2-D slice: CSV + summary JSON."""
    from shared.errors import ZeusError
    from shared.manifest import resolve_manifest
    from shared.paths import output_folder
    from stage2_segment.evaluate import evaluate_files, evaluate_run, format_summary
    from stage2_segment.runs import RunFolder

    if run is not None and (pred or gt):
        raise ZeusError("give either --run, or --pred with --gt, not both")
    if run is not None:
        if out is not None:
            raise ZeusError("--out is for --pred/--gt; a run's evaluation goes to <run>/evaluation/<split>")
        summary = evaluate_run(run, split=split, root=root)
        folder = RunFolder(run).evaluation(split).path
    elif pred is not None and gt is not None:
        targets = resolve_manifest(dataset).targets if dataset else None
        folder = output_folder(out or (pred if pred.is_dir() else pred.parent) / "evaluation", "--out")
        summary = evaluate_files(pred, gt, folder, targets)
    else:
        raise ZeusError("nothing to evaluate: pass --run RUN, or --pred P --gt G")
    typer.echo(format_summary(summary))
    typer.echo(f"{summary.cases} case(s) -> {folder}/cases.csv, slices.csv, summary.json")


def postprocess(
    run: Annotated[Path, typer.Argument(help="Run folder.")],
) -> None:
    """Decide the run's 3-D post-processing on its validation cases (``zeus train`` does this itself; this is
    for runs trained before it did): per class, keep the largest connected component, then redraw the class with
    the box-prompted decoder inside the boxes of its prediction, each step where it raises validation Dice."""
    from stage2_segment.finalize import decide_for_run

    decision = decide_for_run(run)
    if decision is None:
        typer.echo(f"{run} has no validation cases: no post-processing")
        return
    for name, raw in decision.val_dice_raw.items():
        kept, refined = decision.val_dice_largest_component[name], decision.val_dice_box_refined.get(name)
        piece = decision.val_dice_box_refined_piece.get(name)
        steps = [step for step, classes in decision.steps.items() if name in classes]
        typer.echo(
            f"{name:20s} validation Dice raw {_number(raw)}, largest component {_number(kept)}, "
            f"box-refined {_number(refined)} (largest pieces {_number(piece)}) -> {' + '.join(steps) or 'raw'}"
        )


def ensemble(
    runs: Annotated[
        list[Path],
        typer.Argument(
            help="Run folders of one dataset (2 or more): seeds or settings of one fold, or the folds of a "
            "cross-validation, whose validation cases each member predicts only for its own fold."
        ),
    ],
    name: Annotated[str, typer.Option(help="The ensemble's run folder name (beside the members).")],
    root: Annotated[Path | None, typer.Option("--root", help="Where the runs' dataset is now.")] = None,
) -> None:
    """Ensemble trained runs (nnU-Net style): their softmax probabilities averaged, post-processing decided for
    the ensemble on the members' validation cases (each predicted by the members that did not train on it), then
    evaluated on the test cases (on the validation cases, out of fold, where the split has no test set). The
    ensemble is a run folder: `zeus predict --run` and `zeus report` take it like any run."""
    from stage2_segment.evaluate import format_summary
    from stage2_segment.finalize import ensemble_and_evaluate

    folder, summary = ensemble_and_evaluate(runs, name, root=root)
    typer.echo(format_summary(summary))
    typer.echo(f"ensemble of {len(runs)} runs -> {folder.path}")


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
