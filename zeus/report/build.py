"""``zeus report``: ``reports/<dataset>/report.md`` and a self-contained ``report.html`` with its figures.

The Markdown is the one source; the HTML is rendered from it (markdown-it-py) with the figures inlined as
data URIs, so the HTML file alone is the whole report. The report folder is built beside the old one and
swapped in at the end: a failed build leaves the previous report intact.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import re
import shutil
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from shared.cases import CaseCache
from shared.errors import ZeusError
from shared.instructions import InstructionStore
from shared.paths import inside
from shared.provenance import git_revision
from shared.workspace import runs_dir, slug, zeus_home
from stage1_instruct.stats import store_statistics
from stage2_segment.config import BOX_REFERENCE
from stage2_segment.evaluate import format_number, format_stats
from stage2_segment.features import encoder_costs
from stage2_segment.instructions import instruction_table
from stage2_segment.metrics import score_masks
from stage2_segment.runs import Postprocessing, datasets_with_runs, reported_split
from zeus.ablation import FOREGROUND, compare, conclusion, read_plan
from zeus.report import figures
from zeus.report.collect import DamagedRun, RunRecord, collect_runs, stage_one_costs

log = logging.getLogger(__name__)

LITERATURE = Path(__file__).with_name("literature.json")
METRIC_TITLES = {"dice": "DSC", "iou": "IoU (mIoU = foreground mean)", "hd95": "HD95 (mm)"}


def build_reports(datasets: list[str] | None, out: Path) -> list[Path]:
    """One report per dataset (default: every dataset with runs); returns the HTML files written."""
    names = datasets or datasets_with_runs()
    if not names:
        raise ZeusError(f"no runs under {runs_dir()}: train a model first (`zeus train` / `make train`)")
    return [build_report(name, out / name) for name in names]


def build_report(dataset: str, folder: Path) -> Path:
    runs, damaged = collect_runs(dataset)
    if not runs:
        why = "".join(f"\n  {d.name}: {d.reason}" for d in damaged)
        raise ZeusError(f"no readable runs of {dataset!r} under {runs_dir(dataset)}: train one first{why}")
    staging = folder.with_name(f".{folder.name}.building")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "figures").mkdir(parents=True)
    markdown = _markdown(dataset, runs, damaged, staging)
    (staging / "report.md").write_text(markdown, encoding="utf-8")
    (staging / "report.html").write_text(to_html(markdown, staging, f"Zeus report: {dataset}"), encoding="utf-8")
    shutil.rmtree(folder, ignore_errors=True)
    staging.replace(folder)
    return folder / "report.html"


# -- Markdown -----------------------------------------------------------------------------------------------


_OUT_OF_FOLD = " (the split has no test set: each fold's validation cases, predicted out of fold)."


def _markdown(dataset: str, runs: list[RunRecord], damaged: list[DamagedRun], folder: Path) -> str:
    manifest = runs[0].info.manifest
    plan = read_plan(dataset)
    ablation = plan.run_names() if plan else set()
    all_runs = runs
    runs = [r for r in runs if r.name not in ablation]  # the ablation's runs get their own section
    evaluated = [r for r in runs if r.evaluation]
    targets = list(manifest.targets) if manifest else _targets_of(evaluated)
    split = reported_split(dataset)
    sections = [
        f"# Zeus report: {_text(dataset)}",
        f"Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC from {_code(zeus_home().resolve())} "
        f"at git revision {_code(git_revision())}. {len(runs)} run(s), {len(evaluated)} evaluated on the "
        f"{_code(split)} split{_OUT_OF_FOLD if split == 'val' else '.'}",
        _damaged(damaged),
        _results(evaluated, targets, runs, split),
        _comparison(evaluated),
        _text_ablation(plan, targets),
        _instruction_statistics(dataset, {r.tag for r in all_runs if r.tag}),
        _parameters(runs),
        _costs(dataset, runs),
        _literature(dataset),
        _curves(runs, folder),
        _qualitative(evaluated, folder),
        _provenance(runs),
        "## Metric definitions\n\n" + _definitions(),
    ]
    return "\n\n".join(s for s in sections if s) + "\n"


def _damaged(damaged: list[DamagedRun]) -> str:
    if not damaged:
        return ""
    rows = [[d.name, d.reason] for d in damaged]
    return "## Runs left out\n\nThese run folders have a damaged file; the report shows the others.\n\n" + _table(
        ["Run", "why"], rows
    )


def _targets_of(runs: list[RunRecord]) -> list[str]:
    return list(runs[0].evaluation.classes) if runs else []


def _results(evaluated: list[RunRecord], targets: list[str], runs: list[RunRecord], split: str) -> str:
    missing = [r for r in runs if not r.evaluation]
    if split == "val":
        lines = ["## Results on the validation cases, out of fold"]
        cases = max((r.evaluation.source.case_ids for r in evaluated), key=len, default=[])
        over = (
            f"each run's validation cases (a fold's run: its fold's; an ensemble of the folds: all {len(cases)}, "
            f"{', '.join(cases)})"
        )
    else:
        lines = ["## Results on the held-out test cases"]
        cases = evaluated[0].evaluation.source.case_ids if evaluated else []
        over = f"the {len(cases)} test case(s) ({', '.join(cases)})"
    if evaluated:
        lines.append(
            f"3-D scores in the original geometry of each scan, mean ± std over {over}; a class absent from both "
            "prediction and ground truth of a case is undefined and left out (see the definitions at the end)."
        )
        for metric, title in METRIC_TITLES.items():
            digits = 1 if metric == "hd95" else 3
            header = ["Run", *targets, "foreground mean"]
            rows = [
                [
                    _run(r),
                    *(format_stats(r.evaluation.classes[t].volume[metric], digits) for t in targets),
                    format_number(r.evaluation.foreground_mean["volume"][metric], digits),
                ]
                for r in evaluated
            ]
            lines += [f"### {title}", _table(header, rows)]
        rows = [
            [_run(r), *(format_stats(r.evaluation.classes[t].slice["dice"], 3) for t in targets)] for r in evaluated
        ]
        note = "Slices where the class is in neither mask are left out."
        lines += ["### DSC per 2-D slice", note, _table(["Run", *targets], rows)]
    if missing:
        names = ", ".join(_code(r.name) for r in missing)
        lines.append(f"Not evaluated yet: {names}. Run `zeus evaluate --run <run folder>` to add them.")
    return "\n\n".join(lines)


def _comparison(evaluated: list[RunRecord]) -> str:
    if not evaluated:
        return ""
    reference = next((r for r in evaluated if r.role == "Zeus" and r.train.text == "instructions"), evaluated[0])
    ref_dice = reference.evaluation.foreground_dice
    rows = []
    for r in evaluated:
        fg = r.evaluation.foreground_mean["volume"]
        delta = "" if r is reference or fg["dice"] is None or ref_dice is None else f"{fg['dice'] - ref_dice:+.3f}"
        text = r.train.text if r.model == "zeus" else "-"
        fusion = r.train.fusion if r.model == "zeus" else "-"
        scores = [format_number(fg["dice"], 3), format_number(fg["iou"], 3), format_number(fg["hd95"], 1)]
        rows.append([_run(r), r.role, text, fusion, *scores, delta])
    header = ["Run", "role", "text", "fusion", "DSC", "mIoU", "HD95 (mm)", f"Δ DSC vs {reference.title}"]
    return "## Baselines and ablations\n\nForeground means of the table above, side by side.\n\n" + _table(header, rows)


def _text_ablation(plan, targets: list[str]) -> str:
    """``zeus ablate``'s comparison: Dice per text mode over seeds, paired differences with intervals."""
    if plan is None:
        return ""
    c = compare(plan, targets)
    base = plan.base
    folds = (
        f"every fold ({len(plan.folds)}) of the split, whose ensemble is compared"
        if plan.cross_validation
        else f"the same fold ({base.fold})"
    )
    lines = [
        "## Does the text help?",
        f"`zeus ablate`: text modes {', '.join(_code(t) for t in plan.texts)}, each trained with seeds "
        f"{', '.join(map(str, plan.seeds))}; per seed {folds}, epochs ({base.epochs}), data "
        f"order and initialisation, {base.fusion} fusion, {base.decoder} decoder. `shuffled` gives every slice "
        "the instruction of another slice of the same case, modality and target: it keeps the class and "
        f"destroys what the text says about this slice. Dice over the {len(c.cases)} {c.case_kind}, "
        "mean ± std over seeds.",
    ]
    header = ["Text", *c.classes]
    rows = [[t, *(_mean_std(c.dice[t][k]) for k in c.classes)] for t in plan.texts if c.dice[t][FOREGROUND]]
    if rows:
        lines.append(_table(header, rows))
    if c.paired:
        lines.append(
            "Paired per-case differences (same seed, same case), mean and 95 % interval of a two-level bootstrap "
            "over cases, then seeds:"
        )
        rows = [[f"{a} − {b}", *(_interval(v.get(k)) for k in c.classes)] for (a, b), v in c.paired.items()]
        lines.append(_table(["Difference", *c.classes], rows))
    lines.append(conclusion(c))
    if c.missing:
        lines.append(f"Not trained or evaluated yet: {', '.join(_code(m) for m in c.missing)} (rerun `zeus ablate`).")
    return "\n\n".join(lines)


