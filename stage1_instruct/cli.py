"""``zeus instructions``: run stage 1 on a dataset (the default command) or show a case's instructions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from shared.instructions import PRESETS
from stage1_instruct.config import Stage1Config


class _RunByDefault(TyperGroup):
    """``zeus instructions DATASET ...`` means ``zeus instructions run DATASET ...``."""

    def resolve_command(self, ctx, args):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args.insert(0, "run")
        return super().resolve_command(ctx, args)


app = typer.Typer(cls=_RunByDefault, no_args_is_help=True, help="Stage 1: write and cache text instructions.")

DatasetArg = Annotated[str, typer.Argument(help="Built-in manifest name, manifest .json, or dataset folder.")]
RootOpt = Annotated[Path | None, typer.Option("--root", help="Folder holding the dataset.")]


@app.command("run")
def run(
    dataset: DatasetArg,
    root: RootOpt = None,
    case: Annotated[list[str] | None, typer.Option("--case", "--cases", help="Only these cases (repeatable).")] = None,
    backend: Annotated[str, typer.Option(help=f"Preset for all three steps: {', '.join(PRESETS)}.")] = "offline",
    describe: Annotated[str | None, typer.Option(help="Describe backend: image-facts, transformers, vllm.")] = None,
    instruct: Annotated[str | None, typer.Option(help="Instruct backend: transformers, template, vllm.")] = None,
    embed: Annotated[str | None, typer.Option(help="Embed backend: sentence-transformers, transformers, vllm.")] = None,
    vlm: Annotated[str | None, typer.Option(help="Vision-language model id or path (describe).")] = None,
    llm: Annotated[str | None, typer.Option(help="LLM id or path (instruct); default SmolLM2-135M.")] = None,
    embedder: Annotated[str | None, typer.Option(help="Text encoder id or path; default all-MiniLM-L6-v2.")] = None,
    tag: Annotated[str | None, typer.Option(help="Store folder name (default: describe.instruct.embed).")] = None,
    shard: Annotated[str, typer.Option(help="Worker i of n: i/n (e.g. $SLURM_ARRAY_TASK_ID/8).")] = "0/1",
    engine: Annotated[str, typer.Option(help="local, or ray (Ray Data over the cases).")] = "local",
    ray_workers: Annotated[int, typer.Option(min=1, help="Ray: concurrent model replicas.")] = 1,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 64,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    image_size: Annotated[int, typer.Option(help="Preprocessed slice size (pixels).")] = Stage1Config.image_size,
    tensor_parallel_size: Annotated[int, typer.Option(min=1, help="vLLM.")] = 1,
    data_parallel_size: Annotated[int, typer.Option(min=1, help="vLLM.")] = 1,
    max_num_seqs: Annotated[int, typer.Option(min=1, help="vLLM.")] = 64,
    gpu_memory_utilization: Annotated[float, typer.Option(help="vLLM.")] = 0.85,
    max_model_len: Annotated[int, typer.Option(min=256, help="vLLM.")] = 4096,
) -> None:
    """Describe -> instruct -> embed every slice x modality x target, cached in Parquet; reruns skip cached work."""
    from shared.errors import ZeusError
    from shared.manifest import resolve_dataset
    from stage1_instruct.config import VllmOptions
    from stage1_instruct.runners import Shard, run_local, run_ray

    steps = {k: v for k, v in (("describe", describe), ("instruct", instruct), ("embed", embed)) if v}
    config = Stage1Config.from_preset(
        backend,
        **steps,
        vlm=vlm,
        llm=llm,
        embedder=embedder,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        image_size=image_size,
        tag=tag,
        vllm=VllmOptions(tensor_parallel_size, data_parallel_size, max_num_seqs, gpu_memory_utilization, max_model_len),
    )
    ds = resolve_dataset(dataset, root)
    if engine == "local":
        report = run_local(ds, config, case, Shard.parse(shard))
    elif engine == "ray":
        report = run_ray(ds, config, case, workers=ray_workers)
    else:
        raise ZeusError(f"--engine must be local or ray, got {engine!r}")
    typer.echo(report.summary())


@app.command("stats")
def stats(
    dataset: DatasetArg,
    root: RootOpt = None,
    tag: Annotated[str, typer.Option(help="Store folder.")] = PRESETS["offline"].tag,
) -> None:
    """Per target: distinct instructions, their sources (LLM kept, template fallback...), and the embeddings'
    mean cosine similarity within the target and across targets."""
    from shared.instructions import InstructionStore
    from shared.manifest import resolve_dataset
    from stage1_instruct.stats import format_statistics, store_statistics

    ds = resolve_dataset(dataset, root)
    store = InstructionStore.of(ds.name, tag)
    typer.echo(f"{store.folder}: {len(store.case_ids())} case(s)")
    typer.echo(format_statistics(store_statistics(store.read())))


@app.command("show")
def show(
    dataset: DatasetArg,
    case: Annotated[str, typer.Option("--case", help="Case id.")],
    root: RootOpt = None,
    tag: Annotated[str, typer.Option(help="Store folder.")] = PRESETS["offline"].tag,
    slice_index: Annotated[int | None, typer.Option("--slice", help="Only this slice.")] = None,
    target: Annotated[str | None, typer.Option(help="Only this target.")] = None,
    descriptions: Annotated[bool, typer.Option(help="Also print the descriptions.")] = False,
) -> None:
    """Print the instructions of one case."""
    import pyarrow.compute as pc

    from shared.errors import ZeusError
    from shared.instructions import InstructionStore
    from shared.manifest import resolve_dataset

    ds = resolve_dataset(dataset, root)
    store = InstructionStore.of(ds.name, tag)
    table = store.read_case(case)
    if table is None:
        raise ZeusError(f"no instructions for case {case!r} in {store.folder}: run `zeus instructions {dataset}`")
    if slice_index is not None:
        table = table.filter(pc.equal(table["slice_index"], slice_index))
    if target is not None:
        table = table.filter(pc.equal(table["target"], target))
    for row in table.select(
        ["slice_index", "modality", "target", "has_body", "description", "instruction"]
    ).to_pylist():
        typer.echo(f"[slice {row['slice_index']:3d}] {row['modality']:>8s} | {row['target']}: {row['instruction']}")
        if descriptions:
            typer.echo(f"    {row['description']}")
