"""Choosing among scored candidates (:func:`select_method`, the one-standard-error rule) and pruning near-duplicate
models.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..task.metrics import Metric
from .base import BLEND_METHODS
from .nested import NestedResult
from .objective import single_scores
from .validation import as_metric, validate_preds, validate_y

# Scores are compared to this many decimals, so that float noise (a refit's last bits, summation order)
# does not decide between candidates that are equally good.
_DECIMALS = 6


#: The selection rules: ``one_se`` (the default) and ``best`` (the best nested score, the former rule).
SELECTION_RULES = ("one_se", "best")


@dataclass(frozen=True)
class Scored:
    """A candidate as the selection rule sees it.

    Attributes
    ----------
    nested : float
        Its nested score (all held-out rows scored once).
    fold_scores : mapping or None
        Fold id -> the score of that fold's held-out rows; None when unknown
        (then its standard error is taken as 0).
    simplicity : int
        Lower is simpler (see :attr:`pipeline.blend.BlendMethod.simplicity`):
        0 fixed means, 2 weight searches and single models, 3 stackers.
    family : str or None
        Candidates that search the same parameters for the same loss share
        a family (a fitted blend's
        :meth:`~pipeline.blend.BlendMethod.family`: ``"weights"`` for the
        weight searches on the simplex); None for a single model.
    exact : bool
        Its fit is the exact optimum of the metric over its family's
        parameters (:attr:`pipeline.blend.BlendMethod.exact_`): it can
        stand for a family member that the one-SE rule picks (see
        :func:`select_method`).
    """

    nested: float
    fold_scores: Mapping | None = None
    simplicity: int = 0
    family: str | None = None
    exact: bool = False


def shift_scored(scored: Scored, move: float) -> Scored:
    """The same candidate with its nested score and every fold's score moved by ``move`` (the SEs are unchanged).

    How an estimate that applies to the whole candidate, such as its gain from averaging k fold
    models (:mod:`pipeline.blend.averaging`), enters the selection rule.
    """
    folds = {f: v + move for f, v in scored.fold_scores.items()} if scored.fold_scores else scored.fold_scores
    return dataclasses.replace(scored, nested=scored.nested + move, fold_scores=folds)


def _as_scored(value: Any) -> Scored:
    if isinstance(value, Scored):
        return value
    if isinstance(value, NestedResult):
        cls = BLEND_METHODS.get(value.method)
        if cls is None:  # a name the registry does not know: a single model
            return Scored(float(value.nested), value.fold_scores or None, 2)
        fitted = value.fitted
        family = fitted.family() if fitted is not None else cls.kind
        exact = bool(getattr(fitted, "exact_", False))
        return Scored(float(value.nested), value.fold_scores or None, cls.simplicity, family, exact)
    return Scored(float(value))


def _best_index(scores: list[Scored], sign: float) -> int:
    def rank(i: int) -> tuple[bool, float, int]:
        score = scores[i].nested
        if math.isnan(score):
            return False, 0.0, -i  # below every number, even an infinite loss
        return True, round(sign * score, _DECIMALS), -i

    return max(range(len(scores)), key=rank)


def standard_errors(results: Mapping[Hashable, Any], metric: Metric | str) -> dict[Hashable, float]:
    """Each candidate's standard error against the best nested candidate, from the per-fold scores.

    The folds are shared by every candidate, so a fold that is hard for one is hard for all;
    the spread that matters is that of the per-fold *differences* to the best candidate:
    ``SE_i = std_f(score_i,f - score_best,f) / sqrt(K)`` (``ddof=1``, over the K folds both were
    scored on).  The best candidate's own SE is that of its per-fold scores (shown on the
    leaderboard; the rule does not use it).  NaN when a candidate has no per-fold scores,
    fewer than 2 folds in common with the best, or a NaN score.

    Parameters
    ----------
    results : mapping
        Candidate -> :class:`Scored`, :class:`NestedResult` or a plain nested score.
    metric : Metric or str
        Gives the direction.

    Returns
    -------
    dict
        Candidate -> standard error, in the metric's units.
    """
    metric = as_metric(metric)
    if not results:
        return {}
    keys = list(results)
    scores = [_as_scored(results[k]) for k in keys]
    best = scores[_best_index(scores, 1.0 if metric.greater_is_better else -1.0)]
    out: dict[Hashable, float] = {}
    for key, cand in zip(keys, scores):
        out[key] = _difference_se(cand, best)
    return out


def _difference_se(cand: Scored, best: Scored) -> float:
    if cand is best:
        return own_standard_error(cand)
    if not cand.fold_scores or not best.fold_scores:
        return float("nan")
    common = [f for f in cand.fold_scores if f in best.fold_scores]
    if len(common) < 2:
        return float("nan")
    values = np.array([cand.fold_scores[f] - best.fold_scores[f] for f in common], dtype=np.float64)
    return float(np.std(values, ddof=1) / math.sqrt(len(values)))


def own_standard_error(scored: Scored) -> float:
    """A candidate's own standard error: ``std_f(score_f) / sqrt(K)`` (``ddof=1``) over its K per-fold scores.

    The scale of what its nested score can resolve; NaN with fewer than 2 per-fold scores.
    """
    if not scored.fold_scores or len(scored.fold_scores) < 2:
        return float("nan")
    values = np.array(list(scored.fold_scores.values()), dtype=np.float64)
    return float(np.std(values, ddof=1) / math.sqrt(len(values)))


def select_method(
    results: Mapping[Hashable, Any], metric: Metric | str, rule: str = "one_se", *, stand_in: bool = True
) -> Hashable:
    """Pick a candidate from its nested scores: the one selection rule.

    ``make ensemble`` (single models and blends together) and both ensemble
    benchmarks choose with it.

    Parameters
    ----------
    results : mapping
        Candidate -> its :class:`Scored`, :class:`NestedResult`, or its nested
        score as a plain number (no per-fold scores: standard error 0, so
        ``one_se`` picks what ``best`` picks), in order of preference among
        equals (``make ensemble`` lists the single models, then the blend
        methods in the configured order).
    metric : Metric or str
        Gives the direction.
    rule : {"one_se", "best"}, default "one_se"
        ``best``: the best nested score, compared rounded to 6 decimals so
        that float noise does not decide; candidates whose rounded scores
        are equal tie, and the tie goes to the one that comes first in
        ``results`` (the rounding is not a tolerance: 0.4000004 and
        0.3999996 tie, 0.4000004 and 0.4000006 do not).  A NaN score ranks
        below every other.

        ``one_se`` resists the winner's curse (with a dozen candidates the
        best nested score is biased in its favour): among the candidates
        whose nested score is within one standard error of the best
        (:func:`standard_errors`: the SE of the per-fold differences to the
        best), the simplest (lowest ``simplicity``: fixed means, then weight
        searches and single models, then stackers), and among equally
        simple ones the best nested score (ties as in ``best``).  A
        candidate without per-fold scores is within only when its rounded
        score equals the best's.  Then, where the pick has a family member
        whose fit is exact (:attr:`Scored.exact`: ``slsqp`` for log loss or
        squared error, among the weight searches) and whose nested score is
        within the pick's *own* standard error
        (:func:`own_standard_error`), that member is chosen instead.
        Family members fit the same parameters to nearly the same
        predictions, so their paired per-fold differences are tiny and
        any lead looks significant to the paired SE; what separates them
        is search noise, and the exact optimum is the stable one
        (measured in docs/benchmarks.md, issue 31).  The exact member is
        compared with the pick, not with the best: it may lie outside one
        paired SE of the best candidate.
    stand_in : bool, default True
        False: ``one_se`` without that last step (what it picked before
        the exact fit stood in, for explaining the choice).

    Returns
    -------
    key
        The chosen key of ``results``.

    Raises
    ------
    ValueError
        ``results`` is empty or ``rule`` is unknown.
    """
    metric = as_metric(metric)
    if not results:
        raise ValueError("select_method needs at least one result")
    if rule not in SELECTION_RULES:
        raise ValueError(f"selection rule {rule!r}: choose one of {', '.join(SELECTION_RULES)}")
    sign = 1.0 if metric.greater_is_better else -1.0
    keys = list(results)
    scores = [_as_scored(results[k]) for k in keys]
    best = _best_index(scores, sign)
    if rule == "best" or math.isnan(scores[best].nested):
        return keys[best]
    best_value = round(sign * scores[best].nested, _DECIMALS)
    within = [best]
    for i, cand in enumerate(scores):
        if i == best or math.isnan(cand.nested):
            continue
        shortfall = best_value - round(sign * cand.nested, _DECIMALS)  # >= 0: how much worse than the best
        se = _difference_se(cand, scores[best])
        if shortfall <= 0 or (not math.isnan(se) and shortfall <= se):
            within.append(i)
    simplest = min(scores[i].simplicity for i in within)
    pick = _best_index_among(scores, sign, [i for i in within if scores[i].simplicity == simplest])
    return keys[_exact_stand_in(scores, sign, pick) if stand_in else pick]


def _exact_stand_in(scores: list[Scored], sign: float, pick: int) -> int:
    # the first exact member of the pick's family, where its nested score is within the pick's own SE
    family = scores[pick].family
    if family is None or scores[pick].exact:
        return pick
    own_se = own_standard_error(scores[pick])
    for i, cand in enumerate(scores):
        if cand.family == family and cand.exact and not math.isnan(cand.nested):
            shortfall = round(sign * scores[pick].nested, _DECIMALS) - round(sign * cand.nested, _DECIMALS)
            if shortfall <= 0 or (not math.isnan(own_se) and shortfall <= own_se):
                return i
    return pick


def _best_index_among(scores: list[Scored], sign: float, indices: list[int]) -> int:
    return max(indices, key=lambda i: (round(sign * scores[i].nested, _DECIMALS), -i))


def rank_candidates(results: Mapping[Hashable, Any], metric: Metric | str) -> list[Hashable]:
    """Every candidate, best nested score first, equal rounded scores in the order of ``results``, NaN last.

    The order the leaderboard lists the candidates other than the chosen one in (the chosen one,
    :func:`select_method`'s pick, is listed first): with rule ``best`` its first key is that pick.

    Parameters
    ----------
    results : mapping
        As for :func:`select_method` (a score, a :class:`Scored` or a nested result per key).
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
    metric = as_metric(metric)
    if not results:
        raise ValueError("rank_candidates needs at least one result")
    sign = 1.0 if metric.greater_is_better else -1.0
    keys = list(results)
    scores = [_as_scored(results[k]).nested for k in keys]

    def rank(i: int) -> tuple[bool, float, int]:
        if math.isnan(scores[i]):
            return False, 0.0, -i  # below every number, even an infinite loss
        return True, round(sign * scores[i], _DECIMALS), -i

    return [keys[i] for i in sorted(range(len(keys)), key=rank, reverse=True)]


def prune_correlated(
    preds: np.ndarray,
    threshold: float = 0.995,
    scores: np.ndarray | None = None,
    metric: Metric | str | None = None,
    *,
    y: np.ndarray | None = None,
    task: str | None = None,
) -> tuple[np.ndarray, list[tuple[int, int, float]]]:
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
    preds, task = validate_preds(preds, task=task)
    n = preds.shape[0]
    if scores is None and y is not None and metric is not None:
        scores = single_scores(preds, validate_y(y, preds.shape[1], preds.shape[2], task), as_metric(metric))
    if scores is not None:
        if metric is None:
            raise ValueError("prune_correlated needs metric to know whether higher scores are better")
        metric = as_metric(metric)
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
