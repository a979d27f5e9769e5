"""Ensembles: several trained runs predict as one, by averaging their softmax probabilities (nnU-Net's
``nnUNetv2_ensemble``), with post-processing decided for the ensemble itself.

An ensemble is a run folder beside its members (``$ZEUS_HOME/runs/<dataset>/<name>/``) whose ``config.json``
(``RunInfo``) names its members (``RunInfo.ensemble``, folder names in the same dataset's runs folder) and
carries the first member's training configuration; it has no checkpoint of its own. ``load_predictor`` of an
ensemble loads every member (``EnsemblePredictor``), so ``zeus evaluate``, ``zeus predict``, ``zeus postprocess``
and the report treat it as any run. Deciding its post-processing and evaluating it: ``stage2_segment.finalize``.

Members must predict the same thing from the same inputs: the same dataset, image size, image encoder (and
early fusion or not: one image-embedding cache serves all) and stage-1 instruction store. They may differ in
seed, decoder, fusion (hybrid or late), epochs, augmentation, slice context, and fold. Members of different
folds make a cross-validation ensemble, as nnU-Net predicts its test set with the models of all its folds:
the ensemble's validation cases are the union of the members' (``RunInfo.val_cases``), and each case is
predicted by the members that did not train on it (a validation case by the models of its own fold, a test
case or a new scan by all), so the post-processing decided on validation still sees only unseen cases.
No member may have trained on a test case of the dataset's current split.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np

from shared.cases import CaseCache
from shared.errors import ZeusError
from shared.paths import check_name
from shared.provenance import git_revision, package_versions
from shared.splits import load_splits
from stage2_segment.features import FeatureCache
from stage2_segment.instructions import InstructionTable
from stage2_segment.predict import Predictor
from stage2_segment.runs import BEST, RUN_PACKAGES, RunFolder, RunInfo

log = logging.getLogger(__name__)

# What every member must share, and how to say it.
_SHARED = {
    "dataset": lambda info: info.dataset,
    "--image-size": lambda info: info.train.image_size,
    "image encoder (--encoder, --encoder-checkpoint, early fusion, --encoder-precision)": lambda info: (
        info.train.encoder,
        info.train.encoder_checkpoint,
        info.train.fusion == "early",
        info.train.encoder_precision,
    ),
    "instruction store (--text, --instructions-tag)": lambda info: info.train.tag,
}


def check_members(members: list[RunFolder]) -> list[RunInfo]:
    """Every member's ``RunInfo``, after checking that each is a finished Zeus run and that they agree on what
    ``_SHARED`` names; a ``ZeusError`` naming the member and the setting otherwise."""
    if len(members) < 2:
        raise ZeusError(f"an ensemble needs at least 2 runs, got {len(members)}")
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        raise ZeusError(f"a run is named twice among the members: {names}")
    infos = []
    for member in members:
        if not (member.is_run() and member.checkpoint(BEST).is_file()):
            raise ZeusError(f"{member.path} is not a finished run: expected config.json and checkpoints/{BEST}")
        info = member.read_info()
        if info.ensemble:
            raise ZeusError(f"{member.path} is itself an ensemble: name its members instead")
        if info.train.model != "zeus":
            raise ZeusError(f"{member.path} is a {info.train.model} run: an ensemble averages Zeus runs")
        infos.append(info)
    parents = {m.path.resolve().parent for m in members}
    if len(parents) > 1:
        raise ZeusError(f"the members must be runs of one dataset, in one runs folder; found {sorted(parents)}")
    test = set(load_splits(infos[0].dataset).test)
    for member, info in zip(members, infos, strict=True):
        if seen := sorted(test & set(info.train_cases + info.val_cases)):
            raise ZeusError(
                f"{member.name} trained or validated on test case(s) {seen} of the current split of "
                f"{info.dataset!r} (was the split made again?): its test figures would not be held out"
            )
    first = infos[0]
    for member, info in zip(members[1:], infos[1:], strict=True):
        for setting, value in _SHARED.items():
            if value(info) != value(first):
                raise ZeusError(
                    f"{member.name} differs from {members[0].name} in its {setting} ({value(info)!r} vs "
                    f"{value(first)!r}): ensemble members must share it"
                )
    return infos


def create_ensemble(members: list[Path], name: str) -> RunFolder:
    """Write the ensemble's ``config.json`` beside its members; refuses to overwrite a run of another kind or
    an ensemble of other members."""
    check_name(name, "ensemble name", "--name")
    folders = [RunFolder(Path(m)) for m in members]
    infos = check_members(folders)
    ensemble = RunFolder(folders[0].path.parent / name)
    if ensemble.path.resolve() in {f.path.resolve() for f in folders}:
        raise ZeusError(f"the ensemble {name!r} cannot be one of its own members")
    first = infos[0]
    info = replace(
        first,
        train=replace(first.train, run_name=name),
        train_cases=sorted({c for i in infos for c in i.train_cases}),
        val_cases=sorted({c for i in infos for c in i.val_cases}),
        segmenter=None,
        parameters={k: sum(i.parameters.get(k, 0) for i in infos) for k in ("trainable", "frozen")},
        git_revision=git_revision(),
        packages=package_versions(*RUN_PACKAGES),
        ensemble=[f.name for f in folders],
    )
    if ensemble.is_run():
        existing = ensemble.read_info()
        if existing.ensemble != info.ensemble:
            what = f"an ensemble of {existing.ensemble}" if existing.ensemble else "a trained run"
            raise ZeusError(f"{ensemble.path} is already {what}: choose another --name")
        return ensemble
    ensemble.path.mkdir(parents=True, exist_ok=True)
    ensemble.write_info(info)
    log.info("ensemble %s of %s", ensemble.path, info.ensemble)
    return ensemble


def mean_probabilities(probabilities: list[np.ndarray]) -> np.ndarray:
    """The members' softmax probabilities ``[T + 1, Z, S, S]`` averaged (still a distribution per voxel)."""
    shapes = {p.shape for p in probabilities}
    if len(shapes) != 1:
        raise ValueError(f"ensemble members predicted different shapes: {sorted(shapes)}")
    return np.mean(np.stack(probabilities), axis=0, dtype=np.float32)


