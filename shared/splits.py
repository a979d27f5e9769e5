"""Patient-level splits, persisted per dataset in ``$ZEUS_HOME/splits/<dataset>.json``.

A held-out test set, then k folds of train/val over the rest; cases (patients) never straddle sets. With
``test_fraction=0`` there is no test set and the folds cover every case (nnU-Net's cross-validation: each case
is predicted once, out of fold, by the model that did not train on it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared.atomic import write_json
from shared.errors import ZeusError
from shared.workspace import splits_path


@dataclass(frozen=True)
class Splits:
    dataset: str
    seed: int
    test: tuple[str, ...]
    folds: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]  # (train, val) per fold

    @property
    def cases(self) -> tuple[str, ...]:
        train, val = self.folds[0]
        return tuple(sorted((*train, *val, *self.test)))

    def fold(self, k: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
        if not 0 <= k < len(self.folds):
            raise ZeusError(f"fold {k} does not exist: {self.dataset} has folds 0..{len(self.folds) - 1}")
        return self.folds[k]

    def to_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "seed": self.seed,
            "test": list(self.test),
            "folds": [{"train": list(t), "val": list(v)} for t, v in self.folds],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Splits:
        return cls(
            dataset=data["dataset"],
            seed=int(data["seed"]),
            test=tuple(data["test"]),
            folds=tuple((tuple(f["train"]), tuple(f["val"])) for f in data["folds"]),
        )


def make_splits(
    dataset: str, case_ids: list[str], *, folds: int = 5, test_fraction: float = 0.2, seed: int = 0
) -> Splits:
    """Seeded split: ``test_fraction`` of the cases held out (at least one when there are 3 or more),
    the rest in ``folds`` folds (fewer when there are fewer cases; with one case left, it trains and
    validation is empty)."""
    if len(set(case_ids)) != len(case_ids):
        raise ZeusError(f"case ids of {dataset} repeat; splits need distinct patients")
    if not case_ids:
        raise ZeusError(f"dataset {dataset} has no cases to split")
    if folds < 1 or not 0 <= test_fraction < 1:
        raise ZeusError(f"need folds >= 1 and 0 <= test_fraction < 1, got {folds}, {test_fraction}")
    # sorted first: the split depends on the case ids and the seed only, not on the order they were found or
    # prepared in (prepare lists built cases before cached ones)
    ids = sorted(case_ids)
    order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    n_test = max(1, round(len(order) * test_fraction)) if len(order) >= 3 and test_fraction > 0 else 0
    test, rest = sorted(order[:n_test]), order[n_test:]
    k = min(folds, len(rest))
    if k <= 1:
        return Splits(dataset, seed, tuple(test), ((tuple(sorted(rest)), ()),))
    groups = [sorted(rest[i::k]) for i in range(k)]
    fold_list = tuple(
        (tuple(sorted(c for j, g in enumerate(groups) if j != i for c in g)), tuple(groups[i])) for i in range(k)
    )
    return Splits(dataset, seed, tuple(test), fold_list)


def load_splits(dataset: str, path: Path | None = None) -> Splits:
    path = path or splits_path(dataset)
    if not path.is_file():
        raise ZeusError(f"no splits for {dataset} at {path}: run `zeus data prepare {dataset}` first")
    return Splits.from_json(json.loads(path.read_text(encoding="utf-8")))


def ensure_splits(
    dataset: str,
    case_ids: list[str],
    *,
    folds: int = 5,
    test_fraction: float = 0.2,
    seed: int = 0,
    overwrite: bool = False,
) -> Splits:
    """Load the persisted splits, or make and persist them; the case set must match the stored one."""
    path = splits_path(dataset)
    if path.is_file() and not overwrite:
        splits = load_splits(dataset, path)
        if set(splits.cases) != set(case_ids):
            added, gone = sorted(set(case_ids) - set(splits.cases)), sorted(set(splits.cases) - set(case_ids))
            raise ZeusError(
                f"{path} was made for other cases (new: {added[:5]}, gone: {gone[:5]}): "
                "pass --resplit to make new splits (results of earlier runs then no longer compare)"
            )
        return splits
    splits = make_splits(dataset, case_ids, folds=folds, test_fraction=test_fraction, seed=seed)
    write_json(path, splits.to_json())
    return splits
