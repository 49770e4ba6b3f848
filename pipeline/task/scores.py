"""The built-in metrics' score functions, each ``f(y_true, y_pred) -> float``, written with NumPy alone and
checked against scikit-learn in the tests; :mod:`pipeline.task.metrics` registers them."""

from __future__ import annotations

import numpy as np

_EPS = 1e-15


def _is_multilabel(y_true: np.ndarray) -> bool:
    return y_true.ndim == 2 and y_true.shape[1] > 1


def _is_multiclass(y_true: np.ndarray, y_pred: np.ndarray) -> bool:
    return not _is_multilabel(y_true) and y_pred.ndim == 2 and y_pred.shape[1] > 1


def _round_half_up(values: np.ndarray) -> np.ndarray:
    """floor(x + 0.5) computed as floor(x) + (frac >= 0.5).

    ``x - floor(x)`` is exact in floating point while ``x + 0.5`` can round up
    (0.49999999999999994 + 0.5 == 1.0), so on [0, 1] this is exactly ``x >= 0.5``.
    """
    whole = np.floor(values)
    return whole + (values - whole >= 0.5)


def _grades(y_pred: np.ndarray) -> np.ndarray:
    """Binary/ordinal default decision of a 1-D or one-column prediction."""
    return np.maximum(_round_half_up(y_pred.reshape(-1)), 0).astype(np.int64)


