from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def zeus_home(tmp_path, monkeypatch):
    """Every test gets its own workspace and no data root from the environment."""
    home = tmp_path / "zeus_home"
    monkeypatch.setenv("ZEUS_HOME", str(home))
    monkeypatch.delenv("ZEUS_DATA_ROOT", raising=False)
    return home
