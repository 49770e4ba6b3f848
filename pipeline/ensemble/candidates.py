"""The ensemble's candidates: every blend method and every single run, fitted and scored in-sample and by nested CV
over the stored folds; the stacker's metadata features and the fold models' test predictions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import blend
from pipeline.config import Config
from pipeline.core import io
from pipeline.core.hashing import json_hash
from pipeline.core.splits import iter_splits
from pipeline.data import Competition
from pipeline.store import StoredRun, StoreError
from pipeline.task.decision import decision_for, nested_decision
from pipeline.task.metrics import Metric

log = logging.getLogger(__name__)


@dataclass
class Candidate:
    """One leaderboard row: a single model or a blend."""

    name: str
    kind: str
    cv: float
    nested: float
    test: np.ndarray
    cv_plain: float | None = None
    gap: float | None = None
    weight_std: float | None = None
    weights: np.ndarray | None = None
    seconds: float = 0.0
    private: float | None = None
    public: float | None = None  # the public-LB score make lb recorded for its submission file as it is now
    test_decided: np.ndarray | None = None  # the test predictions after the tuned decision (thresholds, cut points)
    decision: dict | None = None
    decide: object = None  # the tuned decision's apply(pred), for scoring other predictions of the test set
    fold_scores: dict | None = None  # fold -> nested score of its held-out rows (the selection rule's SE)
    simplicity: int = 2  # blend.BlendMethod.simplicity; a single model ranks with the weights
    family: str | None = None  # blend.Scored.family: what a blend fits (BlendMethod.family), None for a single model
    exact: bool = False  # blend.BlendMethod.exact_: the exact optimum of its family's parameters for the metric
    se: float | None = None  # standard error against the best candidate (blend.standard_errors)
    temperature: float = 1.0
    test_other: np.ndarray | None = None  # the test predictions applied the other way (ensemble.apply), if they differ
    private_other: float | None = None
    fitted: object = None
    fold_test: np.ndarray | None = None  # (n_folds, n_test, n_cols): the k predictions its test prediction averages
    nested_pred: np.ndarray | None = None  # its held-out predictions of the training rows (what nested CV scored)
    averaging_gain: float | None = None  # estimated gain of averaging k fold models (blend.averaging), metric units
    expected: float | None = None  # nested CV + that gain: what it is expected to score on the test set


def method_params(config: Config, method: str, runs: list[StoredRun], fingerprint: str, storage_dir: Path) -> dict:
    # temperature scaling of the blend, kept only where nested CV says it helps (blend.nested_score)
    calibrate = {"calibrate": True} if config.competition.metric == "log_loss" else {}
    user = config.ensemble.method_params.get(method, {})
    if method != "optuna":
        return {**calibrate, **user}
    params = {
        **calibrate,
        "n_trials": config.ensemble.optuna_trials,
        "timeout": config.ensemble.optuna_timeout,
        "seed": config.ensemble.seed,
    }
    # one stored study per set of runs (nested fold refits start afresh): a rerun on the same runs continues it.
    # The study runs in memory and its trials are written once afterwards (SQLite per trial was 10x slower).
    path = optuna_study_path(config, runs, fingerprint, storage_dir)
    if path.is_file() and "storage" not in user:
        try:
            params["previous_trials"] = io.read_json(path)["trials"]
        except (ValueError, KeyError, TypeError):
            log.info(f"optuna: {path} is unreadable; a new study starts")
    return {**params, **user}


def optuna_study_path(config: Config, runs: list[StoredRun], fingerprint: str, storage_dir: Path) -> Path:
    """Where the optuna study of this set of runs keeps its trials (one file per set of runs and metric)."""
    key = json_hash([fingerprint, [(r.name, r.meta.config_hash) for r in runs], config.competition.metric])
    return storage_dir / f"optuna-{key}.json"


def stacker_features(config: Config, competition: Competition) -> tuple[np.ndarray, np.ndarray] | tuple[None, None]:
    """Per-row metadata columns for the stackers, from train.csv and the test table.

    Raises
    ------
    StoreError
        If a column is missing or not numeric, or a test id has no row.
    """
    columns = config.ensemble.stacker_features
    if not columns:
        return None, None
    tables = {"train.csv": competition.train, config.competition.test_csv: competition.test_table}
    out = []
    for where, table in tables.items():
        missing = [c for c in columns if c not in table.columns]
        if missing:
            raise StoreError(f"ensemble.stacker_features: {where} has no column(s) {missing}")
        values = table.set_index(table[competition.id_column].astype(str))
        ids = competition.train_ids if where == "train.csv" else competition.test_ids
        absent = [i for i in ids if i not in values.index]
        if absent:
            raise StoreError(f"ensemble.stacker_features: {where} has no row for id(s) {absent[:5]}")
        numeric = values.loc[ids, columns].apply(pd.to_numeric, errors="coerce")
        if numeric.isna().any().any():
            bad = numeric.columns[numeric.isna().any()].tolist()
            raise StoreError(
                f"ensemble.stacker_features: column(s) {bad} of {where} are not all numbers; encode them first"
            )
        out.append(numeric.to_numpy(dtype=np.float64))
    return out[0], out[1]


def blend_candidates(
    preds: np.ndarray,
    tests: np.ndarray,
    y: np.ndarray,
    folds: np.ndarray,
    metric: Metric,
    methods: list[str],
    params_for,
    extra: np.ndarray | None = None,
    extra_test: np.ndarray | None = None,
    task: str = "multiclass",
    n_grades: int | None = None,
    fold_tests: np.ndarray | None = None,
    apply: str = "per_fold",
) -> list[Candidate]:
    """Score each method in-sample and by nested CV; refit on all rows and predict the test set.

    ``extra``/``extra_test`` are per-row metadata features; only the stackers read them.
    ``fold_tests`` (``(n_models, n_folds, n_test, n_cols)``) are the fold models' test
    predictions: with ``apply="per_fold"`` each blend is applied to every fold's models and
    the results averaged (:func:`pipeline.blend.predict_per_fold`); the fold-mean application
    is kept in ``test_other`` when it differs.  Without ``fold_tests`` both are the fold-mean one.
    Where the metric scores decisions (a tuned threshold or cut points, :mod:`pipeline.task.decision`),
    the decision is fitted inside the nested folds too, and the test set gets the all-rows one.
    Methods that do not apply to the task are left out with the reason.
    """
    candidates = []
    factory = _decision_factory(task, metric, n_grades)
    for method in methods:
        reason = blend.not_applicable_reason(method, task)
        if reason:
            log.info(f"skipped {method}: {reason}")
            continue
        result = blend.nested_score(
            method, preds, y, folds, metric, extra=extra, params=params_for(method), task=task, decision=factory
        )
        each_fold = None
        if apply == "per_fold" and fold_tests is not None:
            each_fold = blend.blend_each_fold(result.fitted, fold_tests, extra=extra_test)
            test = each_fold.mean(axis=0)
        else:
            test = blend.predict_test(result.fitted, tests, fold_tests, apply, extra=extra_test)
        other = None
        if fold_tests is not None:
            other = blend.predict_test(
                result.fitted, tests, fold_tests, "fold_mean" if apply == "per_fold" else "per_fold", extra=extra_test
            )
            if np.allclose(other, test, rtol=0, atol=1e-9):
                other = None  # a linear blend without a temperature: both ways give the same predictions
        decided = result.decision.apply(test) if result.decision is not None else None
        candidates.append(
            Candidate(
                name=method,
                kind=blend.BLEND_METHODS[method].kind,
                cv=result.in_sample,
                nested=result.nested,
                test=test,
                gap=result.gap,
                weight_std=result.weight_std,
                weights=result.weights,
                seconds=result.seconds,
                test_decided=decided,
                decision=None if result.decision is None else result.decision.params,
                decide=None if result.decision is None else result.decision.apply,
                fold_scores=dict(result.fold_scores),
                simplicity=blend.BLEND_METHODS[method].simplicity,
                family=result.fitted.family(),
                exact=bool(result.fitted.exact_),
                temperature=result.fitted.temperature_,
                test_other=other if other is None or result.decision is None else result.decision.apply(other),
                fitted=result.fitted,
                fold_test=each_fold,
                nested_pred=None if result.decision is not None else result.oof_pred,
            )
        )
    return candidates


def _decision_factory(task: str, metric: Metric, n_grades: int | None = None):
    # the ordinal scale comes from train.csv: a fold's rows may lack the top grade
    if decision_for(task, metric, n_grades=n_grades) is None:
        return None
    return lambda: decision_for(task, metric, n_grades=n_grades)


def single_candidate(
    run: StoredRun, y: np.ndarray, folds: np.ndarray, metric: Metric, task: str, n_grades: int | None = None
) -> Candidate:
    """One stored run as a leaderboard row; a tuned decision is scored by nested CV like the blends."""
    seconds = (run.meta.train_seconds or 0.0) + (run.meta.predict_seconds or 0.0)
    factory = _decision_factory(task, metric, n_grades)
    if factory is None:
        score = metric(y, run.oof)
        return Candidate(
            name=f"single-{run.name}",
            kind="single",
            cv=score,
            nested=score,
            test=run.test,
            cv_plain=run.meta.cv_plain,
            seconds=seconds,
            fold_scores=per_fold_scores(y, run.oof, folds, metric),
            fold_test=run.fold_tests,
            nested_pred=run.oof,
        )
    decided_oof, _ = nested_decision(y, run.oof, folds, metric, factory)
    decision = factory().fit(y, run.oof, metric)
    return Candidate(
        name=f"single-{run.name}",
        kind="single",
        cv=metric(y, decision.apply(run.oof)),
        nested=metric(y, decided_oof),
        test=run.test,
        cv_plain=run.meta.cv_plain,
        seconds=seconds,
        test_decided=decision.apply(run.test),
        decision=decision.params,
        decide=decision.apply,
        fold_scores=per_fold_scores(y, decided_oof, folds, metric),
        fold_test=run.fold_tests,
    )


def estimate_averaging(candidates: list[Candidate], y: np.ndarray, metric: Metric, task: str, seed: int = 0) -> None:
    """Set each candidate's ``averaging_gain`` and ``expected`` score where its k test predictions are known.

    The gain (:func:`pipeline.blend.averaging.averaging_gain`) is taken under one reference label
    distribution for all: the test predictions of the best nested candidate that has held-out
    probabilities (no tuned decision), temperature-scaled on them.  Nothing is set for a task
    whose labels cannot be drawn (regression, ordinal), nor for a candidate without per-fold test
    predictions (an imported run, a blend applied to the fold means), nor for a metric of
    probabilities (log loss, AUC): there a row's loss is unbounded, and a fold model that gives a
    drawn label a probability near 0 makes the estimate as large as it is wrong (on
    ``make bench-ensemble-real`` it overstated the gain of trees and forests, and choosing on it
    lost: docs/benchmarks.md).  Metrics of decided labels (accuracy, F1, QWK) score each row
    within bounds.
    """
    if task not in blend.DRAWABLE_TASKS or metric.needs != "label":
        return
    sign = 1.0 if metric.greater_is_better else -1.0
    usable = [c for c in candidates if c.nested_pred is not None and not c.decision and np.isfinite(c.nested)]
    if not usable:
        return
    best = max(usable, key=lambda c: sign * c.nested)
    reference = blend.reference_distribution(best.test, best.nested_pred, y, task)
    for cand in candidates:
        if cand.fold_test is None or not np.isfinite(cand.nested):
            continue
        cand.averaging_gain = blend.averaging_gain(
            cand.fold_test, metric, reference, task, seed=seed, decide=cand.decide
        )
        cand.expected = cand.nested + sign * cand.averaging_gain


def per_fold_scores(y: np.ndarray, pred: np.ndarray, folds: np.ndarray, metric: Metric) -> dict:
    """Fold id -> the metric on that fold's rows (what :func:`blend.nested_score` keeps for a blend)."""
    return {f: metric(y[test], pred[test]) for f, _, test in iter_splits(folds)}


