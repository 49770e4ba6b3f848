"""Folds: coverage, no overlap, stratification, reproducibility, groups, and the saved file."""

import numpy as np
import pandas as pd
import pytest

from pipeline.config import load_config
from pipeline.core.splits import iter_splits
from pipeline.data import load_competition
from pipeline.folds import FoldsError, fingerprint, make_folds, read_folds, run_folds

rng = np.random.default_rng(1)
Y = rng.choice(4, size=400, p=[0.5, 0.25, 0.15, 0.1])
GROUPS = rng.integers(0, 60, size=400)


@pytest.mark.parametrize("strategy", ["stratified", "kfold", "group", "stratified_group"])
def test_every_row_in_exactly_one_fold(strategy):
    folds = make_folds(Y, 5, strategy, seed=3, groups=GROUPS)
    assert folds.shape == Y.shape
    assert set(np.unique(folds)) == set(range(5))
    assert (np.bincount(folds) > 0).all()


@pytest.mark.parametrize("strategy", ["stratified", "kfold", "group", "stratified_group"])
def test_same_seed_same_folds_other_seed_other_folds(strategy):
    a = make_folds(Y, 5, strategy, seed=3, groups=GROUPS)
    b = make_folds(Y, 5, strategy, seed=3, groups=GROUPS)
    c = make_folds(Y, 5, strategy, seed=4, groups=GROUPS)
    assert (a == b).all()
    assert not (a == c).all()


def test_stratified_keeps_class_ratios():
    folds = make_folds(Y, 5, "stratified", seed=0)
    overall = np.bincount(Y) / len(Y)
    for fold in range(5):
        share = np.bincount(Y[folds == fold], minlength=4) / (folds == fold).sum()
        assert np.abs(share - overall).max() < 0.02


@pytest.mark.parametrize("strategy", ["group", "stratified_group"])
def test_a_group_never_straddles_two_folds(strategy):
    folds = make_folds(Y, 5, strategy, seed=0, groups=GROUPS)
    per_group = pd.DataFrame({"g": GROUPS, "f": folds}).groupby("g")["f"].nunique()
    assert (per_group == 1).all()


@pytest.mark.parametrize("kwargs, message", [
    (dict(strategy="random"), "unknown folds strategy 'random'"),
    (dict(strategy="group"), "needs groups"),
    (dict(strategy="group", groups=np.arange(400) % 3), "3 groups cannot fill 5 folds"),
    (dict(y=np.r_[np.zeros(398, int), 1, 1]), r"fewer rows \(\[2\]\) than folds \(5\)"),
])
def test_bad_fold_requests(kwargs, message):
    y = kwargs.pop("y", Y)
    with pytest.raises(FoldsError, match=message):
        make_folds(y, 5, **kwargs)


def test_fingerprint_ignores_row_order_but_not_assignment():
    ids = np.array(["a", "b", "c", "d"])
    folds = np.array([0, 1, 0, 1])
    assert fingerprint(ids, folds) == fingerprint(ids[::-1], folds[::-1])
    assert fingerprint(ids, folds) != fingerprint(ids, folds[::-1])


def test_saved_folds_are_reused_and_never_silently_replaced(small_config, write_config, small_competition):
    config = load_config(small_config)
    competition = load_competition(config)
    folds, fp, status = run_folds(config, competition)
    assert status == "written"
    assert config.folds_csv.is_file()
    saved = pd.read_csv(config.folds_csv, dtype={"id": str})
    assert list(saved.columns) == ["id", "fold"]
    reread, reread_fp = read_folds(config, competition)
    assert (reread == folds).all() and reread_fp == fp
    assert run_folds(config, competition)[2] == "unchanged"
    other = load_config(write_config(small_competition, {"folds": {"seed": 7}}))
    with pytest.raises(FoldsError, match="exists with other folds.*FORCE=1"):
        run_folds(other, competition)
    assert pd.read_csv(config.folds_csv, dtype={"id": str}).equals(saved)
    assert run_folds(other, competition, force=True)[2] == "replaced"


# ------------------------------------------------------------------ iter_splits

@pytest.mark.parametrize("folds", [
    np.arange(23) % 4,                                    # ids 0..3
    np.array([7, 3, 3, 7, 5, 3, 7, 5]),                   # unsorted, not 0-based
    np.array(["b", "a", "c", "a", "b", "c", "c"]),        # any sortable ids
    np.array([1.0, 0.0, 1.0, 0.0]),
])
def test_iter_splits_holds_every_row_out_once(folds):
    splits = list(iter_splits(folds))
    ids = [fold for fold, _, _ in splits]
    assert ids == sorted(set(folds.tolist()))  # sorted, one split per fold
    assert all(type(fold) in (int, float, str) for fold in ids)  # plain Python scalars
    held = np.concatenate([held_out for _, _, held_out in splits])
    np.testing.assert_array_equal(np.sort(held), np.arange(len(folds)))  # every row held out exactly once
    for fold, train, held_out in splits:
        assert train.dtype.kind == held_out.dtype.kind == "i"
        assert (np.diff(train) > 0).all() and (np.diff(held_out) > 0).all()
        assert np.intersect1d(train, held_out).size == 0 and len(train) + len(held_out) == len(folds)
        assert (folds[held_out] == fold).all() and (folds[train] != fold).all()


def test_iter_splits_accepts_a_list_and_checks_before_iterating():
    assert [f for f, _, _ in iter_splits([2, 0, 2, 1])] == [0, 1, 2]
    with pytest.raises(ValueError):
        iter_splits([0, 0])  # raised by the call itself, before any split is drawn


@pytest.mark.parametrize("folds, match", [
    (np.zeros(5), r"at least 2 folds; got fold ids \[0.0\]"),
    (np.array([], dtype=int), r"at least 2 folds; got fold ids \[\]"),
    (np.zeros((4, 2)), r"must be 1-D, one fold id per row; got shape \(4, 2\)"),
    (np.int64(3), r"must be 1-D.*got shape \(\)"),
    (np.array([0.0, 1.0, np.nan, 1.0]), "fold ids must not be NaN; row 2 is NaN"),
])
def test_iter_splits_errors(folds, match):
    with pytest.raises(ValueError, match=match):
        iter_splits(folds)
