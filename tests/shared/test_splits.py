from __future__ import annotations

import json

import pytest

from shared.errors import ZeusError
from shared.splits import ensure_splits, load_splits, make_splits
from shared.workspace import splits_path

CASES = [f"case_{i:02d}" for i in range(11)]


def test_splits_are_patient_level_disjoint_and_cover_every_case():
    splits = make_splits("ds", CASES, folds=5, test_fraction=0.2, seed=3)
    assert len(splits.test) == 2
    assert len(splits.folds) == 5
    vals = [set(val) for _, val in splits.folds]
    for train, val in splits.folds:
        assert not set(train) & set(val)
        assert not (set(train) | set(val)) & set(splits.test)
        assert sorted((*train, *val, *splits.test)) == CASES
    assert set().union(*vals) == set(CASES) - set(splits.test)  # each non-test case validates once
    assert sum(len(v) for v in vals) == 9


def test_without_a_test_set_the_folds_cover_every_case_once():
    splits = make_splits("ds", CASES[:8], folds=4, test_fraction=0, seed=0)
    assert splits.test == ()
    assert [len(val) for _, val in splits.folds] == [2, 2, 2, 2]
    assert sorted(c for _, val in splits.folds for c in val) == CASES[:8]
    for train, val in splits.folds:
        assert len(train) == 6 and not set(train) & set(val)


def test_splits_depend_only_on_the_seed():
    assert make_splits("ds", CASES, seed=1) == make_splits("ds", CASES, seed=1)
    assert make_splits("ds", CASES[::-1], seed=1) == make_splits("ds", CASES, seed=1)  # order-independent
    assert make_splits("ds", CASES, seed=1).test != make_splits("ds", CASES, seed=2).test


def test_tiny_datasets_still_split():
    two = make_splits("ds", ["a", "b"], folds=5)
    assert two.test == () and len(two.folds) == 2
    one = make_splits("ds", ["a"], folds=5)
    assert one.folds == ((("a",), ()),)


def test_splits_are_persisted_and_reused(zeus_home):
    first = ensure_splits("ds", CASES, seed=0)
    stored = json.loads(splits_path("ds").read_text(encoding="utf-8"))
    assert stored["test"] == list(first.test)
    assert ensure_splits("ds", CASES, seed=99) == first  # the persisted file wins over a new seed
    assert load_splits("ds") == first


def test_a_changed_case_set_is_an_error_not_a_silent_resplit(zeus_home):
    ensure_splits("ds", CASES)
    with pytest.raises(ZeusError, match="--resplit"):
        ensure_splits("ds", [*CASES, "case_99"])
    assert "case_99" in ensure_splits("ds", [*CASES, "case_99"], overwrite=True).cases
