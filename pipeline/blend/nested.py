"""Honest scoring: :func:`nested_score` refits a method inside the folds; :class:`NestedResult` holds the figures."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..core.splits import iter_splits
from ..task.metrics import Metric
from .base import BLEND_METHODS, BlendMethod, NotApplicable, make_blend, not_applicable_reason
from .calibration import apply_temperature
from .validation import as_metric, check_task, validate_extra, validate_preds, validate_y


@dataclass
class NestedResult:
    """Result of :func:`nested_score`.

    Attributes
    ----------
    method : str
    params : dict
    in_sample : float
        Fitted and scored on all rows (optimistic); with a decision, the
        all-rows decision applied to the all-rows predictions.
    nested : float
        Held-out predictions of the fold refits, concatenated in row order
        and scored once.
    gap : float
        ``in_sample - nested`` in the better direction: positive = optimism.
    fold_scores : dict
        Fold id -> score of that fold's held-out rows.
    weight_std : float or None
        Mean over models of the std of the weights across the fold refits;
        None for stackers.
    weights : ndarray of shape (n_models,) or None
        Weights of the refit on all rows.
    oof_pred : ndarray of shape (n_rows, n_cols)
        The nested held-out predictions; with a decision, the decided ones
        (each fold's decision applied to its held-out rows), i.e. what was
        scored.
    seconds : float
    fitted : BlendMethod
        The refit on all rows, for predicting the test set.
    decision : object or None
        With ``decision``: the decision fitted on the all-rows refit's
        all-rows predictions, to apply to ``fitted.predict(test)``.
    nested_calibrated, nested_uncalibrated : float or None
        With ``calibrate``: the nested score with each fold refit's
        temperature and without any; None otherwise.
    temperature_in_sample : float
        The temperature the all-rows refit kept by its in-sample rule (1.0
        without ``calibrate``); ``fitted.temperature_`` is the one kept in
        the end, 1.0 when nested CV said the temperature did not help.
    """

    method: str
    params: dict
    in_sample: float
    nested: float
    gap: float
    fold_scores: dict
    weight_std: float | None
    weights: np.ndarray | None
    oof_pred: np.ndarray = field(repr=False)
    seconds: float
    fitted: BlendMethod = field(repr=False)
    decision: Any = field(default=None, repr=False)
    nested_calibrated: float | None = None
    nested_uncalibrated: float | None = None
    temperature_in_sample: float = 1.0


def _fit_decision(decision: Callable[[], Any], y: np.ndarray, pred: np.ndarray, metric: Metric) -> Any:
    dec = decision()
    if not (callable(getattr(dec, "fit", None)) and callable(getattr(dec, "apply", None))):
        raise TypeError(f"decision() must return an object with fit(y, pred, metric) and apply(pred); got {dec!r}")
    fitted = dec.fit(y, pred, metric)
    return dec if fitted is None else fitted


def _apply_decision(dec: Any, pred: np.ndarray) -> np.ndarray:
    out = np.asarray(dec.apply(pred))
    if out.shape != pred.shape:
        raise ValueError(f"decision {type(dec).__name__}.apply returned shape {out.shape} for predictions of shape "
                         f"{pred.shape}; it must return one decided value per prediction, same shape")
    return out


def nested_score(name_or_factory: str | Callable[..., BlendMethod], preds: np.ndarray, y: np.ndarray,
                 folds: np.ndarray, metric: Metric | str, extra: np.ndarray | None = None,
                 params: dict | None = None, *, task: str | None = None,
                 decision: Callable[[], Any] | None = None, calibration: str = "nested") -> NestedResult:
    """Score a blend method honestly by refitting it inside the folds.

    For each fold ``f`` the method is fitted on the rows with ``folds != f``
    and predicts the rows with ``folds == f``; the held-out predictions are
    put back in row order and scored once (per-fold scores are kept too).
    Use the same fold assignment as the OOF predictions.

    Parameters
    ----------
    name_or_factory : str or callable
        A registry name, or a callable ``factory(**params) -> BlendMethod``.
    preds : ndarray of shape (n_models, n_rows, n_cols)
    y : ndarray of shape (n_rows,) or (n_rows, n_labels)
        See the table in :mod:`pipeline.blend` for each task.
    folds : ndarray of shape (n_rows,)
        Fold id of each row; at least 2 distinct ids.
    metric : Metric or str
    extra : ndarray of shape (n_rows, n_features), optional
    params : dict, optional
        Method parameters.  With a persistent optuna ``storage`` or
        ``previous_trials``, only the all-rows fit uses them; the fold refits
        start fresh studies in memory.
    task : str or None, default None
        A key of :data:`TASK_OUTPUT`; None infers binary (one column) or
        multiclass.
    decision : callable or None, default None
        A zero-argument factory of a decision rule: an object with
        ``fit(y, pred, metric) -> self`` and ``apply(pred) -> ndarray`` of
        ``pred``'s shape (thresholds turning probabilities into 0/1, cut
        points turning values into grades).  In each outer fold a fresh
        decision is fitted on the fold refit's predictions of its own
        training rows, applied to the held-out rows' predictions, and the
        decided predictions are scored; the held-out rows never reach a
        decision's ``fit``.  The all-rows refit gets one fitted on its
        all-rows predictions (``NestedResult.decision``).
    calibration : {"nested", "in_sample"}, default "nested"
        With ``params["calibrate"]``: ``"nested"`` scores every fold refit's
        held-out rows with and without its temperature and keeps the
        temperature (in the all-rows refit too) only when the nested score
        is better with it; ``"in_sample"`` keeps whatever each fit's
        in-sample rule kept (the former behaviour).  Without a decision
        only: with one, the in-sample rule applies.

    Returns
    -------
    NestedResult

    Raises
    ------
    NotApplicable
        The method does not apply to the task (see :func:`applicable`).
    """
    start = time.perf_counter()
    metric = as_metric(metric)
    params = dict(params or {})
    if isinstance(name_or_factory, str):
        method_name = name_or_factory
        method_cls = BLEND_METHODS.get(method_name)
        factory = lambda **kw: make_blend(method_name, **kw)  # noqa: E731
        if task is not None:
            reason = not_applicable_reason(method_name, check_task(task))
            if reason is not None:
                raise NotApplicable(reason)
    else:
        method_cls = None
        factory = name_or_factory  # the result is named by what it builds (BlendMethod.name)
    if calibration not in ("nested", "in_sample"):
        raise ValueError(f"calibration must be 'nested' or 'in_sample'; got {calibration!r}")
    if decision is not None and not callable(decision):
        raise TypeError(f"decision must be a zero-argument factory (e.g. a class), not an instance; got {decision!r}")
    preds, task = validate_preds(preds, task=task)
    _, n_rows, n_cols = preds.shape
    y = validate_y(y, n_rows, n_cols, task)
    extra = validate_extra(extra, n_rows)
    folds = np.asarray(folds)
    if folds.shape != (n_rows,):
        raise ValueError(f"folds must have shape ({n_rows},), one fold id per OOF row; got {folds.shape}")
    splits = iter_splits(folds)  # checks the fold ids before any fitting

    fixed = method_cls is not None and method_cls.kind == "mean" and not params.get("calibrate")
    if fixed:
        # a fixed mean learns nothing from the rows, so its refit on any fold's rows is the all-rows fit: fit
        # and predict once and read each fold's rows from that (the refits cost 5x the time on large OOF sets
        # for the same figure).  Its held-out rows are sliced from the all-rows prediction, as rank_mean ranks
        # among all the rows it is given.
        full = factory(**params)
        full._fit_valid(preds, y, metric, extra, task)
        all_rows = full._predict_valid(preds, extra)

        def refit(train: np.ndarray,
                  test: np.ndarray) -> tuple[BlendMethod, np.ndarray, np.ndarray, Callable[[], np.ndarray]]:
            return full, all_rows[test], all_rows[test], lambda: all_rows[train]
    else:
        # the fold refits are throwaway: keep their studies in memory (SQLite commits every trial, ~5x slower)
        # and only the all-rows study persistent, so a rerun continues that one
        fold_params = params
        if params.get("storage") is not None or params.get("previous_trials"):
            fold_params = {**params, "storage": None, "study_name": None, "previous_trials": None}

        def refit(
            train: np.ndarray, test: np.ndarray
        ) -> tuple[BlendMethod, np.ndarray, np.ndarray, Callable[[], np.ndarray]]:
            method = factory(**fold_params)
            # np.take with integer indices copies ~2.5x faster than a boolean mask on axis 1
            train_preds = np.take(preds, train, axis=1)
            train_extra = None if extra is None else extra[train]
            method._fit_valid(train_preds, y[train], metric, train_extra, task)
            raw = method._predict_valid(
                np.take(preds, test, axis=1), None if extra is None else extra[test], calibrated=False
            )
            held_out = raw if method.temperature_ == 1.0 else apply_temperature(raw, method.temperature_)
            return method, held_out, raw, lambda: method._predict_valid(train_preds, train_extra)

    # float64 with or without a decision: decided 0/1 labels or grades are exact in it
    oof = np.empty((n_rows, n_cols))
    oof_raw = np.empty((n_rows, n_cols))
    fold_scores: dict = {}
    inner_weights = []
    for f, train, test in splits:
        method, held_out, raw, train_pred = refit(train, test)
        oof_raw[test] = raw
        if decision is not None:
            # a decision learns from the rows even when the blend does not: it is fitted on the predictions of
            # the training rows only, so the held-out rows never tune it
            dec = _fit_decision(decision, y[train], train_pred(), metric)
            held_out = _apply_decision(dec, held_out)
        oof[test] = held_out
        fold_scores[f] = metric(y[test], oof[test])
        if method.weights_ is not None:
            inner_weights.append(method.weights_)

    if not fixed:
        full = factory(**params)
        full._fit_valid(preds, y, metric, extra, task)
        all_rows = full._predict_valid(preds, extra)
    temperature_in_sample = full.temperature_
    nested_calibrated = nested_uncalibrated = None
    if params.get("calibrate") and decision is None:
        nested_calibrated, nested_uncalibrated = metric(y, oof), metric(y, oof_raw)
        helps = (
            nested_calibrated > nested_uncalibrated
            if metric.greater_is_better
            else nested_calibrated < nested_uncalibrated
        )
        if calibration == "nested" and not helps:
            # the temperature did not help out of sample: drop it from the figures and from the final blend
            oof = oof_raw
            fold_scores = {f: metric(y[test], oof[test]) for f, _, test in iter_splits(folds)}
            if full.temperature_ != 1.0:
                full.temperature_ = 1.0
                all_rows = full._predict_valid(preds, extra)
    final = None
    if decision is not None:
        final = _fit_decision(decision, y, all_rows, metric)
        all_rows = _apply_decision(final, all_rows)
    in_sample = metric(y, all_rows)
    nested = metric(y, oof)
    gap = in_sample - nested if metric.greater_is_better else nested - in_sample
    weight_std = (
        float(np.std(np.stack(inner_weights), axis=0).mean()) if len(inner_weights) == len(fold_scores) else None
    )
    return NestedResult(
        method=full.name,
        params=dict(full.params),
        in_sample=in_sample,
        nested=nested,
        gap=gap,
        fold_scores=fold_scores,
        weight_std=weight_std,
        weights=full.weights_,
        oof_pred=oof,
        seconds=time.perf_counter() - start,
        fitted=full,
        decision=final,
        nested_calibrated=nested_calibrated,
        nested_uncalibrated=nested_uncalibrated,
        temperature_in_sample=temperature_in_sample,
    )
