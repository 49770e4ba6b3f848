"""Ensemble ("blend") methods over stacked out-of-fold predictions.

This module is the pure core of the ensemble stage: NumPy arrays in, NumPy
arrays out, no file I/O.  Every method sees the same input

``preds``
    float array of shape ``(n_models, n_rows, n_cols)``: one OOF prediction
    per model, stacked.  ``n_cols`` is the number of classes for multiclass
    and 1 for binary (probability of the positive class).
``y``
    int array of shape ``(n_rows,)`` with labels ``0 .. n_classes - 1``.

and returns ``(n_rows, n_cols)`` probabilities from ``predict``.

Methods live in a registry (:data:`BLEND_METHODS`), filled with the
:func:`register_blend` decorator and instantiated with :func:`make_blend`, in
the way timm registers models.  A method fitted on OOF rows is scored
honestly by :func:`nested_score`: it is refitted inside the folds, so the
number that picks the ensemble (:func:`select_method`) is never the score
on rows the blender was tuned on.

Why the objectives are written the way they are
-----------------------------------------------
All weight methods (``optuna``, ``caruana``, ``hill_climb``, ``slsqp``)
score thousands of linear blends ``sum_m w_m * preds[m]`` with weights that
sum to one.  Because every model's rows sum to one (checked in ``fit``), such
a blend's log loss only needs the probability each model gave to the true
class, an ``(n_models, n_rows)`` array: the blend of those is the blend's
true-class probability.  :class:`_LinearLoss` uses that reduction for
``log_loss`` (10x less memory traffic for 10 classes) and falls back to
calling the metric on full blends for other metrics.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .metrics import Metric, get_metric

__all__ = [
    "BLEND_METHODS",
    "BlendMethod",
    "NestedResult",
    "apply_temperature",
    "fit_temperature",
    "make_blend",
    "nested_score",
    "prune_correlated",
    "register_blend",
    "select_method",
    "single_model_scores",
]

# Same clip as metrics._log_loss, so the fast objectives equal the metric.
_EPS = 1e-15
# Clip for log-space averaging and stacker features: one model's exact 0
# would otherwise give log(1e-15) = -34.5 and veto a class on its own.
_LOG_CLIP = 1e-7
# A multiclass row whose probabilities sum further than this from 1 is not a
# probability vector (e.g. logits passed by mistake); closer rows are
# renormalised (float16 / csv round-off).
_ROW_SUM_TOL = 1e-2
# Elements per chunk when many candidate blends are scored at once; bounds
# temporary memory to ~32 MB of float64.
_CHUNK_ELEMENTS = 4_000_000


# --------------------------------------------------------------------------- #
# Registry
# --------------------------------------------------------------------------- #

BLEND_METHODS: dict[str, type["BlendMethod"]] = {}


def register_blend(name: str) -> Callable[[type["BlendMethod"]], type["BlendMethod"]]:
    """Class decorator adding a :class:`BlendMethod` subclass to the registry.

    Parameters
    ----------
    name : str
        Registry key, as written in a config (``ensemble.method: caruana``).

    Returns
    -------
    decorator : callable
        Returns the class unchanged, with ``cls.name`` set to ``name``.
    """

    def decorator(cls: type[BlendMethod]) -> type[BlendMethod]:
        if not (isinstance(cls, type) and issubclass(cls, BlendMethod)):
            raise TypeError(f"@register_blend({name!r}) must decorate a BlendMethod subclass, got {cls!r}")
        if name in BLEND_METHODS:
            raise ValueError(f"blend method {name!r} is already registered (by {BLEND_METHODS[name].__name__})")
        cls.name = name
        BLEND_METHODS[name] = cls
        return cls

    return decorator


def make_blend(name: str, **params: Any) -> "BlendMethod":
    """Instantiate a registered blend method.

    Parameters
    ----------
    name : str
        A key of :data:`BLEND_METHODS`.
    **params
        Method parameters; see each class's ``defaults``.  ``calibrate`` is
        accepted by every method.

    Returns
    -------
    method : BlendMethod
        Unfitted.

    Raises
    ------
    KeyError
        ``name`` is not registered; the message lists the known methods.
    ValueError
        A parameter is unknown (the message names it and lists the valid
        ones) or has an invalid value.
    """
    try:
        cls = BLEND_METHODS[name]
    except KeyError:
        raise KeyError(
            f"unknown blend method {name!r}; known methods: {', '.join(BLEND_METHODS)}"
        ) from None
    return cls(**params)


# --------------------------------------------------------------------------- #
# Validation and small array helpers
# --------------------------------------------------------------------------- #


def _as_metric(metric: Metric | str) -> Metric:
    return get_metric(metric) if isinstance(metric, str) else metric


def _validate_preds(preds: Any, *, n_models: int | None = None, n_cols: int | None = None) -> np.ndarray:
    """Check the stacked predictions and return them as float64.

    Multiclass rows that sum to 1 within ``_ROW_SUM_TOL`` are renormalised
    (a copy) so that linear blends with weights summing to one stay exact
    probability vectors, which the fast log-loss objective relies on.
    """
    arr = np.asarray(preds)
    if arr.ndim != 3:
        raise ValueError(
            f"preds must be 3-D (n_models, n_rows, n_cols); got shape {arr.shape}. "
            "Stack per-model predictions with np.stack([...]); binary predictions need a "
            "trailing axis of size 1, e.g. p[:, None]."
        )
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"preds must be real numbers; got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    m, r, c = arr.shape
    if m == 0 or r == 0 or c == 0:
        raise ValueError(f"preds must be non-empty; got shape {arr.shape}")
    if n_models is not None and m != n_models:
        raise ValueError(f"preds has {m} models but the blend was fitted on {n_models}; pass the same models in the same order")
    if n_cols is not None and c != n_cols:
        raise ValueError(f"preds has {c} columns but the blend was fitted on {n_cols}")
    finite = np.isfinite(arr)
    if not finite.all():
        bad = np.argwhere(~finite)
        mi, ri, ci = bad[0]
        raise ValueError(
            f"preds contains {len(bad)} NaN/inf values, first at model {mi}, row {ri}, column {ci} "
            f"(value {arr[mi, ri, ci]}); fix or drop that model's OOF predictions"
        )
    lo, hi = arr.min(), arr.max()
    if lo < -1e-6 or hi > 1 + 1e-6:
        per_model = np.flatnonzero((arr.min(axis=(1, 2)) < -1e-6) | (arr.max(axis=(1, 2)) > 1 + 1e-6))
        mi = per_model[0]
        raise ValueError(
            f"preds must be probabilities in [0, 1]; model {mi} has values in "
            f"[{arr[mi].min():.4g}, {arr[mi].max():.4g}]. If these are logits, apply softmax "
            "(multiclass) or sigmoid (binary) first"
        )
    if lo < 0 or hi > 1:
        arr = np.clip(arr, 0.0, 1.0)
    if c > 1:
        sums = arr.sum(axis=2)
        dev = np.abs(sums - 1.0)
        worst = dev.max()
        if worst > _ROW_SUM_TOL:
            mi, ri = np.unravel_index(dev.argmax(), dev.shape)
            raise ValueError(
                f"multiclass rows must sum to 1; model {mi} row {ri} sums to {sums[mi, ri]:.4g}. "
                "Pass probabilities (softmax of the logits), one column per class"
            )
        if worst > 1e-12:
            arr = arr / sums[:, :, None]
    return arr


def _validate_y(y: Any, n_rows: int, n_cols: int) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"y must be 1-D integer labels; got shape {arr.shape}")
    if len(arr) != n_rows:
        raise ValueError(f"y has {len(arr)} labels but preds has {n_rows} rows; pass the labels of the OOF rows in the same order")
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.issubdtype(arr.dtype, np.number) or not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise ValueError(f"y must hold integer class labels; got dtype {arr.dtype} with non-integer values")
    arr = arr.astype(np.int64)
    n_classes = 2 if n_cols == 1 else n_cols
    if arr.min() < 0 or arr.max() >= n_classes:
        raise ValueError(
            f"y must hold labels 0..{n_classes - 1} for {n_cols}-column predictions; got values in "
            f"[{arr.min()}, {arr.max()}]. Encode labels as 0..C-1 in the column order of the predictions"
        )
    return arr


def _validate_extra(extra: Any, n_rows: int, n_features: int | None = None) -> np.ndarray | None:
    if extra is None:
        return None
    arr = np.asarray(extra, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] != n_rows:
        raise ValueError(f"extra must have shape (n_rows={n_rows}, n_features); got {arr.shape}")
    if n_features is not None and arr.shape[1] != n_features:
        raise ValueError(f"extra has {arr.shape[1]} features but the blend was fitted with {n_features}")
    if not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise ValueError(f"extra contains NaN/inf, first at row {bad[0]}, feature {bad[1]}; impute it before blending")
    return arr


def _to_proba(blend: np.ndarray) -> np.ndarray:
    """Turn a (possibly negative-weight) blend into valid probabilities.

    Binary: clip to [0, 1].  Multiclass: clip at 0 and renormalise rows; a
    row clipped to all zeros becomes uniform.
    """
    if blend.shape[-1] == 1:
        return np.clip(blend, 0.0, 1.0)
    out = np.clip(blend, 0.0, None)
    sums = out.sum(axis=-1, keepdims=True)
    zero = sums <= 0
    if zero.any():
        out = np.where(zero, 1.0, out)
        sums = out.sum(axis=-1, keepdims=True)
    return out / sums


def _softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    # exp of a non-positive argument only, so no overflow warnings
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _logit(p: np.ndarray, eps: float) -> np.ndarray:
    p = np.clip(p, eps, 1.0 - eps)
    return np.log(p) - np.log1p(-p)


def _logit_features(preds: np.ndarray) -> np.ndarray:
    """Stacker inputs: each model's predictions in logit space, side by side.

    Binary: ``logit(p)``.  Multiclass: log-probabilities centred per row (the
    softmax is invariant to that shift, and centring removes a redundant
    per-row offset the regulariser would otherwise pay for).

    Returns
    -------
    X : float32 ndarray of shape (n_rows, n_models * n_cols)
        float32 halves the memory and makes sklearn's lbfgs ~1.5x faster
        (measured); 7 significant digits are far more than a logit needs.
    """
    n_models, n_rows, n_cols = preds.shape
    if n_cols == 1:
        z = _logit(preds, _LOG_CLIP)
    else:
        z = np.log(np.clip(preds, _LOG_CLIP, 1.0))
        z -= z.mean(axis=2, keepdims=True)
    return z.transpose(1, 0, 2).reshape(n_rows, n_models * n_cols).astype(np.float32)


def single_model_scores(preds: np.ndarray, y: np.ndarray, metric: Metric | str) -> np.ndarray:
    """Score each model on its own.

    Parameters
    ----------
    preds : ndarray of shape (n_models, n_rows, n_cols)
    y : ndarray of shape (n_rows,)
    metric : Metric or str

    Returns
    -------
    scores : ndarray of shape (n_models,)
        In the metric's own units and direction.
    """
    metric = _as_metric(metric)
    preds = _validate_preds(preds)
    y = _validate_y(y, preds.shape[1], preds.shape[2])
    return np.array([metric(y, p) for p in preds])


# --------------------------------------------------------------------------- #
# Temperature scaling
# --------------------------------------------------------------------------- #


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
        return _sigmoid(_logit(pred, _EPS) / temperature)
    return _softmax(np.log(np.clip(pred, _EPS, 1.0)) / temperature, axis=1)


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
        z = _logit(pred.reshape(-1), _EPS)
        # logit of the true class: +z for positives, -z for negatives
        zy = np.where(y == 1, z, -z)

        def loss(log_t: float) -> float:
            s = zy / math.exp(log_t)
            # -log(sigmoid(s)) = log1p(exp(-s)), written to avoid overflow
            return float(np.mean(np.logaddexp(0.0, -s)))

    else:
        z = np.log(np.clip(pred, _EPS, 1.0))
        z_true = z[np.arange(len(y)), y]

        def loss(log_t: float) -> float:
            zt = z / math.exp(log_t)
            zmax = zt.max(axis=1)
            lse = zmax + np.log(np.exp(zt - zmax[:, None]).sum(axis=1))
            return float(np.mean(lse - z_true / math.exp(log_t)))

    res = minimize_scalar(loss, bounds=(math.log(bounds[0]), math.log(bounds[1])), method="bounded",
                          options={"xatol": 1e-4})
    return float(math.exp(res.x))


# --------------------------------------------------------------------------- #
# Fast loss of linear blends
# --------------------------------------------------------------------------- #


class _LinearLoss:
    """Loss of blends ``sum_m w_m preds[m]`` (``sum w = 1``), fast for log loss.

    ``stack`` is the per-model representation that blends linearly:

    * log loss (or ``force_log_loss``): probability of the true class,
      shape ``(n_models, n_rows)`` (binary: ``p`` for positives, ``1 - p``
      for negatives).
    * any other metric: the predictions themselves, ``(n_models, n_rows,
      n_cols)``, scored by calling the metric (a loop over candidate blends,
      never over rows).

    Parameters
    ----------
    force_log_loss : bool
        Use the log loss whatever the metric (SLSQP's smooth surrogate).
    clip : bool
        Blends may have negative weights: clip and renormalise them to
        valid probabilities before scoring.  Disables the fast path, whose
        reduction is only valid for non-negative blends.
    dtype : numpy dtype
        Of the fast-path ``stack``.  float32 makes the candidate scans of
        ``caruana`` and ``hill_climb`` ~2.5x faster (``log`` dominates; the
        means are still accumulated in float64).  Its ~6e-8 relative error
        is far below their 1e-6 rounding/tolerance; SLSQP, whose ``ftol`` is
        finer, keeps float64.
    """

    def __init__(self, preds: np.ndarray, y: np.ndarray, metric: Metric, *,
                 force_log_loss: bool = False, clip: bool = False, dtype: Any = np.float64):
        self.metric = metric
        self.y = y
        self.clip = clip
        self.binary = preds.shape[2] == 1
        self.fast = (metric.name == "log_loss" or force_log_loss) and not clip
        if self.fast:
            if self.binary:
                p = preds[:, :, 0]
                stack = np.where(y[None, :] == 1, p, 1.0 - p)
            else:
                stack = preds[:, np.arange(preds.shape[1]), y]
            self.stack = stack.astype(dtype, copy=False)
            # metrics._log_loss clips binary p to [eps, 1 - eps], multiclass to [eps, 1]
            self.hi = 1.0 - _EPS if self.binary else 1.0
        else:
            self.stack = preds

    @property
    def n_models(self) -> int:
        return self.stack.shape[0]

    def subset(self, idx: np.ndarray) -> "_LinearLoss":
        new = object.__new__(_LinearLoss)
        new.__dict__.update(self.__dict__)
        new.stack = self.stack[idx]
        return new

    def blend(self, w: np.ndarray) -> np.ndarray:
        return np.tensordot(w, self.stack, axes=1)

    def _neg_mean_log(self, r: np.ndarray) -> np.ndarray:
        """-mean(log(clip(r))) over the last axis, in place on ``r``."""
        np.clip(r, _EPS, self.hi, out=r)
        np.log(r, out=r)
        return -r.mean(axis=-1, dtype=np.float64)

    def loss(self, r: np.ndarray) -> float:
        """Loss of one blend given in the ``stack`` representation."""
        if self.fast:
            return float(self._neg_mean_log(np.array(r, dtype=self.stack.dtype)))
        pred = _to_proba(r) if self.clip else r
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
        if self.fast:
            dt = self.stack.dtype.type
            shifted = (dt(1.0 - a) * base).astype(self.stack.dtype, copy=False)
            chunk = max(1, _CHUNK_ELEMENTS // max(1, self.stack.shape[1]))
            for s in range(0, len(models), chunk):
                sel = models[s:s + chunk]
                r = self.stack[sel] if idx is not None else self.stack[s:s + chunk]
                r = r * dt(a)
                r += shifted
                out[s:s + chunk] = self._neg_mean_log(r)
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
        b = np.clip(base, _EPS, None)
        slope = -((self.stack - b) / b).mean(axis=1, dtype=np.float64)
        return np.flatnonzero(slope < 0)

    def single_losses(self) -> np.ndarray:
        return self.affine_losses(np.zeros(self.stack.shape[1:], dtype=self.stack.dtype), 1.0)


# --------------------------------------------------------------------------- #
# Base class
# --------------------------------------------------------------------------- #


class BlendMethod:
    """Base class of blend methods.

    Subclasses set ``kind`` and ``defaults`` and implement ``_fit`` (and
    ``_predict`` unless they are a linear blend with ``weights_``).

    Parameters
    ----------
    calibrate : bool, default False
        After fitting, and only when the metric is ``log_loss``, fit a
        temperature on the method's in-sample blend
        (:func:`fit_temperature`) and keep it only if it lowers the
        in-sample log loss; ``predict`` then applies it.  Averages of
        diverse models are typically under-confident, which a temperature
        below 1 corrects; :func:`nested_score` tells whether it helps out
        of sample.
    **params
        Method-specific parameters; see the subclass's ``defaults``.

    Attributes
    ----------
    params : dict
        All parameters, defaults filled in.
    weights_ : ndarray of shape (n_models,) or None
        Blend weights (uniform for the ``mean`` kind); None for stackers.
    temperature_ : float
        1.0 unless ``calibrate`` kept a temperature.
    kind : {"mean", "weights", "stacker"}
        Class attribute.
    transductive : bool
        Class attribute; True when a row's prediction depends on the other
        rows passed to ``predict`` (``rank_mean``).
    """

    name: str = "?"
    kind: str = "weights"
    transductive: bool = False
    defaults: dict[str, Any] = {}
    _base_defaults: dict[str, Any] = {"calibrate": False}

    def __init__(self, **params: Any):
        allowed = {**self._base_defaults, **self.defaults}
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise ValueError(
                f"unknown parameter(s) {', '.join(map(repr, unknown))} for blend method {self.name!r}; "
                f"valid parameters: {', '.join(sorted(allowed))}"
            )
        self.params: dict[str, Any] = {**allowed, **params}
        self._check_params()
        self.weights_: np.ndarray | None = None
        self.temperature_: float = 1.0
        self.n_models_: int | None = None
        self.n_cols_: int | None = None
        self.n_extra_: int | None = None
        self.metric_: Metric | None = None

    def __repr__(self) -> str:
        changed = {k: v for k, v in self.params.items() if v != {**self._base_defaults, **self.defaults}.get(k)}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in changed.items())})"

    # -- hooks ------------------------------------------------------------- #

    def _check_params(self) -> None:
        """Raise ValueError for invalid parameter values (subclasses extend)."""

    def _fit(self, preds: np.ndarray, y: np.ndarray, metric: Metric, extra: np.ndarray | None) -> None:
        raise NotImplementedError

    def _predict(self, preds: np.ndarray, extra: np.ndarray | None) -> np.ndarray:
        return _to_proba(np.tensordot(self.weights_, preds, axes=1))

    # -- public API -------------------------------------------------------- #

    def fit(self, preds: np.ndarray, y: np.ndarray, metric: Metric | str,
            extra: np.ndarray | None = None) -> "BlendMethod":
        """Fit the blend on OOF predictions.

        Parameters
        ----------
        preds : array-like of shape (n_models, n_rows, n_cols)
            Stacked OOF probabilities.
        y : array-like of shape (n_rows,)
            Integer labels ``0 .. n_classes - 1``.
        metric : Metric or str
            The competition metric (or its registry name).
        extra : array-like of shape (n_rows, n_features), optional
            Per-row metadata features; used by stackers, ignored otherwise.

        Returns
        -------
        self
        """
        metric = _as_metric(metric)
        preds = _validate_preds(preds)
        _, n_rows, n_cols = preds.shape
        y = _validate_y(y, n_rows, n_cols)
        extra = _validate_extra(extra, n_rows)
        return self._fit_valid(preds, y, metric, extra)

    def _fit_valid(self, preds: np.ndarray, y: np.ndarray, metric: Metric, extra: np.ndarray | None) -> "BlendMethod":
        # fit on inputs already validated (nested_score checks the full arrays once)
        self.n_models_, self.n_cols_ = preds.shape[0], preds.shape[2]
        self.n_extra_ = None if extra is None else extra.shape[1]
        self.metric_ = metric
        self.temperature_ = 1.0
        self._fit(preds, y, metric, extra if self.kind == "stacker" else None)
        if self.params["calibrate"] and metric.name == "log_loss":
            raw = self._predict(preds, extra if self.kind == "stacker" else None)
            t = fit_temperature(raw, y)
            if metric.loss(y, apply_temperature(raw, t)) < metric.loss(y, raw):
                self.temperature_ = t
        return self

    def predict(self, preds: np.ndarray, extra: np.ndarray | None = None) -> np.ndarray:
        """Blend new stacked predictions (OOF or test) with the fitted method.

        Parameters
        ----------
        preds : array-like of shape (n_models, n_rows, n_cols)
            Same models, same order, as in ``fit``.
        extra : array-like of shape (n_rows, n_features), optional
            Required by a stacker fitted with extra features.

        Returns
        -------
        pred : ndarray of shape (n_rows, n_cols)
            Probabilities: rows sum to 1 (multiclass) or values in [0, 1]
            (binary).
        """
        if self.n_models_ is None:
            raise RuntimeError(f"blend method {self.name!r} is not fitted; call fit(preds, y, metric) first")
        preds = _validate_preds(preds, n_models=self.n_models_, n_cols=self.n_cols_)
        return self._predict_valid(preds, extra)

    def _predict_valid(self, preds: np.ndarray, extra: np.ndarray | None) -> np.ndarray:
        if self.kind == "stacker":
            if self.n_extra_ is not None and extra is None:
                raise ValueError(f"{self.name!r} was fitted with {self.n_extra_} extra features; pass extra of shape (n_rows, {self.n_extra_})")
            if self.n_extra_ is None and extra is not None:
                raise ValueError(f"{self.name!r} was fitted without extra features; pass extra=None")
            extra = _validate_extra(extra, preds.shape[1], self.n_extra_)
        else:
            extra = None
        out = self._predict(preds, extra)
        if self.temperature_ != 1.0:
            out = apply_temperature(out, self.temperature_)
        return out


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


# --------------------------------------------------------------------------- #
# Parameter-free means
# --------------------------------------------------------------------------- #


class _MeanMethod(BlendMethod):
    """Means have nothing to fit; ``weights_`` is uniform for reporting."""

    kind = "mean"

    def _fit(self, preds, y, metric, extra):
        self.weights_ = np.full(preds.shape[0], 1.0 / preds.shape[0])


@register_blend("mean")
class Mean(_MeanMethod):
    """Arithmetic mean of the models' probabilities."""

    def _predict(self, preds, extra):
        return _to_proba(preds.mean(axis=0))


@register_blend("rank_mean")
class RankMean(_MeanMethod):
    """Mean of per-column ranks over rows, scaled to [0, 1].

    For rank metrics (AUC) this removes differences in calibration between
    models.  Multiclass rows are renormalised to sum to 1; the result is not
    a calibrated probability, so it scores poorly under log loss.  Ranks are
    taken within the rows passed to ``predict``, so a test prediction depends
    on the whole test set.
    """

    transductive = True

    def _predict(self, preds, extra):
        from scipy.stats import rankdata

        n_rows = preds.shape[1]
        if n_rows == 1:
            ranks = np.full_like(preds, 0.5)
        else:
            ranks = (rankdata(preds, axis=1) - 1.0) / (n_rows - 1)
        return _to_proba(ranks.mean(axis=0))


@register_blend("geometric_mean")
class GeometricMean(_MeanMethod):
    """Geometric mean of the probabilities (clipped at 1e-7).

    Multiclass: rows renormalised, which equals ``logit_mean`` (softmax of
    the mean log-probability).  Binary: the plain geometric mean of the
    positive-class probability, which is pulled towards 0 unlike
    ``logit_mean``.
    """

    def _predict(self, preds, extra):
        return _to_proba(np.exp(np.log(np.clip(preds, _LOG_CLIP, 1.0)).mean(axis=0)))


@register_blend("power_mean")
class PowerMean(_MeanMethod):
    """Power mean ``(mean p**power) ** (1 / power)``; rows renormalised.

    Parameters
    ----------
    power : float, default 2
        Above 1 favours the confident models; 1 is the arithmetic mean and
        0 the geometric mean.
    """

    defaults = {"power": 2.0}

    def _check_params(self):
        _require(np.isfinite(self.params["power"]), f"power must be a finite number; got {self.params['power']!r}")

    def _predict(self, preds, extra):
        power = float(self.params["power"])
        if power == 0:
            return GeometricMean._predict(self, preds, extra)
        base = np.clip(preds, _LOG_CLIP, 1.0) if power < 0 else preds
        return _to_proba(np.power(np.power(base, power).mean(axis=0), 1.0 / power))


@register_blend("logit_mean")
class LogitMean(_MeanMethod):
    """Mean in logit space, mapped back with sigmoid (binary) or softmax.

    Multiclass uses log-probabilities as the logits (the softmax inverse up
    to a per-row constant), so it coincides with ``geometric_mean`` there.
    """

    def _predict(self, preds, extra):
        if preds.shape[2] == 1:
            return _sigmoid(_logit(preds, _LOG_CLIP).mean(axis=0))
        return _softmax(np.log(np.clip(preds, _LOG_CLIP, 1.0)).mean(axis=0), axis=-1)


# --------------------------------------------------------------------------- #
# Weight search
# --------------------------------------------------------------------------- #


@contextlib.contextmanager
def _quiet_optuna():
    """Silence optuna's per-trial INFO lines, restoring the caller's level."""
    import optuna

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield optuna
    finally:
        optuna.logging.set_verbosity(level)


@register_blend("optuna")
class OptunaWeights(BlendMethod):
    """Blend weights searched by optuna's TPE on the simplex.

    Each trial suggests ``u_i`` in (0, 1] and sets ``x_i = -log(u_i)``,
    ``w = x / sum(x)``: with uniform ``u`` the weights are Dirichlet(1), i.e.
    uniform on the simplex, so the search space has no redundant scale.
    To limit overfitting the first two trials of a new study are the equal
    weights and the best single model, so the search starts from the two
    classical baselines and only moves away if a blend beats them.

    Parameters
    ----------
    n_trials : int, default 100
    timeout : float or None, default None
        Seconds; with a timeout the result depends on machine speed.
    storage : str or None, default None
        None keeps the study in memory; a URL such as ``sqlite:///blend.db``
        makes it persistent.
    study_name : str or None, default None
        With ``storage``, a rerun with the same name continues the study
        (``load_if_exists``); it must hold the same number of models.
    seed : int, default 0
        Seed of the TPE sampler.

    Attributes
    ----------
    study_ : optuna.Study
    """

    defaults = {"n_trials": 100, "timeout": None, "storage": None, "study_name": None, "seed": 0}

    def _check_params(self):
        p = self.params
        _require(_is_int(p["n_trials"]) and p["n_trials"] >= 1, f"n_trials must be an int >= 1; got {p['n_trials']!r}")
        _require(p["timeout"] is None or p["timeout"] > 0, f"timeout must be None or > 0 seconds; got {p['timeout']!r}")

    def _fit(self, preds, y, metric, extra):
        obj = _LinearLoss(preds, y, metric)
        n = preds.shape[0]
        keys = [f"u{i:04d}" for i in range(n)]

        def to_weights(u: np.ndarray) -> np.ndarray:
            x = -np.log(u) + 0.0  # + 0.0 turns -log(1) = -0.0 into 0.0
            s = x.sum()
            return x / s if s > 0 else np.full(n, 1.0 / n)

        def objective(trial) -> float:
            u = np.array([trial.suggest_float(k, 1e-6, 1.0) for k in keys])
            return obj.weights_loss(to_weights(u))

        with _quiet_optuna() as optuna:
            sampler = optuna.samplers.TPESampler(seed=self.params["seed"])
            study = optuna.create_study(
                storage=self.params["storage"], study_name=self.params["study_name"], sampler=sampler,
                direction="minimize", load_if_exists=True,
            )
            shape = {"n_models": int(n), "n_rows": int(preds.shape[1]), "n_cols": int(preds.shape[2])}
            stored = {k: study.user_attrs.get(k) for k in shape}
            if len(study.trials) == 0:
                for k, v in shape.items():
                    study.set_user_attr(k, v)
                # baselines first: equal weights (all x_i = 1) and best single model (x_i = 0 elsewhere)
                one = math.exp(-1.0)
                study.enqueue_trial({k: one for k in keys})
                best = int(np.argmin(obj.single_losses()))
                study.enqueue_trial({k: (one if i == best else 1.0) for i, k in enumerate(keys)})
            elif stored != shape:
                raise ValueError(
                    f"optuna study {study.study_name!r} in {self.params['storage']} was created for {stored}, "
                    f"not {shape}; use another study_name"
                )
            study.optimize(objective, n_trials=self.params["n_trials"], timeout=self.params["timeout"])
        self.study_ = study
        self.weights_ = to_weights(np.array([study.best_trial.params[k] for k in keys]))


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
        _require(_is_int(p["n_steps"]) and p["n_steps"] >= 1, f"n_steps must be an int >= 1; got {p['n_steps']!r}")
        _require(_is_int(p["sorted_init"]) and p["sorted_init"] >= 0, f"sorted_init must be an int >= 0; got {p['sorted_init']!r}")
        _require(_is_int(p["n_bags"]) and p["n_bags"] >= 1, f"n_bags must be an int >= 1; got {p['n_bags']!r}")
        _require(0 < p["bag_fraction"] <= 1, f"bag_fraction must be in (0, 1]; got {p['bag_fraction']!r}")

    def _select(self, obj: _LinearLoss, idx: np.ndarray) -> np.ndarray:
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
        obj = _LinearLoss(preds, y, metric, dtype=np.float32)
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
        Also subtract models (``a < 0``); blends are then clipped and
        renormalised to valid probabilities, and weights can be negative.
    max_iter : int, default 100
    tol : float, default 1e-6
        Minimum loss improvement to accept a move.
    """

    defaults = {"step": 0.05, "max_weight": 0.5, "allow_negative": False, "max_iter": 100, "tol": 1e-6}

    def _check_params(self):
        p = self.params
        _require(0 < p["step"] <= 1, f"step must be in (0, 1]; got {p['step']!r}")
        _require(p["step"] <= p["max_weight"] <= 1, f"max_weight must be in [step, 1]; got {p['max_weight']!r}")
        _require(_is_int(p["max_iter"]) and p["max_iter"] >= 0, f"max_iter must be an int >= 0; got {p['max_iter']!r}")

    def _fit(self, preds, y, metric, extra):
        p = self.params
        obj = _LinearLoss(preds, y, metric, clip=p["allow_negative"], dtype=np.float32)
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
    def _best_move_convex(obj: _LinearLoss, current: np.ndarray, current_loss: float,
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


@register_blend("slsqp")
class SLSQPWeights(BlendMethod):
    """Weights on the simplex by ``scipy.optimize.minimize(method="SLSQP")``.

    Minimises the log loss of the blend (with its analytic gradient) under
    ``w >= 0``, ``sum(w) = 1``, from equal weights.  For ``log_loss`` that is
    the metric itself.  Other metrics (accuracy, F1, AUC) are piecewise
    constant in the weights, so their gradient is zero almost everywhere and
    SLSQP would not move; for them the log loss is minimised as a smooth
    surrogate (``surrogate_ == "log_loss"``).

    Parameters
    ----------
    max_iter : int, default 200
    ftol : float, default 1e-10
    """

    defaults = {"max_iter": 200, "ftol": 1e-10}

    def _fit(self, preds, y, metric, extra):
        from scipy.optimize import minimize

        obj = _LinearLoss(preds, y, metric, force_log_loss=True)
        self.surrogate_ = None if metric.name == "log_loss" else "log_loss"
        stack, n_rows, n = obj.stack, obj.stack.shape[1], preds.shape[0]

        def loss(w: np.ndarray) -> float:
            return obj.weights_loss(w)

        def grad(w: np.ndarray) -> np.ndarray:
            b = np.clip(w @ stack, _EPS, obj.hi)
            return -(stack @ (1.0 / b)) / n_rows

        res = minimize(
            loss, np.full(n, 1.0 / n), jac=grad, method="SLSQP", bounds=[(0.0, 1.0)] * n,
            constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones_like(w)}],
            options={"maxiter": self.params["max_iter"], "ftol": self.params["ftol"]},
        )
        w = np.clip(res.x, 0.0, None)
        self.weights_ = w / w.sum() if w.sum() > 0 else np.full(n, 1.0 / n)
        self.result_ = res


# --------------------------------------------------------------------------- #
# Stackers
# --------------------------------------------------------------------------- #


def _check_max_models(value: Any) -> None:
    _require(value is None or (_is_int(value) and value >= 1), f"max_models must be None or an int >= 1; got {value!r}")


class _Stacker(BlendMethod):
    """Second-level classifier on the models' logits (+ extra features)."""

    kind = "stacker"

    def _check_params(self):
        _check_max_models(self.params["max_models"])

    def _make_model(self):
        raise NotImplementedError

    def _features(self, preds, extra):
        x = _logit_features(np.take(preds, self.models_, axis=0))
        return x if extra is None else np.hstack([x, extra.astype(np.float32)])

    def _fit(self, preds, y, metric, extra):
        self._n_classes = 2 if preds.shape[2] == 1 else preds.shape[2]
        # the stacker reads only the best `max_models` models: fewer inputs overfit less and fit faster
        limit = self.params["max_models"]
        if limit and preds.shape[0] > limit:
            scores = single_model_scores(preds, y, metric)
            best_first = np.argsort(-scores if metric.greater_is_better else scores, kind="stable")
            self.models_ = np.sort(best_first[:limit])
        else:
            self.models_ = np.arange(preds.shape[0])
        present = np.unique(y)
        if present.size < 2:
            # a classifier cannot be fitted on one class; predict it for sure
            self.model_ = None
            self._constant = present[0]
            return
        self.model_ = self._make_model()
        self.model_.fit(self._features(preds, extra), y)

    def _predict(self, preds, extra):
        n_rows = preds.shape[1]
        full = np.zeros((n_rows, self._n_classes))
        if self.model_ is None:
            full[:, self._constant] = 1.0
        else:
            # classes absent from the training rows (a small fold) get probability 0
            full[:, self.model_.classes_] = self.model_.predict_proba(self._features(preds, extra))
        if preds.shape[2] == 1:
            return np.clip(full[:, 1:2], 0.0, 1.0)
        return _to_proba(full)


@register_blend("logreg_stacker")
class LogRegStacker(_Stacker):
    """Multinomial logistic regression on standardised logits (+ extra).

    Parameters
    ----------
    C : float, default 0.001
        Inverse L2 strength (sklearn's: it multiplies the summed loss).  The
        model has ``n_models * n_classes`` inputs per class, which overfits
        fast: on the benchmark's synthetic set (50 models x 10 classes,
        20,000 rows) nested log loss was 1.810 / 1.759 / 1.690 for C = 0.1 /
        0.01 / 0.001, against 1.680 for caruana.  The penalty per row is
        ``1 / (C * n_rows)``, so small OOF sets need a larger C (about 0.1
        for 1,000 rows).  Check it with :func:`nested_score` on your data.
    max_iter : int, default 200
    max_models : int or None, default 10
        Only the best ``max_models`` models (by their own score on the fitting
        rows) feed the stacker; None keeps all.
    """

    defaults = {"C": 0.001, "max_iter": 200, "max_models": 10}

    def _check_params(self):
        super()._check_params()
        _require(self.params["C"] > 0, f"C must be > 0; got {self.params['C']!r}")

    def _make_model(self):
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        return make_pipeline(StandardScaler(), LogisticRegression(C=self.params["C"], max_iter=self.params["max_iter"]))


@register_blend("lgbm_stacker")
class LGBMStacker(_Stacker):
    """LightGBM classifier on the logits (+ extra), small and regularised.

    Deterministic for a given ``seed`` (``deterministic=True``,
    ``force_row_wise=True``).

    Parameters
    ----------
    n_estimators : int, default 200
    learning_rate : float, default 0.05
    num_leaves : int, default 7
    min_child_samples : int, default 20
    subsample : float, default 0.8
    colsample_bytree : float, default 0.5
    reg_lambda : float, default 1.0
    max_bin : int, default 63
        Fewer histogram bins than LightGBM's 255: faster, and plenty for
        smooth logit inputs.
    bin_sample : int, default 20000
        Rows sampled to find the bin edges (LightGBM's
        ``bin_construct_sample_cnt``, 200000 by default); measured to halve
        the Dataset construction on 80,000 rows x 500 features.
    n_jobs : int, default 2
    seed : int, default 0
    max_models : int or None, default 10
        Only the best ``max_models`` models feed the stacker; None keeps all.
    """

    defaults = {"max_models": 10, "n_estimators": 200, "learning_rate": 0.05, "num_leaves": 7, "min_child_samples": 20,
                "subsample": 0.8, "colsample_bytree": 0.5, "reg_lambda": 1.0, "max_bin": 63, "bin_sample": 20000,
                "n_jobs": 2, "seed": 0}

    def _make_model(self):
        import lightgbm as lgb

        p = self.params
        return lgb.LGBMClassifier(
            n_estimators=p["n_estimators"], learning_rate=p["learning_rate"], num_leaves=p["num_leaves"],
            min_child_samples=p["min_child_samples"], subsample=p["subsample"], subsample_freq=1,
            colsample_bytree=p["colsample_bytree"], reg_lambda=p["reg_lambda"], max_bin=p["max_bin"],
            bin_construct_sample_cnt=p["bin_sample"],
            n_jobs=p["n_jobs"], random_state=p["seed"], deterministic=True, force_row_wise=True, verbose=-1,
        )


# --------------------------------------------------------------------------- #
# Honest scoring and selection
# --------------------------------------------------------------------------- #


@dataclass
class NestedResult:
    """Result of :func:`nested_score`.

    Attributes
    ----------
    method : str
    params : dict
    in_sample : float
        Fitted and scored on all rows (optimistic).
    nested : float
        Held-out predictions of the fold refits, concatenated in row order
        and scored once.
    gap : float
        ``in_sample - nested`` in the better direction: positive = optimism.
    fold_scores : dict
        Fold id -> score of that fold's held-out rows.
    weight_std : float or None
        Mean over models of the std of the weights across the fold refits;
        None for stackers.
    weights : ndarray of shape (n_models,) or None
        Weights of the refit on all rows.
    oof_pred : ndarray of shape (n_rows, n_cols)
        The nested held-out predictions.
    seconds : float
    fitted : BlendMethod
        The refit on all rows, for predicting the test set.
    """

    method: str
    params: dict
    in_sample: float
    nested: float
    gap: float
    fold_scores: dict
    weight_std: float | None
    weights: np.ndarray | None
    oof_pred: np.ndarray = field(repr=False)
    seconds: float
    fitted: BlendMethod = field(repr=False)


def nested_score(name_or_factory: str | Callable[..., BlendMethod], preds: np.ndarray, y: np.ndarray,
                 folds: np.ndarray, metric: Metric | str, extra: np.ndarray | None = None,
                 params: dict | None = None) -> NestedResult:
    """Score a blend method honestly by refitting it inside the folds.

    For each fold ``f`` the method is fitted on the rows with ``folds != f``
    and predicts the rows with ``folds == f``; the held-out predictions are
    put back in row order and scored once (per-fold scores are kept too).
    Use the same fold assignment as the OOF predictions.

    Parameters
    ----------
    name_or_factory : str or callable
        A registry name, or a callable ``factory(**params) -> BlendMethod``.
    preds : ndarray of shape (n_models, n_rows, n_cols)
    y : ndarray of shape (n_rows,)
    folds : ndarray of shape (n_rows,)
        Fold id of each row; at least 2 distinct ids.
    metric : Metric or str
    extra : ndarray of shape (n_rows, n_features), optional
    params : dict, optional
        Method parameters.  With a persistent optuna ``storage``, only the
        all-rows fit uses it; the fold refits keep their studies in memory.

    Returns
    -------
    NestedResult
    """
    start = time.perf_counter()
    metric = _as_metric(metric)
    params = dict(params or {})
    if isinstance(name_or_factory, str):
        method_name = name_or_factory
        factory = lambda **kw: make_blend(method_name, **kw)  # noqa: E731
    else:
        factory = name_or_factory
        method_name = getattr(name_or_factory, "name", getattr(name_or_factory, "__name__", repr(name_or_factory)))
    preds = _validate_preds(preds)
    _, n_rows, n_cols = preds.shape
    y = _validate_y(y, n_rows, n_cols)
    extra = _validate_extra(extra, n_rows)
    folds = np.asarray(folds)
    if folds.shape != (n_rows,):
        raise ValueError(f"folds must have shape ({n_rows},), one fold id per OOF row; got {folds.shape}")
    fold_ids = np.unique(folds)
    if len(fold_ids) < 2:
        raise ValueError(f"nested scoring needs at least 2 folds; got fold ids {fold_ids.tolist()}")

    def fold_params(f) -> dict:
        # the fold refits are throwaway: keep their studies in memory (SQLite commits every trial, ~5x slower)
        # and only the all-rows study persistent, so a rerun continues that one
        if params.get("storage") is not None:
            return {**params, "storage": None, "study_name": None}
        return params

    method_cls = BLEND_METHODS.get(method_name) if isinstance(name_or_factory, str) else None
    if method_cls is not None and method_cls.kind == "mean" and not params.get("calibrate"):
        # a fixed mean learns nothing from the rows, so refitting it inside the folds cannot change its
        # honest score: score it once (the refits cost 5x the time on large OOF sets for the same figure)
        full = factory(**params)
        full._fit_valid(preds, y, metric, extra)
        pred = full._predict_valid(preds, extra)
        score = metric(y, pred)
        fold_scores = {f.item(): metric(y[folds == f], pred[folds == f]) for f in fold_ids}
        return NestedResult(
            method=method_name, params=dict(full.params), in_sample=score, nested=score, gap=0.0,
            fold_scores=fold_scores, weight_std=0.0, weights=full.weights_, oof_pred=pred,
            seconds=time.perf_counter() - start, fitted=full,
        )

    oof = np.empty((n_rows, n_cols))
    fold_scores: dict = {}
    inner_weights = []
    for f in fold_ids:
        test = np.flatnonzero(folds == f)
        train = np.flatnonzero(folds != f)
        method = factory(**fold_params(f))
        # np.take with integer indices copies ~2.5x faster than a boolean mask on axis 1
        method._fit_valid(np.take(preds, train, axis=1), y[train], metric, None if extra is None else extra[train])
        oof[test] = method._predict_valid(np.take(preds, test, axis=1), None if extra is None else extra[test])
        fold_scores[f.item() if hasattr(f, "item") else f] = metric(y[test], oof[test])
        if method.weights_ is not None:
            inner_weights.append(method.weights_)

    full = factory(**params)
    full._fit_valid(preds, y, metric, extra)
    in_sample = metric(y, full._predict_valid(preds, extra))
    nested = metric(y, oof)
    gap = in_sample - nested if metric.greater_is_better else nested - in_sample
    weight_std = float(np.std(np.stack(inner_weights), axis=0).mean()) if len(inner_weights) == len(fold_ids) else None
    return NestedResult(
        method=getattr(full, "name", method_name), params=dict(full.params), in_sample=in_sample, nested=nested,
        gap=gap, fold_scores=fold_scores, weight_std=weight_std, weights=full.weights_, oof_pred=oof,
        seconds=time.perf_counter() - start, fitted=full,
    )


def select_method(results: dict[str, NestedResult], metric: Metric | str) -> str:
    """Pick the method with the best nested score.

    Parameters
    ----------
    results : dict
        Method name -> :class:`NestedResult`.
    metric : Metric or str
        Gives the direction.

    Returns
    -------
    name : str
        Best nested score; ties (to 1e-10) go to the simpler method, i.e.
        the one registered first (means before weight searches before
        stackers); names outside the registry come last.
    """
    metric = _as_metric(metric)
    if not results:
        raise ValueError("select_method needs at least one result")
    order = {name: i for i, name in enumerate(BLEND_METHODS)}

    def key(item):
        name, res = item
        loss = -res.nested if metric.greater_is_better else res.nested
        loss = np.inf if np.isnan(loss) else round(float(loss), 10)
        return loss, order.get(name, len(order)), list(results).index(name)

    return min(results.items(), key=key)[0]


def prune_correlated(preds: np.ndarray, threshold: float = 0.995, scores: np.ndarray | None = None,
                     metric: Metric | str | None = None, *, y: np.ndarray | None = None
                     ) -> tuple[np.ndarray, list[tuple[int, int, float]]]:
    """Drop near-duplicate models, keeping the better of each correlated pair.

    Models are visited best first (by ``scores``; by index when no scores);
    a model whose flattened predictions correlate at ``>= threshold`` with an
    already kept model is pruned.

    Parameters
    ----------
    preds : ndarray of shape (n_models, n_rows, n_cols)
    threshold : float, default 0.995
        Pearson correlation of the flattened predictions.
    scores : ndarray of shape (n_models,), optional
        Per-model scores in the metric's units (see
        :func:`single_model_scores`); needs ``metric`` for the direction.
    metric : Metric or str, optional
    y : ndarray of shape (n_rows,), optional
        With ``metric`` and no ``scores``: compute the scores.

    Returns
    -------
    kept : ndarray of int
        Indices of the kept models, ascending.
    pruned : list of (pruned_idx, kept_idx, corr)
        Each pruned model with the kept model it duplicates (the most
        correlated one).
    """
    preds = _validate_preds(preds)
    n = preds.shape[0]
    if scores is None and y is not None and metric is not None:
        scores = single_model_scores(preds, y, metric)
    if scores is not None:
        if metric is None:
            raise ValueError("prune_correlated needs metric to know whether higher scores are better")
        metric = _as_metric(metric)
        scores = np.asarray(scores, dtype=np.float64)
        if scores.shape != (n,):
            raise ValueError(f"scores must have one value per model, shape ({n},); got {scores.shape}")
        loss = -scores if metric.greater_is_better else scores
        order = np.argsort(np.where(np.isnan(loss), np.inf, loss), kind="stable")
    else:
        order = np.arange(n)
    flat = preds.reshape(n, -1)
    centred = flat - flat.mean(axis=1, keepdims=True)
    norm = np.sqrt((centred * centred).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = (centred @ centred.T) / np.outer(norm, norm)
    # constant models have no correlation; call them duplicates only when identical
    const = norm == 0
    if const.any():
        for i in np.flatnonzero(const):
            for j in range(n):
                corr[i, j] = corr[j, i] = 1.0 if np.array_equal(flat[i], flat[j]) else 0.0
    corr = np.nan_to_num(corr, nan=0.0)
    kept: list[int] = []
    pruned: list[tuple[int, int, float]] = []
    for i in order:
        i = int(i)
        if kept:
            c = corr[i, kept]
            j = int(np.argmax(c))
            if c[j] >= threshold:
                pruned.append((i, kept[j], float(c[j])))
                continue
        kept.append(i)
    return np.array(sorted(kept), dtype=np.int64), pruned
