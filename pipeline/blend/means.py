"""Parameter-free means: arithmetic, rank, geometric, power and logit means of the models' predictions."""

from __future__ import annotations

import numpy as np

from .base import BlendMethod, register_blend, require
from .objective import LOG_CLIP, logit, sigmoid, softmax, to_output


class _MeanMethod(BlendMethod):
    """Means have nothing to fit; ``weights_`` is uniform for reporting."""

    kind = "mean"
    simplicity = 0

    def _fit(self, preds, y, metric, extra):
        self.weights_ = np.full(preds.shape[0], 1.0 / preds.shape[0])


# Means that read predictions as probabilities; for values they would take ranks, logs or powers of numbers
# on the target's scale, which have no meaning there (and logs of negatives are undefined).
_PROBABILITY_OUTPUTS = frozenset({"simplex", "probability"})


@register_blend("mean")
class Mean(_MeanMethod):
    """Arithmetic mean of the models' predictions (any task)."""

    def _predict(self, preds, extra):
        return to_output(preds.mean(axis=0), self.output_)


@register_blend("rank_mean")
class RankMean(_MeanMethod):
    """Mean of per-column ranks over rows, scaled to [0, 1].

    For rank metrics (AUC) this removes differences in calibration between
    models; binary and multilabel rank each column (label) on its own, which
    is what a per-label AUC reads.  Multiclass rows are renormalised to sum
    to 1.  The result is not a calibrated probability, so it scores poorly
    under log loss.  Ranks are taken within the rows passed to ``predict``,
    so a test prediction depends on the whole test set.  Not for values:
    ranks in [0, 1] are off the target's scale.
    """

    transductive = True
    outputs = _PROBABILITY_OUTPUTS
    why_not = "ranks in [0, 1] are not on the target's scale"

    def _predict(self, preds, extra):
        from scipy.stats import rankdata

        n_rows = preds.shape[1]
        if n_rows == 1:
            ranks = np.full_like(preds, 0.5)
        else:
            ranks = (rankdata(preds, axis=1) - 1.0) / (n_rows - 1)
        return to_output(ranks.mean(axis=0), self.output_)


@register_blend("geometric_mean")
class GeometricMean(_MeanMethod):
    """Geometric mean of the probabilities (clipped at 1e-7).

    Multiclass: rows renormalised, which equals ``logit_mean`` (softmax of
    the mean log-probability).  Binary and multilabel: the plain geometric
    mean of each positive-class probability, which is pulled towards 0
    unlike ``logit_mean``.  Not for values (logs of negative numbers).
    """

    outputs = _PROBABILITY_OUTPUTS
    why_not = "it averages logarithms, undefined for values <= 0"

    def _predict(self, preds, extra):
        return to_output(np.exp(np.log(np.clip(preds, LOG_CLIP, 1.0)).mean(axis=0)), self.output_)


@register_blend("power_mean")
class PowerMean(_MeanMethod):
    """Power mean ``(mean p**power) ** (1 / power)``; simplex rows renormalised.

    Not for values: non-integer powers of negative numbers are undefined,
    and even powers would lose the sign.

    Parameters
    ----------
    power : float, default 2
        Above 1 favours the confident models; 1 is the arithmetic mean and
        0 the geometric mean.
    """

    defaults = {"power": 2.0}
    outputs = _PROBABILITY_OUTPUTS
    why_not = "powers of negative values are undefined or lose the sign"

    def _check_params(self):
        require(np.isfinite(self.params["power"]), f"power must be a finite number; got {self.params['power']!r}")

    def _predict(self, preds, extra):
        power = float(self.params["power"])
        if power == 0:
            return GeometricMean._predict(self, preds, extra)
        base = np.clip(preds, LOG_CLIP, 1.0) if power < 0 else preds
        return to_output(np.power(np.power(base, power).mean(axis=0), 1.0 / power), self.output_)


@register_blend("logit_mean")
class LogitMean(_MeanMethod):
    """Mean in logit space, mapped back with sigmoid (binary, multilabel: per element) or softmax.

    Multiclass uses log-probabilities as the logits (the softmax inverse up
    to a per-row constant), so it coincides with ``geometric_mean`` there.
    Not for values, which have no logit.
    """

    outputs = _PROBABILITY_OUTPUTS
    why_not = "logits exist only for probabilities in (0, 1)"

    def _predict(self, preds, extra):
        if self.output_ == "probability":
            return sigmoid(logit(preds, LOG_CLIP).mean(axis=0))
        return softmax(np.log(np.clip(preds, LOG_CLIP, 1.0)).mean(axis=0), axis=-1)
