"""Folds: coverage, no overlap, stratification, reproducibility, groups, and the saved file."""

import numpy as np
import pandas as pd
import pytest

from pipeline.folds import FoldsError, fingerprint, make_folds, read_folds, run_folds
from pipeline.data import load_competition
from pipeline.config import load_config

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
