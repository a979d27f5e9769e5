"""The CLI on the demo data, the way `make demo` runs it."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from shared.demo import _ORGANS
from zeus.cli import app

runner = CliRunner()


def _ok(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_demo_data_check_prepare_fingerprint(zeus_home, tmp_path):
    out = _ok("demo-data", "--cases", "3", "--slices", "8")
    chaos_root = zeus_home / "demo" / "CHAOS"
    assert str(chaos_root) in out
    assert "no problems found" in _ok("data", "check", "demo")
    assert "no problems found" in _ok("data", "check", "chaos", "--root", str(chaos_root))

    out = _ok("data", "prepare", "demo", "--workers", "1", "--image-size", "64")
    assert "3 built, 0 already cached" in out
    assert "0 built, 3 already cached" in _ok("data", "prepare", "demo", "--workers", "1", "--image-size", "64")
    splits = json.loads((zeus_home / "splits" / "demo.json").read_text(encoding="utf-8"))
    assert len(splits["test"]) == 1 and len(splits["folds"]) == 2
    out = _ok("data", "prepare", "demo", "--workers", "1", "--image-size", "64", "--test-fraction", "0", "--resplit")
    assert "0 test" in out
    splits = json.loads((zeus_home / "splits" / "demo.json").read_text(encoding="utf-8"))
    assert splits["test"] == [] and sorted(c for f in splits["folds"] for c in f["val"]) == [
        "demo_001",
        "demo_002",
        "demo_003",
    ]

    target = tmp_path / "fp.json"
    _ok("data", "fingerprint", "demo", "--json", str(target))
    fingerprint = json.loads(target.read_text(encoding="utf-8"))
    assert fingerprint["dataset"] == "demo"
    case = fingerprint["cases"]["demo_001"]
    assert case["shape"] == [128, 128, 8] and case["spacing"] == [3.0, 3.0, 8.0]
    assert set(case["labels"]) == {"liver", "right kidney", "left kidney", "spleen"}
    # The liver is the largest organ, as its ellipsoid semi-axes say.
    assert max(case["labels"], key=case["labels"].get) == "liver"
    assert np.prod(_ORGANS["liver"][1]) > np.prod(_ORGANS["spleen"][1])
    stats = case["intensity"]["T1_in"]
    assert set(stats) == {"background", "liver", "right kidney", "left kidney", "spleen"}
    assert set(stats["liver"]) == {"mean", "std", "p01", "p50", "p99"}
    assert stats["liver"]["p01"] <= stats["liver"]["p50"] <= stats["liver"]["p99"]
    # Raw units: T1 in-phase liver ~750 (contrast 0.75 x 1000), brighter than on T2 (~250).
    assert 600 < stats["liver"]["p50"] < 900
    assert case["intensity"]["T2"]["liver"]["p50"] < 400


def test_user_errors_exit_non_zero_without_traceback():
    result = runner.invoke(app, ["data", "check", "msd_brain"])
    assert result.exit_code == 2
    assert "ZEUS_DATA_ROOT is not set" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