def _instruction_statistics(dataset: str, tags: set[str]) -> str:
    """Per store the runs read: distinct instructions per target, their sources, embedding similarity."""
    rows = []
    for tag in sorted(tags):
        store = InstructionStore.of(dataset, tag)
        if not store.case_ids():
            continue
        try:
            stats = store_statistics(store.read())
        except ZeusError as e:  # a damaged shard: the costs section names it; leave the store out here
            log.warning("report: instruction statistics of %s left out: %s", store.folder, e)
            continue
        for s in stats:
            rows.append(
                [
                    _code(tag),
                    _text(s.target),
                    str(s.rows),
                    str(s.distinct),
                    f"{s.within:.3f}",
                    f"{s.across:.3f}",
                    _text(s.sources_text),
                ]
            )
    if not rows:
        return ""
    note = (
        "Over the modality rows of slices with body: how many distinct instructions each target got, where they "
        "came from (an LLM's kept by the faithfulness check, or the template), and the mean cosine similarity of "
        "their embeddings within the target and to the other targets (a text that is a class token plus noise "
        "shows few distinct instructions and similarity near 1 within)."
    )
    header = ["store", "target", "rows", "distinct", "cos within", "cos across", "sources"]
    return "## What the instructions carry\n\n" + note + "\n\n" + _table(header, rows)


