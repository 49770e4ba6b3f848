"""What averaging k fold models gains on the test set, which no OOF row can show.

An OOF row is predicted by the one fold model that did not train on it; a test row by the
mean of all k fold models.  The mean of k models scores better than one of them, by an amount
that differs between candidates: a high-variance single model gains more than a blend that
already averages several models.  Scores fitted and compared on OOF rows (the nested CV of
:mod:`pipeline.blend.nested`) cannot see that difference, so a blend can win in nested CV and
lose to a single model on the test set.

For squared error the gain needs no labels at all: for every row,
``|mean_k p_k - y|^2 = mean_k |p_k - y|^2 - mean_k |p_k - mean_k p_k|^2`` (the ambiguity
decomposition), so the fold mean's error is one fold model's error less the spread of the k
predictions (:func:`ambiguity`).  For other metrics (accuracy, log loss, AUC, ...) the gain
depends on the labels only on the rows where the fold models disagree;
:func:`averaging_gain` takes its expectation over labels drawn from one *reference*
distribution shared by every candidate (:func:`reference_distribution`: the best candidate's
test predictions, temperature-scaled on its held-out rows), not from each candidate's own
probabilities, which would credit an over-confident candidate with its own confidence.  For
squared error the expectation equals the label-free identity whatever the reference.

Pure: arrays in, numbers out.
"""

from __future__ import annotations

import numpy as np

from ..task.metrics import TASK_OUTPUT, Metric
from .calibration import apply_temperature, fit_temperature
from .validation import as_metric

#: The tasks whose labels can be drawn from predicted probabilities.
DRAWABLE_TASKS = tuple(task for task, output in TASK_OUTPUT.items() if output in ("simplex", "probability"))


def ambiguity(fold_preds: np.ndarray) -> float:
    """The mean squared spread of k predictions around their mean: what averaging them removes from squared error.

    Parameters
    ----------
    fold_preds : ndarray of shape (n_folds, n_rows, n_cols)

    Returns
    -------
    float
        ``mean over rows of mean_k |p_k - mean_k p_k|^2`` (summed over columns); 0 when every
        fold model predicts the same.
    """
    fold_preds = _check_fold_preds(fold_preds)
    spread = fold_preds - fold_preds.mean(axis=0, keepdims=True)
    return float((spread**2).sum(axis=2).mean())


def reference_distribution(test_pred: np.ndarray, nested_pred: np.ndarray, y: np.ndarray, task: str) -> np.ndarray:
    """The label distribution of the test rows that every candidate's gain is taken under.

    Parameters
    ----------
    test_pred : ndarray of shape (n_test, n_cols)
        One candidate's test predictions (the stage passes the best nested candidate's).
    nested_pred : ndarray of shape (n_rows, n_cols)
        The same candidate's held-out predictions of the training rows.
    y : ndarray
        The training labels.
    task : str
        ``multiclass`` and ``binary`` are temperature-scaled on ``(nested_pred, y)``, so the
        reference is as confident as the candidate proved to be on rows it did not see;
        ``multilabel`` is used as predicted.

    Returns
    -------
    ndarray of shape (n_test, n_cols)
    """
    if task not in DRAWABLE_TASKS:
        raise ValueError(f"task {task!r} has no label distribution to draw from; one of {', '.join(DRAWABLE_TASKS)}")
    test_pred = np.asarray(test_pred, dtype=np.float64)
    if task == "multilabel":
        return np.clip(test_pred, 0.0, 1.0)
    temperature = fit_temperature(np.asarray(nested_pred, dtype=np.float64), np.asarray(y).reshape(-1))
    return apply_temperature(test_pred, temperature)


def draw_labels(reference: np.ndarray, task: str, rng: np.random.Generator) -> np.ndarray:
    """One draw of test labels from ``reference``, in the shape the task's metrics read.

    Returns
    -------
    ndarray
        ``multiclass``: class indices ``(n_rows,)``; ``binary``: 0/1 ``(n_rows,)``;
        ``multilabel``: 0/1 ``(n_rows, n_labels)``.
    """
    reference = np.asarray(reference, dtype=np.float64)
    u = rng.random(reference.shape[0])
    if task == "multiclass":
        cumulative = np.cumsum(reference, axis=1)
        draw = (cumulative < (u * cumulative[:, -1])[:, None]).sum(axis=1)
        return np.minimum(draw, reference.shape[1] - 1)
    if task == "binary":
        return (u < reference.reshape(reference.shape[0], -1)[:, -1]).astype(np.int64)
    if task == "multilabel":
        return (rng.random(reference.shape) < reference).astype(np.int64)
    raise ValueError(f"task {task!r} has no label distribution to draw from; one of {', '.join(DRAWABLE_TASKS)}")


def averaging_gain(
    fold_preds: np.ndarray,
    metric: Metric | str,
    reference: np.ndarray,
    task: str,
    *,
    n_draws: int = 32,
    seed: int = 0,
    decide=None,
) -> float:
    """The expected score of the mean of k fold models less that of one fold model, labels drawn from ``reference``.

    Parameters
    ----------
    fold_preds : ndarray of shape (n_folds, n_test, n_cols)
        One candidate's k predictions of the test rows (a run's fold models; a blend applied to
        each fold's models, :func:`pipeline.blend.apply.blend_each_fold`).
    metric : Metric or str
    reference : ndarray of shape (n_test, n_cols)
        The label distribution (:func:`reference_distribution`), the same for every candidate
        compared.
    task : str
        One of :data:`DRAWABLE_TASKS`.
    n_draws : int, default 32
        Label draws; every draw scores the mean and each fold model on the same labels, so the
        difference is far less noisy than either score.
    seed : int, default 0
        The draws' seed: the same seed gives every candidate the same labels.
    decide : callable, optional
        The candidate's tuned decision (thresholds, cut points), applied to each prediction
        before scoring.

    Returns
    -------
    float
        In the metric's units, positive when the mean scores better (for a loss: how much lower
        it is).  0.0 for one fold model.
    """
    metric = as_metric(metric)
    fold_preds = _check_fold_preds(fold_preds)
    if n_draws < 1:
        raise ValueError(f"n_draws must be >= 1; got {n_draws}")
    reference = np.asarray(reference, dtype=np.float64)
    if reference.shape[0] != fold_preds.shape[1]:
        raise ValueError(f"reference has {reference.shape[0]} rows, fold_preds {fold_preds.shape[1]}; "
                         "give both for the same test rows")
    if fold_preds.shape[0] == 1:
        return 0.0
    decide = decide or (lambda pred: pred)
    mean = decide(fold_preds.mean(axis=0))
    each = [decide(pred) for pred in fold_preds]
    rng = np.random.default_rng(seed)
    total = 0.0
    for _ in range(n_draws):
        labels = draw_labels(reference, task, rng)
        total += metric(labels, mean) - float(np.mean([metric(labels, pred) for pred in each]))
    gain = total / n_draws
    return gain if metric.greater_is_better else -gain


def _check_fold_preds(fold_preds: np.ndarray) -> np.ndarray:
    arr = np.asarray(fold_preds, dtype=np.float64)
    if arr.ndim != 3 or arr.shape[0] == 0:
        raise ValueError(f"fold_preds must have shape (n_folds, n_rows, n_cols) with n_folds >= 1; got {arr.shape}")
    return arr
