from __future__ import annotations

import pytest

from shared.demo import DemoConfig
from shared.manifest import resolve_dataset
from tests.factories import write_msd

# 2 cases x 4 slices x 3 modalities x 4 targets: 96 modality + 32 union requests, fast on CPU.
STAGE1_TINY = DemoConfig(cases=2, size=(48, 40), slices=4, spacing=(8.0, 8.0, 30.0), t2_spacing=(9.0, 9.0, 30.0))


@pytest.fixture
def tiny_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return resolve_dataset(str(write_msd(tmp_path / "data", STAGE1_TINY)))