def _mean_std(values: list[float]) -> str:
    if len(values) < 2:  # one seed has no spread to show
        return f"{values[0]:.3f}" if values else "—"
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def _interval(i) -> str:
    return "—" if i is None else f"{i.mean:+.3f} [{i.low:+.3f}, {i.high:+.3f}]"


def _parameters(runs: list[RunRecord]) -> str:
    rows = []
    for r in runs:
        p = r.parameters
        share = f"{100 * p['trainable'] / p['total']:.1f} %" if p["total"] else ""
        rows.append([_run(r), f"{p['trainable']:,}", f"{p['total']:,}", share])
    note = "Total counts the frozen image encoder, the frozen prompt encoder and everything trained."
    return "## Model size\n\n" + note + "\n\n" + _table(["Run", "trainable", "total", "trainable share"], rows)


def _costs(dataset: str, runs: list[RunRecord]) -> str:
    lines = ["## Costs"]
    stage1 = stage_one_costs(dataset, {r.tag for r in runs if r.tag})
    rows = []
    for cost in stage1:
        cold, latest = cost.cold, cost.latest
        if cold is None:
            rows.append([_code(cost.tag), "no timed run", "", "", "", "", ""])
            continue
        rate = cold.requests / cold.seconds if cold.seconds else 0
        rerun = f"{latest.cached}/{latest.requests} cached, {latest.seconds:.1f} s" if latest else ""
        calls = "n/a" if cold.model_calls is None else str(cold.model_calls)  # n/a: logs older than the field
        counts = [str(cold.cases), str(cold.requests), calls]
        rows.append([_code(cost.tag), *counts, f"{cold.seconds:.1f} s", f"{rate:.1f}", rerun])
    if rows:
        header = ["stage-1 store", "cases", "requests", "model calls", "time", "requests/s", "latest run"]
        lines += ["### Stage 1: instructions (describe, instruct, embed)", _table(header, rows)]
    features = encoder_costs(dataset)
    if features:
        rows = [
            [f.folder, str(f.cases), str(f.images), f"{f.seconds:.1f} s", f"{f.seconds / f.images:.2f} s"]
            for f in features
            if f.images
        ]
        lines += [
            "### Stage 2: image embeddings (frozen encoder, once per slice and modality)",
            _table(["encoder", "cases", "images", "time", "per image"], rows),
        ]
    rows = []
    for r in runs:
        epochs = len(r.log)
        per_case = r.evaluation.source.predict_seconds_per_case if r.evaluation else None
        rows.append(
            [
                _run(r),
                str(epochs),
                f"{r.train_seconds:.0f} s" if epochs else "",  # an ensemble trains nothing itself
                f"{r.train_seconds / epochs:.0f} s" if epochs else "",
                "" if per_case is None else f"{per_case:.1f} s",
            ]
        )
    lines += [
        "### Stage 2: training and prediction",
        _table(["Run", "epochs", "training (incl. validation)", "per epoch", "predict per case"], rows),
    ]
    return "\n\n".join(lines)


