"""Hostile and damaged files around a trained run: checkpoints that would run code, truncated checkpoints and
shards, damaged run records, HTML in label names, and options that would write outside their folder."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from shared.instructions import PRESETS
from shared.splits import load_splits
from tests.factories import private_workspace, with_cell
from zeus.cli import app

runner = CliRunner()
TAG = PRESETS["template"].tag


class _RunsCode:
    """Pickles as a call of ``os.system``: what a planted checkpoint would do when unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


@pytest.fixture
def workspace(evaluated_run, tmp_path, monkeypatch):
    """A private copy of the evaluated run's workspace: (home, dataset, run folder)."""
    home, dataset, run = evaluated_run
    private_workspace(home, tmp_path / "home")
    monkeypatch.setenv("ZEUS_HOME", str(tmp_path / "home"))
    return tmp_path / "home", dataset, tmp_path / "home" / run.relative_to(home)


def _commands(run: Path, dataset, tmp_path: Path) -> dict[str, list]:
    (case,) = load_splits(dataset.name).test
    scan = dataset.root / "imagesTr" / f"{case}.nii.gz"
    return {
        "predict": ["predict", "--run", run, "--input", scan, "--output", tmp_path / "out"],
        "evaluate": ["evaluate", "--run", run],
        "train --resume": [
            *("train", dataset.root, "--fusion", "late", "--text", "template", "--epochs", "3"),
            *("--batch-size", "2", "--slices-per-epoch", "2", "--warmup-steps", "1", "--resume"),
        ],
        "report --evaluate": ["report", "--evaluate", "--out", tmp_path / "reports"],
    }


def test_a_checkpoint_that_would_run_code_is_refused_by_every_command(workspace, tmp_path):
    _, dataset, run = workspace
    marker = tmp_path / "pwned"
    for name in ("best.pt", "last.pt"):
        real = torch.load(run / "checkpoints" / name, map_location="cpu", weights_only=True)
        torch.save({**real, "payload": _RunsCode(marker)}, run / "checkpoints" / name)
    os.utime(run / "checkpoints" / "best.pt")  # newer than the evaluation: report --evaluate picks the run up
    for command, args in _commands(run, dataset, tmp_path).items():
        result = _invoke(*args)
        assert result.exit_code == 2, (command, result.output)
        assert "refusing to load" in result.output and "not plain data" in result.output, (command, result.output)
        assert not marker.exists(), command
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["best.pt", "last.pt"])
def test_a_truncated_checkpoint_is_named(workspace, tmp_path, name):
    _, dataset, run = workspace
    path = run / "checkpoints" / name
    path.write_bytes(path.read_bytes()[:1000])
    commands = _commands(run, dataset, tmp_path)
    for command in ["train --resume"] if name == "last.pt" else ["predict", "evaluate"]:
        result = _invoke(*commands[command])
        assert result.exit_code == 2 and f"cannot read checkpoint {path}" in result.output, (command, result.output)