def _class_labels(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(y, labels) as 1-D ints for single-label tasks: arg-max or the default decision."""
    y = y_true.reshape(-1).astype(np.int64)
    if y_pred.ndim == 2 and y_pred.shape[1] > 1:
        return y, y_pred.argmax(axis=1)
    return y, _grades(y_pred)


def _one_hot(y: np.ndarray, n_classes: int) -> np.ndarray:
    out = np.zeros((len(y), n_classes), dtype=bool)
    out[np.arange(len(y)), y] = True
    return out


def _columns(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(Y, S) as (n, L) indicator and score matrices: multilabel as is, multiclass
    one-vs-rest, binary as one column."""
    if _is_multilabel(y_true):
        return y_true.astype(bool), y_pred
    if _is_multiclass(y_true, y_pred):
        return _one_hot(y_true.reshape(-1).astype(np.int64), y_pred.shape[1]), y_pred
    return (y_true.reshape(-1, 1) == 1), y_pred.reshape(-1, 1)


def _tie_runs(Y: np.ndarray, S: np.ndarray):
    """Sort each score column ascending and cut it into runs of tied scores.

    Works on the transposed, contiguous ``(L, n)`` arrays flattened to one
    vector (a run also ends at a column's end), so every column is handled by
    the same few NumPy calls, with no Python loop over columns.

    Returns
    -------
    column, first, last : ndarray of shape (n_runs,)
        Each run's column and its first/last sorted position in that column.
    positives : ndarray of shape (n_runs,)
        Positives inside each run.
    n_pos : ndarray of shape (L,)
        Positives per column.
    """
    n, n_columns = S.shape
    scores = np.ascontiguousarray(S.T)
    order = np.argsort(scores, axis=1)  # the order inside a run never matters here
    s = np.take_along_axis(scores, order, axis=1).ravel()
    hits = np.take_along_axis(np.ascontiguousarray(Y.T, dtype=np.int64), order, axis=1).ravel()
    new_run = np.empty(len(s), dtype=bool)
    new_run[0] = True
    np.not_equal(s[1:], s[:-1], out=new_run[1:])
    new_run[::n] = True
    starts = np.flatnonzero(new_run)
    column = starts // n
    first = starts - column * n
    last = np.append(starts[1:], len(s)) - 1 - column * n
    positives = np.add.reduceat(hits, starts)
    n_pos = np.bincount(column, weights=positives, minlength=n_columns)
    return column, first, last, positives, n_pos


def _column_auc(Y: np.ndarray, S: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC per column with average ranks for ties (sklearn's roc_auc_score);
    NaN for a column holding one class only (sklearn raises there)."""
    column, first, last, positives, n_pos = _tie_runs(Y, S)
    # every member of a run gets the run's average 1-based rank
    rank_sum = np.bincount(column, weights=positives * ((first + last) / 2.0 + 1.0), minlength=len(n_pos))
    n_neg = S.shape[0] - n_pos
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    return np.where((n_pos == 0) | (n_neg == 0), np.nan, auc)


def _column_average_precision(Y: np.ndarray, S: np.ndarray) -> np.ndarray:
    """Step-wise average precision per column, as sklearn's average_precision_score.

    sklearn sums ``(R_k - R_{k-1}) * P_k`` over the distinct scores taken as
    thresholds ``score >= s_k``, so a run of tied scores is one operating
    point: its recall step is the run's positives over all positives, and
    ``P_k`` counts the whole run. A column without positives scores 0, as in
    sklearn.
    """
    column, first, _, positives, n_pos = _tie_runs(Y, S)
    # positives sorted before each run, within its column (sorted ascending:
    # the rows at or above the threshold are the run and everything after it)
    before = np.cumsum(positives) - positives
    before -= before[first == 0][column]
    precision = (n_pos[column] - before) / (S.shape[0] - first)
    total = np.bincount(column, weights=positives * precision, minlength=len(n_pos))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n_pos > 0, total / n_pos, 0.0)


def _f1_per_class(y: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """F1 per class of single-label predictions; NaN for a class absent from both."""
    n_classes = max(n_classes, int(y.max(initial=0)) + 1, int(labels.max(initial=0)) + 1)
    tp = np.bincount(y[y == labels], minlength=n_classes)
    denom = np.bincount(y, minlength=n_classes) + np.bincount(labels, minlength=n_classes)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > 0, 2.0 * tp / denom, np.nan)


# ---------------------------------------------------------------- metrics

def accuracy(y_true, y_pred):
    if _is_multilabel(y_true):
        # exact match of the whole label set (sklearn's subset accuracy)
        return np.mean(np.all((y_pred >= 0.5) == (y_true == 1), axis=1))
    y, labels = _class_labels(y_true, y_pred)
    return np.mean(labels == y)


def log_loss(y_true, y_pred):
    if _is_multilabel(y_true):
        # mean over labels of the per-label binary log loss = mean over all cells
        p = np.clip(y_pred, _EPS, 1 - _EPS)
        return -np.mean(np.where(y_true == 1, np.log(p), np.log(1 - p)))
    y = y_true.reshape(-1)
    if not _is_multiclass(y_true, y_pred):
        p = np.clip(y_pred.reshape(-1), _EPS, 1 - _EPS)
        return -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    p = y_pred / y_pred.sum(axis=1, keepdims=True)
    picked = p[np.arange(len(y)), y.astype(np.int64)]
    return -np.mean(np.log(np.clip(picked, _EPS, 1.0)))


def roc_auc(y_true, y_pred):
    # binary: the one column; multiclass: macro one-vs-rest; multilabel: macro over labels
    return np.mean(_column_auc(*_columns(y_true, y_pred)))


def average_precision(y_true, y_pred):
    return np.mean(_column_average_precision(*_columns(y_true, y_pred)))


def f1_binary(y_true, y_pred):
    labels = _grades(y_pred) == 1
    positive = y_true.reshape(-1) == 1
    denom = labels.sum() + positive.sum()
    return 0.0 if denom == 0 else 2.0 * np.sum(labels & positive) / denom


def f1_micro(y_true, y_pred):
    if _is_multilabel(y_true):
        decided = y_pred >= 0.5
        truth = y_true == 1
        denom = decided.sum() + truth.sum()
        return 0.0 if denom == 0 else 2.0 * np.sum(decided & truth) / denom
    # single-label micro F1 counts every wrong row once as FP and once as FN: it is accuracy
    y, labels = _class_labels(y_true, y_pred)
    return np.mean(labels == y)


def f1_macro(y_true, y_pred):
    if _is_multilabel(y_true):
        decided = y_pred >= 0.5
        truth = y_true == 1
        tp = np.sum(decided & truth, axis=0)
        denom = decided.sum(axis=0) + truth.sum(axis=0)
        # a label with neither true nor predicted positives scores 0 (sklearn's zero_division default)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.mean(np.where(denom > 0, 2.0 * tp / denom, 0.0))
    y, labels = _class_labels(y_true, y_pred)
    n_classes = y_pred.shape[1] if _is_multiclass(y_true, y_pred) else 2
    # sklearn averages over the classes present in y_true or the predictions
    return np.nanmean(_f1_per_class(y, labels, n_classes))


def qwk(y_true, y_pred):
    """Quadratic weighted kappa with weights (i - j)**2 on the grade values.

    With O the confusion matrix and E the outer product of its margins over n,
    sum(W*O) = sum((y - l)**2) and sum(W*E) = sum(y**2) + sum(l**2) - 2 sum(y) sum(l) / n,
    so no K x K matrix is built. Equals sklearn's cohen_kappa_score(weights="quadratic",
    labels=range(K)); without ``labels`` sklearn weights by position among the labels
    present, which only differs when a grade inside the range is absent from both.
    """
    y, labels = _class_labels(y_true, y_pred)
    y = y.astype(np.float64)
    labels = labels.astype(np.float64)
    observed = np.sum((y - labels) ** 2)
    expected = np.sum(y**2) + np.sum(labels**2) - 2.0 * y.sum() * labels.sum() / len(y)
    if expected == 0:
        return np.nan  # one grade everywhere on both sides: kappa is undefined (sklearn: nan)
    return 1.0 - observed / expected


def rmse(y_true, y_pred):
    return np.sqrt(np.mean((y_true.reshape(-1) - y_pred.reshape(-1)) ** 2))


def mae(y_true, y_pred):
    return np.mean(np.abs(y_true.reshape(-1) - y_pred.reshape(-1)))
