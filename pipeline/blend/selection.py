"""Choosing among scored candidates (:func:`select_method`) and pruning near-duplicate models."""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping

import numpy as np

from ..metrics import Metric
from .nested import NestedResult
from .objective import _single_scores
from .validation import _as_metric, _validate_preds, _validate_y


# Scores are compared to this many decimals, so that float noise (a refit's last bits, summation order)
# does not decide between candidates that are equally good.
_DECIMALS = 6


def select_method(results: Mapping[Hashable, NestedResult | float], metric: Metric | str) -> Hashable:
    """Pick the candidate with the best nested score: the one selection rule.

    ``make ensemble`` (single models and blends together) and
    ``python -m pipeline.bench_blend`` both choose with it.

    Parameters
    ----------
    results : mapping
        Candidate -> its :class:`NestedResult`, or its nested score as a
        number, in order of preference: simplest first (``make ensemble``
        lists the single models, then the blend methods in the configured
        order; the benchmark lists the methods in registry order).
    metric : Metric or str
        Gives the direction.

    Returns
    -------
    key
        The key of ``results`` with the best nested score, compared rounded
        to 6 decimals so that float noise does not decide.  Tie rule:
        candidates whose rounded scores are equal tie, and the tie goes to
        the one that comes first in ``results``.  The rounding is not a
        tolerance: scores less than 1e-6 apart tie only when they round to
        the same value (0.4000004 and 0.3999996 do, 0.4000004 and 0.4000006
        do not).  A NaN score ranks below every other.

    Raises
    ------
    ValueError
        ``results`` is empty.
    """
    return rank_candidates(results, metric)[0]


def rank_candidates(results: Mapping[Hashable, NestedResult | float], metric: Metric | str) -> list[Hashable]:
    """Every candidate, best first, by :func:`select_method`'s rule: its first key is the one it picks.

    A leaderboard listed in this order puts the chosen candidate on top even when it ties:
    equal rounded scores keep the order of ``results``, NaN scores come last.

    Parameters
    ----------
    results : mapping
        As for :func:`select_method`.
    metric : Metric or str

    Returns
    -------
    list
        The keys of ``results``.

    Raises
    ------
    ValueError
        ``results`` is empty.
    """
    metric = _as_metric(metric)
    if not results:
        raise ValueError("select_method needs at least one result")
    sign = 1.0 if metric.greater_is_better else -1.0
    keys = list(results)

    def rank(i: int) -> tuple[bool, float, int]:
        value = results[keys[i]]
        score = float(value.nested if isinstance(value, NestedResult) else value)
        if math.isnan(score):
            return False, 0.0, -i  # below every number, even an infinite loss
        return True, round(sign * score, _DECIMALS), -i

    return [keys[i] for i in sorted(range(len(keys)), key=rank, reverse=True)]


def ties_with_best(results: Mapping[Hashable, NestedResult | float], metric: Metric | str) -> list[Hashable]:
    """The candidates whose rounded score equals the chosen one's, the chosen one first (one key: no tie)."""
    order = rank_candidates(results, metric)

    def rounded(key):
        value = results[key]
        score = float(value.nested if isinstance(value, NestedResult) else value)
        return None if math.isnan(score) else round(score, _DECIMALS)

    best = rounded(order[0])
    return [key for key in order if rounded(key) == best] if best is not None else order[:1]


def prune_correlated(preds: np.ndarray, threshold: float = 0.995, scores: np.ndarray | None = None,
                     metric: Metric | str | None = None, *, y: np.ndarray | None = None,
                     task: str | None = None) -> tuple[np.ndarray, list[tuple[int, int, float]]]:
    """Drop near-duplicate models, keeping the better of each correlated pair.

    Models are visited best first (by ``scores``; by index when no scores);
    a model whose flattened predictions correlate at ``>= threshold`` with an
    already kept model is pruned.

    Parameters
    ----------
    preds : ndarray of shape (n_models, n_rows, n_cols)
    threshold : float, default 0.995
        Pearson correlation of the flattened predictions.
    scores : ndarray of shape (n_models,), optional
        Per-model scores in the metric's units (see
        :func:`single_model_scores`); needs ``metric`` for the direction.
    metric : Metric or str, optional
    y : ndarray of shape (n_rows,) or (n_rows, n_labels), optional
        With ``metric`` and no ``scores``: compute the scores.
    task : str or None, default None
        A key of :data:`TASK_OUTPUT`, for validating ``preds`` and ``y``;
        None infers binary (one column) or multiclass.  The correlation
        itself reads every kind of prediction the same way.

    Returns
    -------
    kept : ndarray of int
        Indices of the kept models, ascending.
    pruned : list of (pruned_idx, kept_idx, corr)
        Each pruned model with the kept model it duplicates (the most
        correlated one).
    """
    preds, task = _validate_preds(preds, task=task)
    n = preds.shape[0]
    if scores is None and y is not None and metric is not None:
        scores = _single_scores(preds, _validate_y(y, preds.shape[1], preds.shape[2], task), _as_metric(metric))
    if scores is not None:
        if metric is None:
            raise ValueError("prune_correlated needs metric to know whether higher scores are better")
        metric = _as_metric(metric)
        scores = np.asarray(scores, dtype=np.float64)
        if scores.shape != (n,):
            raise ValueError(f"scores must have one value per model, shape ({n},); got {scores.shape}")
        loss = -scores if metric.greater_is_better else scores
        order = np.argsort(np.where(np.isnan(loss), np.inf, loss), kind="stable")
    else:
        order = np.arange(n)
    flat = preds.reshape(n, -1)
    centred = flat - flat.mean(axis=1, keepdims=True)
    norm = np.sqrt((centred * centred).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = (centred @ centred.T) / np.outer(norm, norm)
    # constant models have no correlation; call them duplicates only when identical
    const = norm == 0
    if const.any():
        for i in np.flatnonzero(const):
            for j in range(n):
                corr[i, j] = corr[j, i] = 1.0 if np.array_equal(flat[i], flat[j]) else 0.0
    corr = np.nan_to_num(corr, nan=0.0)
    kept: list[int] = []
    pruned: list[tuple[int, int, float]] = []
    for i in order:
        i = int(i)
        if kept:
            c = corr[i, kept]
            j = int(np.argmax(c))
            if c[j] >= threshold:
                pruned.append((i, kept[j], float(c[j])))
                continue
        kept.append(i)
    return np.array(sorted(kept), dtype=np.int64), pruned
