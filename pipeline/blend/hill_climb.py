"""``hill_climb``: hill climbing over a grid of mixing weights, from the best single model."""

from __future__ import annotations

import math

import numpy as np

from .base import BlendMethod, is_int, register_blend, require
from .objective import LinearLoss


@register_blend("hill_climb")
class HillClimb(BlendMethod):
    """Hill climbing over a weight grid, starting from the best single model.

    Each iteration tries every move ``blend <- (1 - a) * blend + a * model_i``
    for ``a`` in ``step, 2*step, ..., max_weight`` (and the negatives with
    ``allow_negative``), takes the best, and stops when no move improves
    the loss by more than ``tol``.  Weights always sum to 1.

    Parameters
    ----------
    step : float, default 0.05
        Grid spacing of the mixing weight ``a``.
    max_weight : float, default 0.5
        Largest ``|a|`` tried.
    allow_negative : bool, default False
        Also subtract models (``a < 0``); probability blends are then
        clipped (and simplex rows renormalised) to valid probabilities,
        value blends are left as they are, and weights can be negative.
    max_iter : int, default 100
    tol : float, default 1e-6
        Minimum loss improvement to accept a move.
    """

    defaults = {"step": 0.05, "max_weight": 0.5, "allow_negative": False, "max_iter": 100, "tol": 1e-6}

    def _check_params(self):
        p = self.params
        require(0 < p["step"] <= 1, f"step must be in (0, 1]; got {p['step']!r}")
        require(p["step"] <= p["max_weight"] <= 1, f"max_weight must be in [step, 1]; got {p['max_weight']!r}")
        require(is_int(p["max_iter"]) and p["max_iter"] >= 0, f"max_iter must be an int >= 0; got {p['max_iter']!r}")

    def _fit(self, preds, y, metric, extra):
        p = self.params
        obj = LinearLoss(preds, y, metric, task=self.task_, clip=p["allow_negative"], dtype=np.float32)
        n = preds.shape[0]
        n_grid = int(math.floor(p["max_weight"] / p["step"] + 1e-9))
        grid = p["step"] * np.arange(1, n_grid + 1)
        if p["allow_negative"]:
            grid = np.concatenate([grid, -grid])
        single = obj.single_losses()
        best = int(np.argmin(single))
        weights = np.zeros(n)
        weights[best] = 1.0
        current = obj.stack[best].copy()
        current_loss = float(single[best])
        for _ in range(p["max_iter"]):
            if obj.fast:
                move, move_loss = self._best_move_convex(obj, current, current_loss, grid)
            else:
                move, move_loss = None, current_loss
                for a in grid:
                    losses = obj.affine_losses(current, float(a))
                    i = int(np.argmin(losses))
                    if losses[i] < move_loss:
                        move, move_loss = (i, float(a)), float(losses[i])
            if move is None or current_loss - move_loss <= p["tol"]:
                break
            i, a = move
            current = (1.0 - a) * current + a * obj.stack[i]
            weights *= 1.0 - a
            weights[i] += a
            current_loss = move_loss
        self.weights_ = weights

    @staticmethod
    def _best_move_convex(obj: LinearLoss, current: np.ndarray, current_loss: float,
                          grid: np.ndarray) -> tuple[tuple[int, float] | None, float]:
        """Best grid move for the log loss, using its convexity along each move.

        Same answer as scanning the whole grid for every model, much cheaper:
        models whose slope at ``a = 0`` is not negative are skipped, and a
        model is dropped as soon as its loss stops decreasing along the
        (ascending) grid, since a convex function never comes back down.
        """
        active = obj.descent_models(current)
        previous = np.full(len(active), current_loss)
        move, move_loss = None, current_loss
        for a in grid:
            if len(active) == 0:
                break
            losses = obj.affine_losses(current, float(a), active)
            j = int(np.argmin(losses))
            if losses[j] < move_loss:
                move, move_loss = (int(active[j]), float(a)), float(losses[j])
            still = losses < previous
            active, previous = active[still], losses[still]
        return move, move_loss

    def family(self) -> str:
        # signed weights leave the simplex the other weight searches share: slsqp's optimum there is not this one's
        return ("signed " if self.params["allow_negative"] else "") + super().family()