class EnsemblePredictor(Predictor):
    """Several runs as one (``stage2_segment.ensemble``): the mean of the members' softmax probabilities, then
    the ensemble's own post-processing. The members share the image-embedding cache and instruction store,
    so ``features`` and ``instructions`` (the first member's) serve them all."""

    def __init__(self, run: RunFolder, info: RunInfo, members: list[Predictor]):
        self.members = members
        first = members[0]
        super().__init__(run, info, first.dataset, info.train, first.model, first.device)

    @classmethod
    def from_ensemble(
        cls, run: RunFolder, info: RunInfo, *, root: Path | None = None, checkpoint: str = BEST
    ) -> EnsemblePredictor:
        """``info``: the ensemble's ``config.json``."""
        folders = run.members(info)
        check_members(folders)
        return cls(run, info, [Predictor.from_run(f.path, root=root, checkpoint=checkpoint) for f in folders])

    def members_for(self, case_id: str) -> list[Predictor]:
        """The members that did not train on the case (all of them for a test case or a new scan; in an
        ensemble of folds, a validation case's own fold), or all when every member trained on it."""
        unseen = [m for m in self.members if case_id not in m.info.train_cases]
        return unseen or self.members

    def predict_case(
        self,
        case_id: str,
        cases: CaseCache,
        features: FeatureCache | None,
        instructions: InstructionTable | None,
        batch_size: int = 4,
    ) -> np.ndarray:
        return mean_probabilities(
            [m.predict_case(case_id, cases, features, instructions, batch_size) for m in self.members_for(case_id)]
        )


def load_predictor(run_dir: Path, *, root: Path | None = None, checkpoint: str = BEST) -> Predictor:
    """The predictor of any run folder: an ``EnsemblePredictor`` for an ensemble, else ``Predictor.from_run``."""
    run = RunFolder(run_dir)
    info = run.read_info() if run.is_run() else None
    if info is not None and info.ensemble:
        return EnsemblePredictor.from_ensemble(run, info, root=root, checkpoint=checkpoint)
    return Predictor.from_run(run_dir, root=root, checkpoint=checkpoint)
