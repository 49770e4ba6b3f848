"""``caruana``: greedy ensemble selection with replacement (Caruana et al., 2004)."""

from __future__ import annotations

import numpy as np

from .base import BlendMethod, is_int, register_blend, require
from .objective import LinearLoss


@register_blend("caruana")
class CaruanaSelection(BlendMethod):
    """Greedy ensemble selection with replacement (Caruana et al., 2004).

    Each step adds the model whose inclusion (with replacement) gives the
    best blend; the weights are the selection counts of the best prefix of
    the trajectory.  Following AutoGluon: candidate scores after the first
    step are rounded to ``decimals`` so float noise does not decide, ties
    prefer a model already chosen (then the lowest index), and the earliest
    best prefix wins (fewest models).

    Parameters
    ----------
    n_steps : int, default 25
        Greedy additions (after ``sorted_init``).
    sorted_init : int, default 0
        Start from the top ``sorted_init`` single models, each once.
    n_bags : int, default 1
        More than 1: run the selection on ``n_bags`` random model subsets of
        size ``bag_fraction * n_models`` and average the weights (Caruana's
        bagged selection, which reduces overfitting with many models).
    bag_fraction : float, default 0.5
    seed : int, default 0
        Seed of the bag sampling.
    decimals : int, default 6

    Attributes
    ----------
    trajectories_ : list of list of int
        Per bag, the models added at each step (indices into all models).
    best_lengths_ : list of int
        Per bag, the length of the prefix kept.
    """

    defaults = {"n_steps": 25, "sorted_init": 0, "n_bags": 1, "bag_fraction": 0.5, "seed": 0, "decimals": 6}

    def _check_params(self):
        p = self.params
        require(is_int(p["n_steps"]) and p["n_steps"] >= 1, f"n_steps must be an int >= 1; got {p['n_steps']!r}")
        require(
            is_int(p["sorted_init"]) and p["sorted_init"] >= 0,
            f"sorted_init must be an int >= 0; got {p['sorted_init']!r}",
        )
        require(is_int(p["n_bags"]) and p["n_bags"] >= 1, f"n_bags must be an int >= 1; got {p['n_bags']!r}")
        require(0 < p["bag_fraction"] <= 1, f"bag_fraction must be in (0, 1]; got {p['bag_fraction']!r}")

    def _select(self, obj: LinearLoss, idx: np.ndarray) -> np.ndarray:
        n = obj.n_models
        decimals = self.params["decimals"]
        counts = np.zeros(n, dtype=np.int64)
        trajectory: list[int] = []
        scores: list[float] = []
        mean = np.zeros(obj.stack.shape[1:], dtype=obj.stack.dtype)  # running mean of the chosen models

        def add(i: int, score: float) -> None:
            nonlocal mean
            k = len(trajectory)
            mean = (k * mean + obj.stack[i]) / (k + 1)
            counts[i] += 1
            trajectory.append(i)
            scores.append(score)

        if self.params["sorted_init"] > 0:
            single = obj.single_losses()
            for i in np.argsort(single, kind="stable")[: self.params["sorted_init"]]:
                k = len(trajectory)
                s = obj.loss((k * mean + obj.stack[i]) / (k + 1))
                add(int(i), round(s, decimals) if k > 0 else s)

        for _ in range(self.params["n_steps"]):
            k = len(trajectory)
            cand = obj.affine_losses(mean, 1.0 / (k + 1))
            cand = np.where(np.isnan(cand), np.inf, cand)  # e.g. AUC undefined on a fold
            if k > 0:
                cand = np.round(cand, decimals)
            ties = np.flatnonzero(cand == cand.min())
            used = ties[counts[ties] > 0]
            i = int(used[0] if used.size else ties[0])
            add(i, float(cand[i]))

        length = int(np.argmin(scores)) + 1  # first minimum: shortest best prefix
        self.trajectories_.append([int(idx[i]) for i in trajectory])
        self.best_lengths_.append(length)
        return np.bincount(trajectory[:length], minlength=n) / length

    def _fit(self, preds, y, metric, extra):
        obj = LinearLoss(preds, y, metric, task=self.task_, dtype=np.float32)
        n = preds.shape[0]
        self.trajectories_: list[list[int]] = []
        self.best_lengths_: list[int] = []
        if self.params["n_bags"] == 1:
            self.weights_ = self._select(obj, np.arange(n))
            return
        rng = np.random.default_rng(self.params["seed"])
        size = max(1, int(round(self.params["bag_fraction"] * n)))
        total = np.zeros(n)
        for _ in range(self.params["n_bags"]):
            idx = np.sort(rng.choice(n, size=size, replace=False))
            total[idx] += self._select(obj.subset(idx), idx)
        self.weights_ = total / self.params["n_bags"]