def _literature(dataset: str) -> str:
    entries = [e for e in json.loads(LITERATURE.read_text(encoding="utf-8"))["entries"] if dataset in e["datasets"]]
    lines = [
        "## Reference figures from the literature (other protocols)",
        "> **Not comparable to the tables above.** These figures come from other test sets, splits, preprocessing "
        "and metric implementations; they only place the numbers in context."
        + (" This dataset is synthetic: real-data figures say nothing about it." if dataset == "demo" else ""),
    ]
    if entries:
        rows = [[e["target"], e["metric"], e["value"], e["protocol"], e["source"]] for e in entries]
        lines.append(_table(["target", "metric", "value", "protocol", "source"], rows))
    else:
        lines.append(f"No checked figure for {_code(dataset)} is recorded yet (`zeus/report/literature.json`).")
    lines.append(
        "The Zeus paper (Dai et al., arXiv:2504.07336) reports DSC and mIoU for early, hybrid and late fusion on "
        "MSD-Prostate, MSD-BrainTumour and CHAOS with its own splits and models; its tables are not copied here."
    )
    return "\n\n".join(lines)


def _curves(runs: list[RunRecord], folder: Path) -> str:
    path = figures.training_curves(runs, folder / "figures" / "training_curves.png")
    return f"## Training curves\n\n![training curves](figures/{path.name})" if path else ""


def _qualitative(evaluated: list[RunRecord], folder: Path) -> str:
    if not evaluated:
        return ""
    methods = [r for r in evaluated if r.model != BOX_REFERENCE] or evaluated  # the reference sees the truth
    best = max(methods, key=lambda r: r.evaluation.foreground_dice or -1.0)
    try:
        panels_by_target = overlay_panels(best)
    except ZeusError as e:  # e.g. the preprocessed cases were deleted: the rest of the report still stands
        return f"## Qualitative results\n\nOverlays unavailable: {_text(e)}"
    lines = [
        f"## Qualitative results: {_text(best.label)} ({_code(best.name)})",
        "Test slices per class, the largest and a smaller cross-section: ground truth (green), prediction "
        "(red), and the instruction the model was given for the reference modality.",
    ]
    for target, panels in panels_by_target.items():
        path = figures.overlays(panels, f"{best.label}: {target}", folder / "figures" / f"overlay_{slug(target)}.png")
        if path:
            lines.append(f"![{_text(target)}](figures/{path.name})")
    return "\n\n".join(lines)


def overlay_panels(run: RunRecord, per_target: int = 2) -> dict[str, list[figures.OverlayPanel]]:
    dataset = run.info.open_dataset()
    manifest = dataset.manifest
    cases = CaseCache(dataset, run.train.image_size)
    evaluation = run.folder.evaluation(run.split)
    reference = manifest.reference_modality
    channel = manifest.modality_names.index(reference)
    table = instruction_table(manifest, run.train)
    loaded = {c: _load_case(cases, evaluation.model_slices(c), c) for c in run.evaluation.source.case_ids}
    out: dict[str, list[figures.OverlayPanel]] = {}
    for target, value in manifest.targets.items():
        candidates = [
            (int((truth == value)[z].sum()), case_id, z)
            for case_id, (_, truth, _) in loaded.items()
            for z in range(truth.shape[0])
            if (truth[z] == value).any()
        ]
        chosen = _largest_and_smaller(sorted(candidates, reverse=True), per_target)
        panels = []
        for _, case_id, z in chosen:
            image, truth, prediction = loaded[case_id]
            t, p = truth[z] == value, prediction[z] == value
            text = table.text(case_id, z, reference, target) if table else _no_instruction(run)
            panels.append(
                figures.OverlayPanel(case_id, z, target, image[channel, z], t, p, text, score_masks(p, t, (1, 1)).dice)
            )
        out[target] = panels
    return out


def _no_instruction(run: RunRecord) -> str:
    if run.model == BOX_REFERENCE:
        return "(none: prompted with the ground truth's box)"
    if run.model == "unet":
        return "(none: the U-Net has no prompt)"
    return "(none: this run uses learned class tokens)"


