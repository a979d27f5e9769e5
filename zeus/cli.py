"""The ``zeus`` command line: thin typer commands that parse options and call typed functions."""

from __future__ import annotations

import errno
import json
import logging
import os
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from shared.errors import DataError, ZeusError
from shared.preprocess import DEFAULT_IMAGE_SIZE
from stage1_instruct.cli import app as instructions_app
from stage2_segment.cli import AugmentCopies, SliceContext
from stage2_segment.cli import ensemble as ensemble_command
from stage2_segment.cli import evaluate as evaluate_command
from stage2_segment.cli import postprocess as postprocess_command
from stage2_segment.cli import train as train_command
from stage2_segment.config import TEXT_MODES, TrainConfig


class _UserErrors(TyperGroup):
    """Print a ``ZeusError`` (or a file-system error: full disk, no permission, a file where a folder belongs)
    as a plain message naming the file, without a traceback, and exit non-zero."""

    def invoke(self, ctx: typer.Context):
        try:
            return super().invoke(ctx)
        except DataError as e:
            typer.secho(f"{len(e.problems)} problem(s):", fg="red", err=True)
            for problem in e.problems:
                typer.echo(f"  {problem}", err=True)
            raise typer.Exit(1) from None
        except ZeusError as e:
            typer.secho(f"error: {e}", fg="red", err=True)
            raise typer.Exit(2) from None
        except OSError as e:
            typer.secho(f"error: {_describe_os_error(e)}", fg="red", err=True)
            raise typer.Exit(3) from None


def _describe_os_error(e: OSError) -> str:
    where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None) or "a file"
    advice = {
        errno.ENOSPC: "free some disk space (or set ZEUS_HOME to a larger disk) and rerun: finished files are kept",
        errno.EACCES: "check the permissions, or choose another folder",
        errno.EROFS: "the file system is read-only: choose another folder (or ZEUS_HOME)",
        errno.ENOTDIR: "a file stands where a folder is needed (is ZEUS_HOME or an output path a file?)",
        errno.EEXIST: "a file stands where a folder is needed (is ZEUS_HOME or an output path a file?)",
        errno.EISDIR: "a folder stands where a file is needed: give a file path",
    }.get(e.errno or 0, "check the path and rerun")
    return f"{e.strerror or e}: {where}; {advice}"


app = typer.Typer(
    cls=_UserErrors,
    no_args_is_help=True,
    add_completion=False,
    help="Zeus: text-instructed multimodal medical image segmentation.",
)
data_app = typer.Typer(no_args_is_help=True, help="Check, fingerprint and prepare datasets.")
app.add_typer(data_app, name="data")
app.add_typer(instructions_app, name="instructions")
app.command("train")(train_command)
app.command("evaluate")(evaluate_command)
app.command("postprocess")(postprocess_command)
app.command("ensemble")(ensemble_command)

DatasetArg = Annotated[
    str,
    typer.Argument(
        help="Built-in manifest name (chaos, chaos_ct, msd_prostate, msd_brain, demo), "
        "a manifest .json, or a folder holding an MSD / nnU-Net v2 dataset.json."
    ),
]
RootOpt = Annotated[
    Path | None, typer.Option("--root", help="Folder holding the dataset (default: from ZEUS_DATA_ROOT).")
]
CasesOpt = Annotated[list[str] | None, typer.Option("--case", help="Only these cases (repeatable).")]


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug messages.")] = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")


@app.command("demo-data")
def demo_data(
    out: Annotated[Path | None, typer.Option(help="Where to write (default: $ZEUS_HOME/demo).")] = None,
    cases: Annotated[int, typer.Option(min=1, help="Number of synthetic patients.")] = 6,
    slices: Annotated[int, typer.Option(min=2, help="Slices per volume.")] = 16,
    seed: int = 0,
    overwrite: Annotated[bool, typer.Option(help="Rewrite the files even if this demo is already there.")] = False,
) -> None:
    """Write the synthetic multimodal demo dataset in the MSD NIfTI and the CHAOS DICOM+PNG layouts."""
    from shared.demo import DemoConfig, write_demo
    from shared.workspace import demo_dir

    roots = write_demo(out or demo_dir(), DemoConfig(cases=cases, slices=slices, seed=seed), overwrite=overwrite)
    typer.echo(f"MSD layout:   {roots['msd']}   (zeus data check demo)")
    typer.echo(f"CHAOS layout: {roots['chaos']}   (zeus data check chaos --root {roots['chaos']})")


