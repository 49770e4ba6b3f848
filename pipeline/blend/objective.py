"""The fast objective of linear blends (:class:`LinearLoss`) and the array helpers around it.

Also here: the softmax/sigmoid/logit helpers, ``to_output`` (a blend back to a valid
prediction of its kind), the stackers' logit features and the single-model scores.

Why the objectives are written the way they are
-----------------------------------------------
All weight methods (``optuna``, ``caruana``, ``hill_climb``, ``slsqp``)
score thousands of linear blends ``sum_m w_m * preds[m]`` with weights that
sum to one.  Because every model's rows sum to one (checked in ``fit``), such
a blend's log loss only needs the probability each model gave to the true
class, an ``(n_models, n_rows)`` array: the blend of those is the blend's
true-class probability.  The same holds per element for independent
probabilities (binary, multilabel): the blend of ``p`` where ``y = 1`` and
``1 - p`` where ``y = 0`` is the blend's probability of the truth.
:class:`LinearLoss` uses that reduction for ``log_loss`` (10x less memory
traffic for 10 classes) and falls back to calling the metric on full blends
for other metrics and for values.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..task.metrics import TASK_OUTPUT, Metric
from .validation import as_metric, resolve_task, validate_preds, validate_y

# Same clip as metrics._log_loss, so the fast objectives equal the metric.
EPS = 1e-15
# Clip for log-space averaging and stacker features: one model's exact 0
# would otherwise give log(1e-15) = -34.5 and veto a class on its own.
LOG_CLIP = 1e-7
# Elements per chunk when many candidate blends are scored at once; bounds
# temporary memory to ~32 MB of float64.
_CHUNK_ELEMENTS = 4_000_000


def to_output(blend: np.ndarray, output: str) -> np.ndarray:
    """Turn a (possibly negative-weight) blend into a valid prediction of its kind.

    ``"probability"``: clip each element to [0, 1].  ``"simplex"``: clip at 0
    and renormalise rows; a row clipped to all zeros becomes uniform.
    ``"value"``: unchanged (values have no range to keep).
    """
    if output == "value":
        return blend
    if output == "probability":
        return np.clip(blend, 0.0, 1.0)
    out = np.clip(blend, 0.0, None)
    sums = out.sum(axis=-1, keepdims=True)
    zero = sums <= 0
    if zero.any():
        out = np.where(zero, 1.0, out)
        sums = out.sum(axis=-1, keepdims=True)
    return out / sums


def softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def sigmoid(z: np.ndarray) -> np.ndarray:
    # exp of a non-positive argument only, so no overflow warnings
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def logit(p: np.ndarray, eps: float) -> np.ndarray:
    p = np.clip(p, eps, 1.0 - eps)
    return np.log(p) - np.log1p(-p)


def logit_features(preds: np.ndarray, output: str) -> np.ndarray:
    """Stacker inputs: each model's predictions in logit space, side by side.

    Probabilities (binary, multilabel): ``logit(p)`` per element.  Simplex
    (multiclass): log-probabilities centred per row (the softmax is
    invariant to that shift, and centring removes a redundant per-row offset
    the regulariser would otherwise pay for).  Values: the values themselves.

    Returns
    -------
    X : float32 ndarray of shape (n_rows, n_models * n_cols)
        Model-major (all columns of model 0, then model 1, ...).  float32
        halves the memory and makes sklearn's lbfgs ~1.5x faster (measured);
        7 significant digits are far more than a logit needs.
    """
    n_models, n_rows, n_cols = preds.shape
    if output == "value":
        z = preds
    elif output == "probability":
        z = logit(preds, LOG_CLIP)
    else:
        z = np.log(np.clip(preds, LOG_CLIP, 1.0))
        z -= z.mean(axis=2, keepdims=True)
    return z.transpose(1, 0, 2).reshape(n_rows, n_models * n_cols).astype(np.float32)


def single_model_scores(preds: np.ndarray, y: np.ndarray, metric: Metric | str, *,
                        task: str | None = None) -> np.ndarray:
    """Score each model on its own.

    Parameters
    ----------
    preds : ndarray of shape (n_models, n_rows, n_cols)
    y : ndarray of shape (n_rows,) or (n_rows, n_labels)
        See the table in :mod:`pipeline.blend` for each task.
    metric : Metric or str
    task : str or None, default None
        A key of :data:`TASK_OUTPUT`; None infers binary (one column) or
        multiclass.

    Returns
    -------
    scores : ndarray of shape (n_models,)
        In the metric's own units and direction.
    """
    metric = as_metric(metric)
    preds, task = validate_preds(preds, task=task)
    y = validate_y(y, preds.shape[1], preds.shape[2], task)
    return single_scores(preds, y, metric)


def single_scores(preds: np.ndarray, y: np.ndarray, metric: Metric) -> np.ndarray:
    return np.array([metric(y, p) for p in preds])


class LinearLoss:
    """Loss of blends ``sum_m w_m preds[m]`` (``sum w = 1``), fast for log loss.

    ``stack`` is the per-model representation that blends linearly, chosen
    by ``mode``:

    * ``"log"`` -- log loss (or ``force_log_loss``) of probabilities: the
      probability each model gave to the truth, flattened to ``(n_models,
      n_rows * k)``.  Multiclass: the true class's column (``k = 1``);
      binary and multilabel: ``p`` where ``y = 1`` and ``1 - p`` where
      ``y = 0``, per element (``k = n_labels``), whose mean ``-log`` is the
      mean binary cross-entropy over all elements.  A metric named
      ``log_loss`` that is not that mean for multilabel targets (e.g. summed
      over labels) is detected on the first blend and scored the generic
      way instead.
    * ``"sq"`` -- ``force_log_loss`` on values: the residuals ``pred - y``,
      ``(n_models, n_rows)``, whose blend is the blend's residual (weights
      sum to 1), scored by their mean square (SLSQP's smooth surrogate),
      in units of the equal-weight blend's RMSE.
    * ``"metric"`` -- any other metric: the predictions themselves,
      ``(n_models, n_rows, n_cols)``, scored by calling the metric (a loop
      over candidate blends, never over rows).

    Parameters
    ----------
    task : str
        A key of :data:`TASK_OUTPUT` (resolved, not None).
    force_log_loss : bool
        Use a smooth surrogate whatever the metric (SLSQP's): the log loss
        for probabilities, the squared error for values.
    clip : bool
        Blends may have negative weights: clip (and renormalise simplex rows)
        to valid probabilities before scoring; values are left unclipped.
        Disables the fast path, whose reduction is only valid for
        non-negative blends.
    dtype : numpy dtype
        Of the fast-path ``stack``.  float32 makes the candidate scans of
        ``caruana`` and ``hill_climb`` ~2.5x faster (``log`` dominates; the
        means are still accumulated in float64).  Its ~6e-8 relative error
        is far below their 1e-6 rounding/tolerance; SLSQP, whose ``ftol`` is
        finer, keeps float64.
    """

    def __init__(self, preds: np.ndarray, y: np.ndarray, metric: Metric, *, task: str | None = None,
                 force_log_loss: bool = False, clip: bool = False, dtype: Any = np.float64):
        self.metric = metric
        self.y = y
        self.clip = clip
        self.task = resolve_task(task, preds.shape[2])
        self.output = TASK_OUTPUT[self.task]
        self.mode = "metric"
        if not clip:
            if self.output == "value":
                # values have no log loss: the squared error only as SLSQP's surrogate, the metric otherwise
                self.mode = "sq" if force_log_loss else "metric"
            elif metric.name == "log_loss" or force_log_loss:
                self.mode = "log"
        self.hi = 1.0
        if self.mode == "log":
            if self.output == "probability":
                # y is (n_rows,) for binary and (n_rows, n_labels) for multilabel: either way one 0/1 per element
                truth = y.reshape(preds.shape[1], -1)
                stack = np.where(truth[None] == 1, preds, 1.0 - preds).reshape(preds.shape[0], -1)
                # metrics._log_loss clips binary p to [eps, 1 - eps], multiclass to [eps, 1]
                self.hi = 1.0 - EPS
            else:
                stack = preds[:, np.arange(preds.shape[1]), y]
            if self.task == "multilabel" and not force_log_loss and not self._matches_metric(stack, preds):
                self.mode, stack = "metric", preds
            self.stack = stack if self.mode == "metric" else stack.astype(dtype, copy=False)
        elif self.mode == "sq":
            resid = preds[:, :, 0] - y[None, :]
            # in units of the equal-weight blend's RMSE, so that SLSQP's absolute ftol means the same at any
            # target scale (prices in the millions or rates in the thousandths)
            scale = math.sqrt(float(np.mean(np.square(resid.mean(axis=0)))))
            self.stack = (resid / (scale if scale > 0 else 1.0)).astype(dtype, copy=False)
        else:
            self.stack = preds

    @property
    def fast(self) -> bool:
        """True on the log-loss reduction (hill climbing's exact pruning needs its convexity)."""
        return self.mode == "log"

    def _matches_metric(self, stack: np.ndarray, preds: np.ndarray) -> bool:
        # "log_loss" on multilabel targets has more than one convention (mean or sum over labels); the
        # reduction is the mean over elements, so use it only when it gives the metric's own value
        r = stack.mean(axis=0)
        fast = float(self._reduce(np.array(r, dtype=np.float64)))
        return math.isclose(fast, self.metric.loss(self.y, preds.mean(axis=0)), rel_tol=1e-9, abs_tol=1e-12)

    @property
    def n_models(self) -> int:
        return self.stack.shape[0]

    def subset(self, idx: np.ndarray) -> "LinearLoss":
        new = object.__new__(LinearLoss)
        new.__dict__.update(self.__dict__)
        new.stack = self.stack[idx]
        return new

    def blend(self, w: np.ndarray) -> np.ndarray:
        return np.tensordot(w, self.stack, axes=1)

    def _reduce(self, r: np.ndarray) -> np.ndarray:
        """Fast-path loss over the last axis, in place on ``r``: -mean(log(clip(r))) or mean(r**2)."""
        if self.mode == "sq":
            np.square(r, out=r)
            return r.mean(axis=-1, dtype=np.float64)
        np.clip(r, EPS, self.hi, out=r)
        np.log(r, out=r)
        return -r.mean(axis=-1, dtype=np.float64)

    def loss(self, r: np.ndarray) -> float:
        """Loss of one blend given in the ``stack`` representation."""
        if self.mode != "metric":
            return float(self._reduce(np.array(r, dtype=self.stack.dtype)))
        pred = to_output(r, self.output) if self.clip else r
        return self.metric.loss(self.y, pred)

    def weights_loss(self, w: np.ndarray) -> float:
        return self.loss(self.blend(w))

    def affine_losses(self, base: np.ndarray, a: float, idx: np.ndarray | None = None) -> np.ndarray:
        """Losses of ``(1 - a) * base + a * stack[i]`` for every model ``i``.

        Caruana's step (``base`` = current mean, ``a = 1 / (k + 1)``) and a
        hill-climbing move are both of this form.  ``idx`` restricts the
        candidates (the output then has ``len(idx)`` entries).
        """
        models = np.arange(self.n_models) if idx is None else np.asarray(idx)
        out = np.empty(len(models))
        if self.mode != "metric":
            dt = self.stack.dtype.type
            shifted = (dt(1.0 - a) * base).astype(self.stack.dtype, copy=False)
            chunk = max(1, _CHUNK_ELEMENTS // max(1, self.stack.shape[1]))
            for s in range(0, len(models), chunk):
                sel = models[s:s + chunk]
                r = self.stack[sel] if idx is not None else self.stack[s:s + chunk]
                r = r * dt(a)
                r += shifted
                out[s:s + chunk] = self._reduce(r)
            return out
        shifted = (1.0 - a) * base
        for j, i in enumerate(models):  # loop over candidate models; the metric is vectorised over rows
            out[j] = self.loss(shifted + a * self.stack[i])
        # an undefined score (AUC on a one-class subset) must never be chosen
        return np.where(np.isnan(out), np.inf, out)

    def descent_models(self, base: np.ndarray) -> np.ndarray:
        """Models ``i`` along which the log loss of ``(1 - a) base + a stack[i]``
        decreases at ``a = 0`` (fast path only).

        The log loss is convex in ``a``, so a model with a non-negative slope
        at 0 cannot improve the blend for any ``a > 0``: hill climbing skips
        it without changing the result.
        """
        b = np.clip(base, EPS, None)
        slope = -((self.stack - b) / b).mean(axis=1, dtype=np.float64)
        return np.flatnonzero(slope < 0)

    def single_losses(self) -> np.ndarray:
        return self.affine_losses(np.zeros(self.stack.shape[1:], dtype=self.stack.dtype), 1.0)
