"""Metric registry: each metric knows its direction and the prediction it needs.

Metrics are written in plain NumPy (no per-call input validation) because the
ensemble stage scores thousands of candidate blends; ``tests/test_metrics.py``
checks every one against scikit-learn's value.

Prediction shapes
-----------------
* multiclass: ``(n_rows, n_classes)`` probabilities.
* binary: ``(n_rows,)`` or ``(n_rows, 1)`` probability of the positive class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

_EPS = 1e-15


@dataclass(frozen=True)
class Metric:
    """A scoring function with its direction.

    Parameters
    ----------
    name : str
        Registry key, as written in a competition config.
    fn : callable
        ``fn(y_true, y_pred) -> float``.
    greater_is_better : bool
        Direction of the metric.
    needs : {"proba", "label"}
        What the metric reads from the prediction; ``"label"`` metrics take the
        arg-max (or the 0.5 threshold for binary) of the probabilities.
    """

    name: str
    fn: Callable[[np.ndarray, np.ndarray], float]
    greater_is_better: bool
    needs: str = "proba"

    def __call__(self, y_true: np.ndarray, y_pred: np.ndarray) -> float:
        return float(self.fn(np.asarray(y_true), np.asarray(y_pred)))

    score = __call__

    def loss(self, y_true: np.ndarray, y_pred: np.ndarray) -> float:
        """The score as a quantity to minimise (sign-flipped when higher is better)."""
        value = self(y_true, y_pred)
        return -value if self.greater_is_better else value

    def is_better(self, a: float, b: float) -> bool:
        """True when score ``a`` beats score ``b``."""
        return a > b if self.greater_is_better else a < b

    @property
    def worst(self) -> float:
        return -np.inf if self.greater_is_better else np.inf


def _as_labels(y_pred: np.ndarray) -> np.ndarray:
    if y_pred.ndim == 1 or y_pred.shape[1] == 1:
        return (y_pred.reshape(-1) >= 0.5).astype(np.int64)
    return y_pred.argmax(axis=1)


def _accuracy(y_true, y_pred):
    return np.mean(_as_labels(y_pred) == y_true)


def _log_loss(y_true, y_pred):
    if y_pred.ndim == 1 or y_pred.shape[1] == 1:
        p = np.clip(y_pred.reshape(-1), _EPS, 1 - _EPS)
        return -np.mean(y_true * np.log(p) + (1 - y_true) * np.log(1 - p))
    p = y_pred / y_pred.sum(axis=1, keepdims=True)
    picked = p[np.arange(len(y_true)), y_true.astype(np.int64)]
    return -np.mean(np.log(np.clip(picked, _EPS, 1.0)))


def _binary_auc(y_true, score):
    """Mann-Whitney AUC with average ranks for ties (what sklearn's roc_auc_score gives)."""
    order = np.argsort(score, kind="mergesort")
    sorted_score = score[order]
    ranks = np.empty(len(score), dtype=np.float64)
    # average rank over runs of equal scores
    boundaries = np.flatnonzero(np.diff(sorted_score)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [len(score)]))
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    positive = y_true == 1
    n_pos = positive.sum()
    n_neg = len(y_true) - n_pos
    if n_pos == 0 or n_neg == 0:
        return np.nan
    return (ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def _roc_auc(y_true, y_pred):
    if y_pred.ndim == 1 or y_pred.shape[1] == 1:
        return _binary_auc(y_true, y_pred.reshape(-1))
    # macro one-vs-rest, as sklearn's roc_auc_score(multi_class="ovr")
    return np.mean([_binary_auc((y_true == k).astype(int), y_pred[:, k]) for k in range(y_pred.shape[1])])


def _f1_macro(y_true, y_pred):
    labels = _as_labels(y_pred)
    n_classes = 2 if (y_pred.ndim == 1 or y_pred.shape[1] == 1) else y_pred.shape[1]
    scores = []
    for k in range(n_classes):
        tp = np.sum((labels == k) & (y_true == k))
        fp = np.sum((labels == k) & (y_true != k))
        fn = np.sum((labels != k) & (y_true == k))
        denom = 2 * tp + fp + fn
        scores.append(0.0 if denom == 0 else 2 * tp / denom)
    return float(np.mean(scores))


def _f1_binary(y_true, y_pred):
    labels = _as_labels(y_pred)
    tp = np.sum((labels == 1) & (y_true == 1))
    denom = np.sum(labels == 1) + np.sum(y_true == 1)
    return 0.0 if denom == 0 else 2 * tp / denom


METRICS: dict[str, Metric] = {}


def register_metric(metric: Metric) -> Metric:
    """Add a metric to the registry; the name must be new."""
    if metric.name in METRICS:
        raise ValueError(f"metric {metric.name!r} is already registered")
    METRICS[metric.name] = metric
    return metric


register_metric(Metric("accuracy", _accuracy, greater_is_better=True, needs="label"))
register_metric(Metric("log_loss", _log_loss, greater_is_better=False, needs="proba"))
register_metric(Metric("roc_auc", _roc_auc, greater_is_better=True, needs="proba"))
register_metric(Metric("f1_macro", _f1_macro, greater_is_better=True, needs="label"))
register_metric(Metric("f1", _f1_binary, greater_is_better=True, needs="label"))


def get_metric(name: str) -> Metric:
    """Look a metric up by name.

    Raises
    ------
    KeyError
        With the list of known metrics when ``name`` is not registered.
    """
    try:
        return METRICS[name]
    except KeyError:
        raise KeyError(f"unknown metric {name!r}; known metrics: {', '.join(sorted(METRICS))}") from None
