"""``slsqp``: weights on the simplex by SciPy's SLSQP on a smooth loss with its analytic gradient."""

from __future__ import annotations

import numpy as np

from .base import BlendMethod, register_blend
from .objective import EPS, LinearLoss


@register_blend("slsqp")
class SLSQPWeights(BlendMethod):
    """Weights on the simplex by ``scipy.optimize.minimize(method="SLSQP")``.

    Minimises a smooth loss of the blend (with its analytic gradient) under
    ``w >= 0``, ``sum(w) = 1``, from equal weights: the log loss for
    probabilities (for multilabel the mean binary cross-entropy over all
    elements), the squared error for values.  For ``log_loss`` (and
    ``rmse``/``mse`` on values) that is the metric itself, or has the same
    minimiser.  Other metrics (accuracy, F1, AUC, QWK) are piecewise constant
    in the weights, so their gradient is zero almost everywhere and SLSQP
    would not move; for them the smooth loss is minimised as a surrogate
    (``surrogate_`` names it).

    Parameters
    ----------
    max_iter : int, default 200
    ftol : float, default 1e-10

    Attributes
    ----------
    surrogate_ : {"log_loss", "squared_error"} or None
        The loss minimised in place of the metric; None when it is the
        metric (or has the metric's minimiser).
    exact_ : bool
        No surrogate and SLSQP converged: the weights are the optimum of
        the metric on the simplex (the loss is convex in the weights), which
        the other weight searches approximate.
    result_ : scipy.optimize.OptimizeResult
    """

    defaults = {"max_iter": 200, "ftol": 1e-10}

    def _fit(self, preds, y, metric, extra):
        from scipy.optimize import minimize

        obj = LinearLoss(preds, y, metric, task=self.task_, force_log_loss=True)
        if obj.mode == "sq":
            self.surrogate_ = None if metric.name in ("rmse", "mse") else "squared_error"
        else:
            self.surrogate_ = None if metric.name == "log_loss" else "log_loss"
        stack, n_elements, n = obj.stack, obj.stack.shape[1], preds.shape[0]

        def loss(w: np.ndarray) -> float:
            return obj.weights_loss(w)

        def grad(w: np.ndarray) -> np.ndarray:
            if obj.mode == "sq":
                # d/dw mean((w @ S)^2) = 2 S (w @ S) / N, S the residuals
                return 2.0 * (stack @ (w @ stack)) / n_elements
            b = np.clip(w @ stack, EPS, obj.hi)
            return -(stack @ (1.0 / b)) / n_elements

        res = minimize(
            loss, np.full(n, 1.0 / n), jac=grad, method="SLSQP", bounds=[(0.0, 1.0)] * n,
            constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones_like(w)}],
            options={"maxiter": self.params["max_iter"], "ftol": self.params["ftol"]},
        )
        w = np.clip(res.x, 0.0, None)
        self.weights_ = w / w.sum() if w.sum() > 0 else np.full(n, 1.0 / n)
        self.result_ = res
        self.exact_ = self.surrogate_ is None and bool(res.success)
