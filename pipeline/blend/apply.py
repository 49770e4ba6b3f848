"""Applying a fitted blend to the test set: per fold model, then averaged, or on the fold means.

A k-fold run predicts the test set with each of its k fold models.  The stored
``test.parquet`` is the mean of those k predictions, which is smoother than any
single fold model's OOF predictions (an average of k models is less confident).
A blend fitted on OOF rows learnt on single-fold-model inputs, so applying it to
fold means feeds it inputs of another shape; nonlinear blends (geometric, logit
and power means, a temperature, stackers) suffer most.

:func:`predict_per_fold` applies the blend to each fold's models together (fold
``k`` of every run: inputs shaped like the OOF rows the blend was fitted on)
and averages the k blended predictions.  :func:`predict_fold_mean` is the former
behaviour, the blend applied once to the fold means.  Both are pure: arrays in,
arrays out.
"""

from __future__ import annotations

import numpy as np

from .base import BlendMethod

#: How a fitted blend meets the test set; ``ensemble.apply`` in the config.
APPLY_MODES = ("per_fold", "fold_mean")


def fold_means(fold_preds: np.ndarray) -> np.ndarray:
    """The stored test predictions' shape: ``(n_models, n_folds, n, c)`` -> ``(n_models, n, c)``."""
    return np.asarray(fold_preds, dtype=np.float64).mean(axis=1)


def predict_per_fold(method: BlendMethod, fold_preds: np.ndarray, extra: np.ndarray | None = None) -> np.ndarray:
    """Apply a fitted blend to each fold's models, then average the blended predictions.

    Parameters
    ----------
    method : BlendMethod
        Fitted on OOF predictions of the same models, in the same order.
    fold_preds : ndarray of shape (n_models, n_folds, n_rows, n_cols)
        ``fold_preds[m, k]``: fold model ``k`` of model ``m`` on the test rows.
        Fold ``k`` of every model was trained on the same rows (one split), so
        ``fold_preds[:, k]`` is an ensemble input of the kind each OOF row gave.
    extra : ndarray of shape (n_rows, n_features), optional
        Per-row metadata for a stacker fitted with it (the same for every fold).

    Returns
    -------
    ndarray of shape (n_rows, n_cols)
        The mean over folds of ``method.predict(fold_preds[:, k])``, including
        the method's temperature (fitted on OOF-shaped inputs, applied to the
        same shape).  Rows of a multiclass blend still sum to 1.
    """
    return blend_each_fold(method, fold_preds, extra).mean(axis=0)


def blend_each_fold(method: BlendMethod, fold_preds: np.ndarray, extra: np.ndarray | None = None) -> np.ndarray:
    """A fitted blend applied to each fold's models, not yet averaged.

    What :func:`predict_per_fold` averages, kept apart: the spread of the k blended
    predictions is what averaging them gains (:mod:`pipeline.blend.averaging`).

    Parameters
    ----------
    method : BlendMethod
        Fitted on OOF predictions of the same models, in the same order.
    fold_preds : ndarray of shape (n_models, n_folds, n_rows, n_cols)
    extra : ndarray of shape (n_rows, n_features), optional

    Returns
    -------
    ndarray of shape (n_folds, n_rows, n_cols)
        ``method.predict(fold_preds[:, k])`` for each fold ``k``.
    """
    fold_preds = np.asarray(fold_preds, dtype=np.float64)
    if fold_preds.ndim != 4:
        raise ValueError(f"fold_preds must have shape (n_models, n_folds, n_rows, n_cols); got {fold_preds.shape}")
    blended = [method.predict(fold_preds[:, k], extra=extra) for k in range(fold_preds.shape[1])]
    return np.stack([np.asarray(pred, dtype=np.float64) for pred in blended])


def predict_fold_mean(method: BlendMethod, fold_preds: np.ndarray, extra: np.ndarray | None = None) -> np.ndarray:
    """Apply a fitted blend once, to the mean over folds of each model's test predictions (the former way)."""
    return method.predict(fold_means(fold_preds), extra=extra)


def predict_test(method: BlendMethod, tests: np.ndarray, fold_preds: np.ndarray | None, mode: str,
                 extra: np.ndarray | None = None) -> np.ndarray:
    """The blend's test predictions in ``mode`` (one of :data:`APPLY_MODES`).

    Parameters
    ----------
    tests : ndarray of shape (n_models, n_rows, n_cols)
        The stored fold-mean test predictions.
    fold_preds : ndarray of shape (n_models, n_folds, n_rows, n_cols) or None
        Per-fold test predictions; None when they are not stored, in which case
        ``per_fold`` falls back to ``fold_mean`` (the caller says so).
    """
    if mode not in APPLY_MODES:
        raise ValueError(f"apply mode {mode!r}: choose one of {', '.join(APPLY_MODES)}")
    if mode == "per_fold" and fold_preds is not None:
        return predict_per_fold(method, fold_preds, extra)
    return method.predict(tests, extra=extra)