@data_app.command("check")
def data_check(dataset: DatasetArg, root: RootOpt = None, case: CasesOpt = None) -> None:
    """List every problem in a dataset's files (missing, unreadable, mismatched, bad labels); exit 1 if any."""
    from shared.check import check_dataset
    from shared.manifest import resolve_dataset

    ds = resolve_dataset(dataset, root)
    problems = check_dataset(ds, case)
    if problems:
        raise DataError(problems)
    typer.secho(f"{ds.name}: no problems found ({ds.root})", fg="green")


@data_app.command("fingerprint")
def data_fingerprint(
    dataset: DatasetArg,
    json_out: Annotated[Path, typer.Option("--json", help="Where to write the fingerprint JSON.")],
    root: RootOpt = None,
    case: CasesOpt = None,
) -> None:
    """Per-case shape, spacing, label voxel counts and raw intensity statistics on the reference grid."""
    from shared.atomic import write_json
    from shared.fingerprint import fingerprint_dataset
    from shared.manifest import resolve_dataset
    from shared.paths import output_file

    output_file(json_out, "--json")
    fingerprint = fingerprint_dataset(resolve_dataset(dataset, root), case)
    write_json(json_out, fingerprint)
    typer.echo(f"{len(fingerprint['cases'])} case(s) -> {json_out}")


@data_app.command("prepare")
def data_prepare(
    dataset: DatasetArg,
    root: RootOpt = None,
    case: CasesOpt = None,
    image_size: Annotated[int, typer.Option(help="Model input size (pixels, square).")] = DEFAULT_IMAGE_SIZE,
    overwrite: Annotated[bool, typer.Option(help="Rebuild cached cases.")] = False,
    workers: Annotated[int, typer.Option(min=1, help="Parallel processes.")] = min(4, os.cpu_count() or 1),
    folds: Annotated[int, typer.Option(min=1, help="Cross-validation folds for new splits.")] = 5,
    test_fraction: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=0.9,
            help="Share of the patients held out as the test set of new splits; 0: none, the folds cover every "
            "patient (cross-validation over all of a small dataset).",
        ),
    ] = 0.2,
    seed: Annotated[int, typer.Option(help="Seed for new splits.")] = 0,
    resplit: Annotated[bool, typer.Option(help="Replace the persisted splits.")] = False,
) -> None:
    """Co-register, normalise and cache every case (skipping cached ones), then persist patient-level splits."""
    from shared.cases import CaseCache
    from shared.manifest import resolve_dataset
    from shared.splits import ensure_splits
    from shared.workspace import splits_path

    ds = resolve_dataset(dataset, root)
    cache = CaseCache(ds, image_size)
    summary = cache.prepare(case, overwrite=overwrite, workers=workers)
    typer.echo(f"{ds.name}: {len(summary.built)} built, {len(summary.skipped)} already cached -> {cache.folder}")
    if summary.problems:
        raise DataError(summary.problems)
    if case is None:
        splits = ensure_splits(
            ds.name,
            summary.built + summary.skipped,
            folds=folds,
            test_fraction=test_fraction,
            seed=seed,
            overwrite=resplit,
        )
        train, val = splits.fold(0)
        typer.echo(
            f"splits: {len(splits.folds)} fold(s), fold 0 = {len(train)} train / {len(val)} val, "
            f"{len(splits.test)} test -> {splits_path(ds.name)}"
        )


@data_app.command("list")
def data_list() -> None:
    """The built-in dataset manifests."""
    from shared.manifest import MANIFEST_DIR, builtin_manifests

    for name in builtin_manifests():
        title = json.loads((MANIFEST_DIR / f"{name}.json").read_text(encoding="utf-8")).get("title", "")
        typer.echo(f"{name:14s} {title}")