def stacked_fold_tests(runs: list[StoredRun]) -> tuple[np.ndarray | None, list[str]]:
    """The runs' per-fold test predictions, ``(n_models, n_folds, n_test, n_cols)``, and the runs that lack them.

    A run without them (an imported run) enters every fold's blend with its fold-mean test
    predictions; None when no run has them (or their fold counts differ), so every blend is
    applied to the fold means.
    """
    have = [r.fold_tests for r in runs if r.fold_tests is not None]
    lacking = [r.name for r in runs if r.fold_tests is None]
    if not have or len({f.shape[0] for f in have}) != 1:
        return None, [r.name for r in runs]
    n_folds = have[0].shape[0]
    stack = [r.fold_tests if r.fold_tests is not None else np.repeat(r.test[None], n_folds, axis=0) for r in runs]
    return np.stack(stack), lacking


def select_runs(runs: list, excluded: list[tuple[str, str]], names: list[str]) -> list:
    """The runs ``ensemble.runs`` names, in the store's order.

    Raises
    ------
    StoreError
        For a name that is not a usable run: why it was left out, or the runs there are.
    """
    usable = {r.name: r for r in runs}
    reasons = dict(excluded)
    for name in names:
        if name in reasons:
            raise StoreError(f"ensemble.runs names {name!r}, which cannot be blended: {reasons[name]}")
        if name not in usable:
            raise StoreError(
                f"ensemble.runs names {name!r}, which is not a run here; finished runs: {', '.join(usable)}"
            )
    left = [r.name for r in runs if r.name not in names]
    if left:
        log.info(f"left out {', '.join(left)}: not in ensemble.runs")
    return [r for r in runs if r.name in names]
