from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from shared.instructions import PRESETS, embeddings
from stage1_instruct.config import Stage1Config
from stage1_instruct.runners import instruction_store, run_local, run_ray
from zeus.cli import app

TEMPLATE = Stage1Config(instruct="template", image_size=64)


@pytest.mark.slow
def test_ray_runner_writes_the_same_rows_as_the_local_runner(tiny_dataset, monkeypatch, tmp_path):
    ray = pytest.importorskip("ray")
    report = run_ray(tiny_dataset, TEMPLATE, workers=2, progress=False)
    ray.shutdown()
    assert report.stats.cases == 2 and report.stats.requests == 128 and report.stats.cached == 0
    on_ray = instruction_store(tiny_dataset, TEMPLATE).read()
    monkeypatch.setenv("ZEUS_HOME", str(tmp_path / "local"))
    run_local(tiny_dataset, TEMPLATE, progress=False)
    local = instruction_store(tiny_dataset, TEMPLATE).read()
    assert on_ray.schema.remove_metadata() == local.schema.remove_metadata()
    assert on_ray.column("instruction").equals(local.column("instruction"))
    np.testing.assert_array_equal(embeddings(on_ray), embeddings(local))


def test_cli_runs_shows_and_reruns_from_cache(tiny_dataset):
    runner = CliRunner()
    args = ["instructions", str(tiny_dataset.root), "--backend", "template", "--image-size", "64", "--case", "demo_002"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "1 case(s), 64 requests: 0 cached, 64 generated" in first.output
    again = runner.invoke(app, args)
    assert "64 cached, 0 generated (0 described, 0 LLM prompts, 0 texts embedded" in again.output
    shown = runner.invoke(
        app,
        [
            "instructions",
            "show",
            str(tiny_dataset.root),
            "--case",
            "demo_002",
            "--tag",
            PRESETS["template"].tag,
            "--slice",
            "1",
            "--target",
            "spleen",
        ],
    )
    assert shown.exit_code == 0, shown.output
    lines = shown.output.strip().splitlines()
    assert len(lines) == 4 and all("spleen: Segment the spleen" in line for line in lines)
    assert lines[-1].startswith("[slice   1]    union")


def test_cli_errors_are_clear(tiny_dataset):
    runner = CliRunner()
    bad = runner.invoke(app, ["instructions", str(tiny_dataset.root), "--backend", "vllm"])
    assert bad.exit_code == 2 and "needs --vlm" in bad.output
    unknown = runner.invoke(app, ["instructions", str(tiny_dataset.root), "--case", "nope", "--backend", "template"])
    assert unknown.exit_code == 2 and "cases ['nope'] are not in" in unknown.output
    shard = runner.invoke(app, ["instructions", str(tiny_dataset.root), "--shard", "3/2", "--backend", "template"])
    assert shard.exit_code == 2 and "need 0 <= i < n" in shard.output