@app.command("predict")
def predict(
    run: Annotated[Path, typer.Option(help="A trained run folder (runs/<dataset>/<run>).")],
    input: Annotated[
        list[str],
        typer.Option(
            "--input",
            help="The scan: a 4-D NIfTI, nnU-Net channel files (CASE_0000.nii.gz ...), MODALITY=PATH per modality "
            "(NIfTI file or DICOM folder), or a CHAOS patient folder. Repeatable. Or a folder of scans: imagesTs "
            "of an MSD / nnU-Net dataset, a CHAOS Test_Sets folder.",
        ),
    ],
    output: Annotated[Path, typer.Option(help="Folder for <case>.nii.gz (and probability maps).")],
    probabilities: Annotated[bool, typer.Option(help="Also write <case>_prob_<target>.nii.gz per target.")] = False,
    case_id: Annotated[str | None, typer.Option(help="Name of the case (default: from the file name).")] = None,
    overwrite: Annotated[
        bool, typer.Option(help="With a folder of scans: segment scans whose output exists too.")
    ] = False,
    root: Annotated[Path | None, typer.Option("--root", help="Where the run's dataset is now.")] = None,
) -> None:
    """Segment new scans: stage-1 instructions for them (cached), then the run's model; NIfTI on each scan's grid."""
    from shared.paths import output_folder
    from shared.readers.scan import is_scan_folder, scans_in_folder
    from stage2_segment.runs import RunFolder
    from zeus.pipeline import predict_scan, predict_scans

    output_folder(output, "--output")
    manifest = RunFolder(run).read_info().manifest if RunFolder(run).is_run() else None
    folder = Path(input[0]).expanduser() if len(input) == 1 else None
    if manifest is not None and folder is not None and is_scan_folder(manifest, folder):
        if case_id is not None:
            raise ZeusError("--case-id names one scan; a folder's scans are named by their files")
        done = predict_scans(
            run,
            scans_in_folder(manifest, folder),
            output,
            root=root,
            probability_maps=probabilities,
            overwrite=overwrite,
        )
        typer.echo(f"{len(done.written)} file(s) written to {output}; {len(done.skipped)} scan(s) skipped")
        if done.skipped:
            typer.echo(f"skipped (output exists; --overwrite to redo): {', '.join(done.skipped)}")
        return
    written = predict_scan(run, input, output, case_id=case_id, root=root, probability_maps=probabilities)
    for path in written:
        typer.echo(f"wrote {path}")