def test_a_truncated_shard_is_named_by_training_and_rewritten_by_stage_one(workspace):
    home, dataset, _ = workspace
    shard = home / "instructions" / dataset.name / TAG / "demo_001.parquet"
    rows = shard.read_bytes()
    shard.write_bytes(rows[: len(rows) // 2])
    args = ["train", dataset.root, "--text", "template", "--epochs", "1", "--run-name", "after_damage"]
    result = _invoke(*args)
    assert result.exit_code == 2 and f"{shard} is damaged" in result.output
    assert "rerun `zeus instructions" in result.output
    result = _invoke("instructions", dataset.root, "--backend", "template")
    assert result.exit_code == 0, result.output
    import pyarrow.parquet as pq

    assert pq.read_metadata(shard).num_rows == 3 * (3 + 1) * 4


@pytest.mark.parametrize(
    ("tamper", "refusal"),
    [
        ({"slice_index": 2**30}, "expected 16 rows per slice"),  # every row still reads as cached
        ({"embedding": float("nan"), "description": "not JSON"}, "1 embedding(s) with NaN or infinite values"),
    ],
)
def test_a_tampered_shard_is_refused_by_training_and_restored_by_stage_one(workspace, tamper, refusal):
    import numpy as np
    import pyarrow.parquet as pq

    home, dataset, _ = workspace
    shard = home / "instructions" / dataset.name / TAG / "demo_001.parquet"
    original = pq.read_table(shard)
    tampered, width = original, original.schema.field("embedding").type.list_size
    for row, (name, value) in enumerate(tamper.items()):  # rows that keep their request keys
        tampered = with_cell(tampered, name, row, [value] * width if name == "embedding" else value)
    pq.write_table(tampered, shard)
    args = ["train", dataset.root, "--text", "template", "--epochs", "1", "--run-name", "after_tampering"]
    result = _invoke(*args)
    assert result.exit_code == 2 and f"{shard}: {refusal}" in result.output
    result = _invoke("instructions", dataset.root, "--backend", "template")
    assert result.exit_code == 0, result.output
    restored = pq.read_table(shard)
    for name in ("slice_index", "modality", "target", "request_key", "description", "instruction"):
        assert restored.column(name).to_pylist() == original.column(name).to_pylist(), name
    np.testing.assert_allclose(
        np.asarray(restored.column("embedding").to_pylist()),
        np.asarray(original.column("embedding").to_pylist()),
        atol=1e-6,
    )


def test_damaged_image_embeddings_are_computed_again(workspace):
    import numpy as np

    from shared.cases import CaseCache
    from stage2_segment.features import FeatureCache
    from stage2_segment.modeling.encoders import FrozenImageEncoder

    home, dataset, _ = workspace
    folder = FeatureCache(CaseCache(dataset, 256), FrozenImageEncoder()).folder  # the late-fusion run's embeddings
    assert folder.is_relative_to(home)
    (case, *_), _ = load_splits(dataset.name).fold(0)  # a training case: the run reads its augmented copies
    embeddings, label = folder / f"{case}.npy", folder / f"{case}.aug1.label.npy"
    healthy = {p: p.stat().st_mtime_ns for p in folder.glob(f"{case}.aug2*.npy")}
    assert healthy and label.is_file()
    embeddings.write_bytes(embeddings.read_bytes()[: embeddings.stat().st_size // 2])  # truncated
    planted = np.load(label)
    planted[0, 0, 0] = 200  # a label value the dataset does not have
    np.save(label, planted)
    args = ["train", dataset.root, "--text", "template", "--epochs", "1", "--batch-size", "2"]
    result = _invoke(*args, "--slices-per-epoch", "2", "--warmup-steps", "1", "--run-name", "after_damage")
    assert result.exit_code == 0, result.output
    assert np.load(embeddings).shape == (3, 3, 256, 64, 64) and np.load(label).max() <= 4
    assert {p: p.stat().st_mtime_ns for p in healthy} == healthy  # only the damaged entries were computed again


def test_missing_instructions_are_found_before_any_image_is_encoded(workspace):
    home, dataset, _ = workspace
    shutil.rmtree(home / "features")
    for shard in (home / "instructions" / dataset.name / TAG).glob("*.parquet"):
        shard.unlink()
    result = _invoke("train", dataset.root, "--text", "template", "--epochs", "1", "--run-name", "no_text")
    assert result.exit_code == 2 and "no instructions at" in result.output
    assert not (home / "features").exists()  # checked first: no encoder ran


def test_training_refuses_a_dataset_whose_preparation_failed(workspace, tmp_path):
    home, dataset, _ = workspace
    data = shutil.copytree(dataset.root, tmp_path / "data")  # the session's dataset stays intact
    (data / "labelsTr" / "demo_002.nii.gz").write_bytes(b"broken")
    result = _invoke("train", data, "--text", "template", "--epochs", "1", "--run-name", "bad_data")
    assert result.exit_code == 1 and "demo_002" in result.output and "labelsTr" in result.output
    assert not (home / "runs" / dataset.name / "bad_data").exists()


def test_options_that_would_write_outside_their_folder_are_refused(workspace, tmp_path):
    _, dataset, run = workspace
    (case,) = load_splits(dataset.name).test
    scan = dataset.root / "imagesTr" / f"{case}.nii.gz"
    escaped = _invoke("predict", "--run", run, "--input", scan, "--output", tmp_path / "out", "--case-id", "../../x")
    assert escaped.exit_code == 2 and "is not a safe name" in escaped.output
    assert not list(tmp_path.rglob("x.nii.gz")) and not (tmp_path / "out").exists()
    a_file = tmp_path / "a_file"
    a_file.write_text("", encoding="utf-8")
    result = _invoke("predict", "--run", run, "--input", scan, "--output", a_file)
    assert result.exit_code == 2 and "is a file" in result.output
    long_name = _invoke("train", dataset.root, "--text", "template", "--run-name", "x" * 300)
    assert long_name.exit_code == 2 and "run name" in long_name.output and "not a safe name" in long_name.output


def test_evaluate_checks_its_output_folder_before_scoring(tmp_path):
    (tmp_path / "pred").mkdir()
    (tmp_path / "gt").mkdir()
    (tmp_path / "out").write_text("", encoding="utf-8")
    result = _invoke("evaluate", "--pred", tmp_path / "pred", "--gt", tmp_path / "gt", "--out", tmp_path / "out")
    assert result.exit_code == 2 and "is a file" in result.output


def _report(tmp_path: Path) -> str:
    result = _invoke("report", "--out", tmp_path / "reports")
    assert result.exit_code == 0, result.output
    return next((tmp_path / "reports").rglob("report.md")).read_text(encoding="utf-8")


@pytest.mark.parametrize(
    "damage",
    [
        ("log.csv", lambda text: text + "3,not-a-number,0.5\n"),
        ("log.csv", lambda text: text.rstrip("\n") + ",extra,fields\n"),
        ("config.json", lambda text: text[: len(text) // 2]),
        ("evaluation/test/summary.json", lambda text: text[:40]),
    ],
    ids=["log non-number", "log extra field", "truncated config", "truncated summary"],
)
def test_the_report_leaves_out_a_damaged_run_and_names_its_file(workspace, tmp_path, damage):
    _, _, run = workspace
    shutil.copytree(run, run.with_name("healthy"))
    name, edit = damage
    path = run / name
    path.write_text(edit(path.read_text(encoding="utf-8")), encoding="utf-8")
    markdown = _report(tmp_path)
    left_out = markdown.split("## Runs left out")[1].split("\n## ")[0]
    assert run.name.replace("_", "\\_") in left_out and "damaged" in left_out
    assert "| Zeus late / template (`healthy`) |" in markdown  # the healthy copy is still reported


def test_a_half_written_stage_one_log_line_is_skipped(workspace, tmp_path):
    home, dataset, _ = workspace
    log = home / "instructions" / dataset.name / TAG / "runs.jsonl"
    log.write_text(log.read_text(encoding="utf-8") + '{"finished": "2026-', encoding="utf-8")
    markdown = _report(tmp_path)
    assert "### Stage 1" in markdown


def test_html_in_a_label_name_stays_text(workspace, tmp_path):
    _, _, run = workspace
    hostile = "spleen<img src=x onerror=alert(1)>"
    for name in ("config.json", "evaluation/test/summary.json"):
        path = run / name
        text = path.read_text(encoding="utf-8")
        path.write_text(text.replace('"spleen"', json.dumps(hostile)), encoding="utf-8")
    _report(tmp_path)
    page = next((tmp_path / "reports").rglob("report.html")).read_text(encoding="utf-8")
    assert "<img src=x" not in page and "onerror=alert" not in page.replace("onerror=alert(1)&gt;", "")
    assert "spleen&lt;img src=x onerror=alert(1)&gt;" in page
    assert "Content-Security-Policy" in page and "<script" not in page


def test_an_image_size_the_encoder_cannot_take_is_refused_before_any_work(workspace):
    from stage2_segment.config import TrainConfig
    from stage2_segment.modeling.build import check_input_size

    home, dataset, _ = workspace
    result = _invoke("train", dataset.root, "--text", "template", "--epochs", "1", "--image-size", "512")
    assert result.exit_code == 2 and "--image-size 512" in result.output and "256 x 256" in result.output
    assert not (home / "preprocessed" / dataset.name / "512px").exists()  # refused before preparing anything
    check_input_size(TrainConfig(model="unet", image_size=512))  # the U-Net reads the slices at any size
