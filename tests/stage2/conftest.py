from __future__ import annotations

import os

import pytest

from shared.cases import CaseCache
from shared.demo import DemoConfig
from shared.manifest import resolve_dataset
from stage1_instruct.config import Stage1Config
from stage1_instruct.runners import run_local
from stage2_segment.config import RECIPE_AUGMENT_COPIES
from stage2_segment.features import FeatureCache
from stage2_segment.modeling.encoders import FrozenImageEncoder
from tests.factories import private_workspace, write_msd

# 3 cases (train / val / test) of 3 slices at 256 px; image embeddings (and the default augmented copies) are
# computed once per test session.
STAGE2_TINY = DemoConfig(cases=3, size=(48, 40), slices=3, spacing=(8.0, 8.0, 30.0), t2_spacing=(9.0, 9.0, 30.0))


@pytest.fixture(scope="session")
def stage2_session(tmp_path_factory):
    """The tiny dataset, and a workspace with it prepared, its template instructions and all image embeddings."""
    root = tmp_path_factory.mktemp("stage2")
    old = {k: os.environ.get(k) for k in ("ZEUS_HOME", "HF_HUB_OFFLINE")}
    os.environ.update(ZEUS_HOME=str(root / "home"), HF_HUB_OFFLINE="1")
    try:
        dataset = resolve_dataset(str(write_msd(root / "data", STAGE2_TINY)))
        run_local(dataset, Stage1Config(instruct="template"), progress=False)
        cases = CaseCache(dataset, 256)
        cases.prepare(progress=False)
        ids = cases.cached_case_ids()
        # with the copies a Zeus run trains on by default, so no test encodes them again
        FeatureCache(cases, FrozenImageEncoder()).ensure(ids, progress=False, copies=RECIPE_AUGMENT_COPIES)
        early = FeatureCache(cases, FrozenImageEncoder.early_fusion(3), early=True)
        early.ensure(ids, progress=False, copies=RECIPE_AUGMENT_COPIES)
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return root / "home", dataset


@pytest.fixture
def stage2_dataset(stage2_session, tmp_path, monkeypatch):
    """The session's dataset with a private copy of its workspace, so each test writes its own runs."""
    home, dataset = stage2_session
    private_workspace(home, tmp_path / "home")
    monkeypatch.setenv("ZEUS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return dataset


@pytest.fixture(scope="session")
def evaluated_run(stage2_session, tmp_path_factory):
    """A short late-fusion run on the tiny dataset, evaluated on its test case: (workspace, dataset, run folder).

    Read-only for the tests that use it (they point ZEUS_HOME at the workspace with monkeypatch)."""
    from stage2_segment.config import TrainConfig
    from stage2_segment.evaluate import evaluate_run
    from stage2_segment.train import Trainer, prepare_training_data

    home, dataset = stage2_session
    workspace = tmp_path_factory.mktemp("evaluated") / "home"
    private_workspace(home, workspace)
    old = os.environ.get("ZEUS_HOME")
    os.environ["ZEUS_HOME"] = str(workspace)
    try:
        # fp32, as on CPUs without bf16: tests compare the predictions of two code paths voxel by voxel
        config = TrainConfig(
            fusion="late",
            text="template",
            epochs=2,
            batch_size=2,
            lr=1e-3,
            slices_per_epoch=2,
            warmup_steps=1,
            precision="fp32",
        )
        trainer = Trainer(prepare_training_data(dataset, config, progress=False), config, progress=False)
        trainer.fit()
        evaluate_run(trainer.run_dir, progress=False)
    finally:
        if old is None:
            os.environ.pop("ZEUS_HOME", None)
        else:
            os.environ["ZEUS_HOME"] = old
    return workspace, dataset, trainer.run_dir
