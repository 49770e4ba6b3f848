"""Temperature scaling of probabilities: fit one temperature on OOF rows, apply it to any prediction."""

from __future__ import annotations

import math

import numpy as np

from .objective import EPS, logit, sigmoid, softmax


def apply_temperature(pred: np.ndarray, temperature: float) -> np.ndarray:
    """Scale log-probabilities by ``1 / temperature`` and renormalise.

    Parameters
    ----------
    pred : ndarray of shape (n_rows, n_cols) or (n_rows,)
        Probabilities; one column (or 1-D) means binary.
    temperature : float
        ``> 0``.  Below 1 sharpens, above 1 softens; 1 is the identity (up
        to the 1e-15 clip).

    Returns
    -------
    ndarray of the same shape as ``pred``.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0; got {temperature}")
    pred = np.asarray(pred, dtype=np.float64)
    if pred.ndim == 1 or pred.shape[1] == 1:
        return sigmoid(logit(pred, EPS) / temperature)
    return softmax(np.log(np.clip(pred, EPS, 1.0)) / temperature, axis=1)


def fit_temperature(pred: np.ndarray, y: np.ndarray, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """Temperature minimising the log loss of ``apply_temperature(pred, T)``.

    Parameters
    ----------
    pred : ndarray of shape (n_rows, n_cols) or (n_rows,)
        Probabilities (binary when one column).
    y : ndarray of shape (n_rows,)
        Integer labels.
    bounds : (float, float)
        Search range for ``T``; searched on a log scale because the loss is
        far flatter in ``log T``.

    Returns
    -------
    T : float
    """
    from scipy.optimize import minimize_scalar

    pred = np.asarray(pred, dtype=np.float64)
    y = np.asarray(y).astype(np.int64)
    if pred.ndim == 1 or pred.shape[1] == 1:
        z = logit(pred.reshape(-1), EPS)
        # logit of the true class: +z for positives, -z for negatives
        zy = np.where(y == 1, z, -z)

        def loss(log_t: float) -> float:
            s = zy / math.exp(log_t)
            # -log(sigmoid(s)) = log1p(exp(-s)), written to avoid overflow
            return float(np.mean(np.logaddexp(0.0, -s)))

    else:
        z = np.log(np.clip(pred, EPS, 1.0))
        z_true = z[np.arange(len(y)), y]

        def loss(log_t: float) -> float:
            zt = z / math.exp(log_t)
            zmax = zt.max(axis=1)
            lse = zmax + np.log(np.exp(zt - zmax[:, None]).sum(axis=1))
            return float(np.mean(lse - z_true / math.exp(log_t)))

    res = minimize_scalar(loss, bounds=(math.log(bounds[0]), math.log(bounds[1])), method="bounded",
                          options={"xatol": 1e-4})
    return float(math.exp(res.x))