def _load_case(cases: CaseCache, path: Path, case_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not path.is_file():
        raise ZeusError(f"no model-slice prediction {path}: rerun `zeus evaluate` for this run")
    with np.load(path) as f:
        prediction = f["label"]
    case = cases.load(case_id)
    return case.image, case.label, prediction


def _largest_and_smaller(candidates: list[tuple[int, str, int]], count: int) -> list[tuple[int, str, int]]:
    """The largest cross-section, then ones at lower quantiles of size (harder, smaller structures)."""
    if not candidates:
        return []
    picks = [candidates[min(len(candidates) - 1, round(q * (len(candidates) - 1)))] for q in np.linspace(0, 0.7, count)]
    return list(dict.fromkeys(picks))


def _provenance(runs: list[RunRecord]) -> str:
    rows = []
    for r in runs:
        checkpoint = (r.evaluation.source.checkpoint if r.evaluation else None) or "not evaluated"
        rows.append(
            [
                _run(r),
                _code(r.folder.path),
                _code(r.config_hash),
                _code(r.info.git_revision),
                str(r.best_epoch or ""),
                r.info.encoder or "-",
                _code(r.tag) if r.tag else "-",
                checkpoint,
                _postprocessing(r.postprocessing),
            ]
        )
    header = [
        "Run",
        "folder",
        "config hash",
        "git revision",
        "best epoch",
        "encoder",
        "stage-1 store",
        "checkpoint",
        "post-processing",
    ]
    note = (
        "Every number above comes from these folders: `config.json` (resolved configuration; its `train` section "
        "hashed), `log.csv`, `evaluation/test/{cases.csv, slices.csv, summary.json}`, and `postprocessing.json` "
        "(decided on validation; box refinement redraws a class with the frozen LiteMedSAM decoder from the boxes "
        "of the run's own prediction, never from the ground truth)."
    )
    return "## Provenance\n\n" + note + "\n\n" + _table(header, rows)


def _postprocessing(decision: Postprocessing | None) -> str:
    """The post-processing steps a run's evaluation applied, per class."""
    if decision is None:
        return "none"
    applied = [f"{step}: {', '.join(classes)}" for step, classes in decision.steps.items() if classes]
    return "; ".join(applied) or "none"


def _definitions() -> str:
    from stage2_segment import metrics

    doc = (metrics.__doc__ or "").split("\n\n", 1)[-1].strip()
    return doc


# -- formatting ---------------------------------------------------------------------------------------------


class Markdown(str):
    """Text that is Markdown already (written here, values inside escaped): ``_table`` keeps it as it is."""


def _text(value: object) -> str:
    """A value from data (a label name, a case id, an error message) as literal text in Markdown."""
    return re.sub(r"([\\`*_\[\]<>|&])", r"\\\1", str(value)).replace("\n", " ")


def _run(run: RunRecord) -> Markdown:
    """A run's table cell: its ``title``, the folder's name set as code."""
    return Markdown(f"{_text(run.label)} ({_code(run.name)})")


def _code(value: object) -> Markdown:
    """A value from data as an inline code span (backticks inside it cannot end the span)."""
    return Markdown("`" + str(value).replace("`", "'").replace("\n", " ") + "`")


def _cell(value: object) -> str:
    return value.replace("|", "\\|") if isinstance(value, Markdown) else _text(value)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# -- HTML ---------------------------------------------------------------------------------------------------

STYLE = """
body { font-family: 'DejaVu Sans', Helvetica, Arial, sans-serif; max-width: 1180px; margin: 2em auto;
       padding: 0 1.5em; color: #1d1d1f; line-height: 1.45; }
h1 { border-bottom: 3px solid #3a6ea5; padding-bottom: .3em; }
h2 { margin-top: 2em; border-bottom: 1px solid #ddd; padding-bottom: .2em; color: #23476b; }
table { border-collapse: collapse; margin: 1em 0; font-size: .88em; }
th, td { border: 1px solid #d0d7de; padding: .35em .6em; text-align: left; vertical-align: top; }
th { background: #eef3f8; }
tr:nth-child(even) td { background: #fafbfc; }
blockquote { border-left: 4px solid #e0a800; background: #fff8e1; margin: 1em 0; padding: .5em 1em; }
img { max-width: 100%; border: 1px solid #e1e4e8; }
code { background: #f3f4f6; padding: 0 .25em; border-radius: 3px; font-size: .9em; }
"""


# An inert page: no scripts, no requests; only the inlined figures and the inline stylesheet.
CSP = (
    '<meta http-equiv="Content-Security-Policy" '
    "content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">"
)


def to_html(markdown: str, folder: Path, title: str) -> str:
    """Markdown -> one HTML file; ``figures/*.png`` referenced by the Markdown are inlined as data URIs."""
    from markdown_it import MarkdownIt

    # Raw HTML off: whatever came from data is shown as text, never parsed as markup.
    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)

    def inline(match: re.Match) -> str:
        figure = inside(folder, folder / match.group(1), "figure")
        data = base64.b64encode(figure.read_bytes()).decode("ascii")
        return f'src="data:image/png;base64,{data}"'

    body = re.sub(r'src="(figures/[^"]+\.png)"', inline, body)
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n{CSP}\n'
        f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}</body>\n</html>\n"
    )
