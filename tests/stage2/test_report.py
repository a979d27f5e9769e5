from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from stage2_segment.config import TrainConfig
from stage2_segment.evaluate import evaluate_run
from stage2_segment.runs import Postprocessing, RunFolder, pending_evaluations
from stage2_segment.train import Trainer, prepare_training_data
from tests.factories import private_workspace
from zeus.report.browser import find_browser, screenshot
from zeus.report.build import build_reports


@pytest.fixture(scope="module")
def report(evaluated_run, tmp_path_factory):
    workspace, dataset, run = evaluated_run
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ZEUS_HOME", str(workspace))
        (html,) = build_reports(None, tmp_path_factory.mktemp("reports"))
    return html, dataset, run


def test_report_tables_hold_the_evaluated_numbers_and_their_provenance(report):
    html, dataset, run = report
    markdown = html.with_suffix(".md").read_text(encoding="utf-8")
    assert html.parent.name == dataset.name
    summary = json.loads((run / "evaluation" / "test" / "summary.json").read_text(encoding="utf-8"))
    liver = summary["classes"]["liver"]["volume"]
    row = next(line for line in markdown.splitlines() if line.startswith(f"| Zeus late / template (`{run.name}`) |"))
    assert f"{liver['dice']['mean']:.3f} ± {liver['dice']['std']:.3f}" in row
    for heading in ("### DSC", "### IoU", "### HD95 (mm)", "## Baselines and ablations", "## Model size", "## Costs"):
        assert heading in markdown
    assert "other protocols" in markdown and "Not comparable" in markdown
    config = json.loads((run / "config.json").read_text(encoding="utf-8"))
    assert config["git_revision"] in markdown and str(run) in markdown
    params = config["parameters"]
    total = params["trainable"] + params["frozen"] + config["encoder_parameters"]
    assert f"| {params['trainable']:,} | {total:,} |" in markdown
    # stage-1 cost from the run log of the store the run was trained on
    assert re.search(r"\| `image-facts\.template\.sentence-transformers` \| 3 \| 144 \|", markdown)
    for figure in ("training_curves.png", "overlay_liver.png", "overlay_spleen.png"):
        assert (html.parent / "figures" / figure).is_file()


def test_html_is_self_contained(report):
    html, _, _ = report
    text = html.read_text(encoding="utf-8")
    assert "<table>" in text and text.count("data:image/png;base64,") == 5  # curves + 4 overlays
    assert not re.search(r'src="(?!data:)', text)  # nothing loaded from elsewhere


@pytest.mark.skipif(find_browser() is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_report_renders_in_headless_chromium(report, tmp_path):
    html, _, _ = report
    png = screenshot(html, tmp_path / "report.png", width=1280, height=1600)
    pixels = np.asarray(Image.open(png).convert("RGB")).astype(int)
    assert pixels.shape == (1600, 1280, 3)
    not_white = (pixels.sum(axis=2) < 720).mean()
    assert not_white > 0.02, "the page looks blank"
    heading_rule = (np.abs(pixels - [0x3A, 0x6E, 0xA5]).sum(axis=2) < 30).sum()  # the styled title underline
    assert heading_rule > 500, "the report's stylesheet did not apply"
    table_header = (np.abs(pixels - [0xEE, 0xF3, 0xF8]).sum(axis=2) < 6).sum()  # table header cells
    assert table_header > 2000, "no table rendered"


def test_baseline_beside_zeus_in_the_comparison(evaluated_run, tmp_path, monkeypatch):
    workspace, dataset, _ = evaluated_run
    private_workspace(workspace, tmp_path / "home")
    monkeypatch.setenv("ZEUS_HOME", str(tmp_path / "home"))
    config = TrainConfig(model="unet", epochs=1, batch_size=2, lr=1e-3, slices_per_epoch=2, warmup_steps=1)
    trainer = Trainer(prepare_training_data(dataset, config, progress=False), config, progress=False)
    trainer.fit()
    assert [run.path for run in pending_evaluations(dataset.name)] == [trainer.run_dir]  # the late run is evaluated
    summary = evaluate_run(trainer.run_dir, progress=False)  # no encoder, no instructions: slices in, labels out
    assert pending_evaluations(dataset.name) == []
    assert set(summary.classes) == set(dataset.manifest.targets)
    zeus_run = RunFolder(tmp_path / "home" / "runs" / dataset.name / "late__text-template__fold0")
    zeus_run.write_postprocessing(Postprocessing(["liver", "spleen"], box_refine=["spleen"]))
    (html,) = build_reports([dataset.name], tmp_path / "reports")
    markdown = html.with_suffix(".md").read_text(encoding="utf-8")
    # the provenance says what post-processing each evaluation applied
    provenance = markdown.split("## Provenance")[1]
    rows = {line.split("|")[1].strip(): line for line in provenance.splitlines() if line.startswith("| ")}
    applied = "largest component: liver, spleen; box refinement: spleen"
    assert rows["Zeus late / template (`late__text-template__fold0`)"].rstrip(" |").endswith(applied)
    assert rows[f"U-Net (from scratch) (`{trainer.run_dir.name}`)"].rstrip(" |").endswith("none")
    comparison = markdown.split("## Baselines and ablations")[1].split("##")[0]
    unet = next(
        line
        for line in comparison.splitlines()
        if line.startswith(f"| U-Net (from scratch) (`{trainer.run_dir.name}`) |")
    )
    zeus_summary = (
        workspace / "runs" / dataset.name / "late__text-template__fold0" / "evaluation" / "test" / "summary.json"
    )
    zeus = json.loads(zeus_summary.read_text(encoding="utf-8"))
    delta = summary.foreground_dice - zeus["foreground_mean"]["volume"]["dice"]
    assert "baseline: 2-D U-Net from scratch" in unet and unet.rstrip(" |").endswith(f"{delta:+.3f}")