@app.command("ablate")
def ablate(
    dataset: Annotated[str, typer.Argument(help="Built-in manifest name, manifest .json, or dataset folder.")],
    root: Annotated[Path | None, typer.Option("--root", help="Folder holding the dataset.")] = None,
    seeds: Annotated[int, typer.Option(min=1, help="Seeds per text mode (seeds 0 .. N-1).")] = 3,
    texts: Annotated[str, typer.Option(help="Text modes to compare, comma-separated.")] = ",".join(TEXT_MODES),
    instructions_tag: Annotated[
        str | None,
        typer.Option(help="Store for every mode with text (default per mode); `shuffled` then shuffles this one."),
    ] = None,
    fusion: Annotated[str, typer.Option(help="early, hybrid or late.")] = TrainConfig.fusion,
    decoder: Annotated[str, typer.Option(help="per-target or joint.")] = TrainConfig.decoder,
    fold: Annotated[int, typer.Option(min=0)] = TrainConfig.fold,
    cross_validation: Annotated[
        bool,
        typer.Option(
            "--cross-validation",
            help="Train every fold of the split and compare the folds' ensembles (out of fold on every case where "
            "the split has no test set: `zeus data prepare --test-fraction 0`); --fold is then unused.",
        ),
    ] = False,
    jobs: Annotated[
        int, typer.Option(min=1, help="Runs trained at once, each in its own process (several fit on one GPU).")
    ] = 1,
    epochs: Annotated[int, typer.Option(min=1)] = TrainConfig.epochs,
    batch_size: Annotated[int, typer.Option(min=1)] = TrainConfig.batch_size,
    lr: Annotated[float, typer.Option()] = TrainConfig.lr,
    warmup_steps: Annotated[int, typer.Option(min=0)] = TrainConfig.warmup_steps,
    slices_per_epoch: Annotated[int | None, typer.Option(help="Sample this many training slices per epoch.")] = None,
    augment_copies: AugmentCopies = None,
    slice_context: SliceContext = None,
    precision: Annotated[str, typer.Option(help="auto, fp32 or bf16.")] = TrainConfig.precision,
    image_size: Annotated[int, typer.Option(help="Model slice size (pixels).")] = TrainConfig.image_size,
) -> None:
    """Does the text help? Train and evaluate every text mode with identical seeds, data order, epochs and fold
    (or every fold, --cross-validation; resumable); `zeus report` then shows the comparison with bootstrap
    intervals."""
    from shared.manifest import resolve_dataset
    from shared.splits import load_splits
    from zeus.ablation import AblationPlan, compare, conclusion, run_ablation

    ds = resolve_dataset(dataset, root)
    folds = tuple(range(len(load_splits(ds.name).folds))) if cross_validation else ()
    base = TrainConfig(
        instructions_tag=instructions_tag,
        fusion=fusion,
        decoder=decoder,
        fold=fold,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        warmup_steps=warmup_steps,
        slices_per_epoch=slices_per_epoch,
        augment_copies=augment_copies,
        slice_context=slice_context,
        precision=precision,
        image_size=image_size,
    )
    modes = tuple(t.strip() for t in texts.split(",") if t.strip())
    plan = AblationPlan(ds.name, base, modes, tuple(range(seeds)), folds)
    run_ablation(ds, plan, jobs=jobs)
    typer.echo(conclusion(compare(plan, list(ds.manifest.targets))))
    typer.echo(f'`zeus report {ds.name}` shows the table (section "Does the text help?").')


@app.command("report")
def report(
    dataset: Annotated[list[str] | None, typer.Argument(help="Datasets to report (default: all with runs).")] = None,
    out: Annotated[Path, typer.Option(help="Reports folder: <out>/<dataset>/report.{md,html}.")] = Path("reports"),
    screenshot: Annotated[bool, typer.Option(help="Also render report.png in headless chromium.")] = False,
    evaluate_first: Annotated[
        bool,
        typer.Option(
            "--evaluate/--no-evaluate",
            help="First evaluate runs with no test evaluation (validation, where the split has no test set), or "
            "one older than best.pt (an ensemble: than a member's best.pt; its post-processing is decided again "
            "too).",
        ),
    ] = False,
) -> None:
    """Results tables, ablations, costs, training curves, overlays and provenance: Markdown + one HTML file."""
    from stage2_segment.evaluate import evaluate_run
    from stage2_segment.finalize import decide_for_run
    from stage2_segment.runs import datasets_with_runs, pending_evaluations, reported_split
    from zeus.report.browser import screenshot as take_screenshot
    from zeus.report.build import build_reports

    failed = []
    if evaluate_first:
        for name in dataset or datasets_with_runs():
            split = reported_split(name)
            for run in pending_evaluations(name, split):
                typer.echo(f"evaluating {run.path} ({split})")
                try:
                    if run.read_info().ensemble and run.needs_decision():  # a member was retrained since
                        decide_for_run(run.path)
                    evaluate_run(run.path, split=split)
                except ZeusError as e:  # one bad run folder must not keep the others out of the report
                    typer.secho(f"error: not evaluated: {e}", fg="red", err=True)
                    failed.append(run.path)
    for html in build_reports(dataset, out):
        typer.echo(f"report: {html.with_suffix('.md')}")
        typer.echo(f"report: {html}")
        if screenshot:
            typer.echo(f"screenshot: {take_screenshot(html, html.with_name('report.png'))}")
    if failed:
        raise ZeusError(f"{len(failed)} run(s) could not be evaluated (see above): {', '.join(map(str, failed))}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
