"""Ensemble ("blend") methods over stacked out-of-fold predictions.

This module is the pure core of the ensemble stage: NumPy arrays in, NumPy
arrays out, no file I/O.  Every method sees the same input

``preds``
    float array of shape ``(n_models, n_rows, n_cols)``: one OOF prediction
    per model, stacked.
``y``
    the targets of the OOF rows.

and returns ``(n_rows, n_cols)`` predictions of the same kind from
``predict``.  What the columns and ``y`` hold depends on the task (the
``task`` keyword of :meth:`BlendMethod.fit`, :func:`nested_score`, ...;
``None`` infers binary from one column and multiclass otherwise):

==========  ==========================  ====================================  ============
task        ``y``                       ``preds[m]``                          output kind
==========  ==========================  ====================================  ============
multiclass  int ``(n,)``, 0..C-1        ``(n, C)`` probabilities, rows sum 1  simplex
binary      int ``(n,)``, 0/1           ``(n, 1)`` P(positive)                probability
multilabel  int ``(n, L)``, 0/1         ``(n, L)`` independent probabilities  probability
regression  float ``(n,)``              ``(n, 1)`` real values                value
ordinal     int ``(n,)``, grade >= 0    ``(n, 1)`` values on the grade scale  value
==========  ==========================  ====================================  ============

Not every method makes sense for every output kind (a geometric mean of
regression values takes logs of negative numbers): :func:`applicable` says
which do, and fitting one that does not raises :class:`NotApplicable`.

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
true-class probability.  The same holds per element for independent
probabilities (binary, multilabel): the blend of ``p`` where ``y = 1`` and
``1 - p`` where ``y = 0`` is the blend's probability of the truth.
:class:`_LinearLoss` uses that reduction for ``log_loss`` (10x less memory
traffic for 10 classes) and falls back to calling the metric on full blends
for other metrics and for values.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

# TASK_OUTPUT (task -> "simplex" | "probability" | "value") decides validation, the blend's output
# and which methods apply
from .metrics import TASK_OUTPUT, Metric, get_metric

__all__ = [
    "BLEND_METHODS",
    "TASK_OUTPUT",
    "BlendMethod",
    "NestedResult",
    "NotApplicable",
    "applicable",
    "apply_temperature",
    "fit_temperature",
    "make_blend",
    "nested_score",
    "not_applicable_reason",
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

_OUTPUT_WORDS = {
    "simplex": "class probabilities",
    "probability": "probabilities",
    "value": "values, not probabilities",
}


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


class NotApplicable(ValueError):
    """A blend method does not apply to the task's predictions.

    Raised by ``fit`` (and so by :func:`nested_score`) before any work, e.g.
    for a geometric mean of regression values.  Check beforehand with
    :func:`applicable` to skip such methods without ``try``/``except``.
    """


def _check_task(task: Any) -> str:
    if task not in TASK_OUTPUT:
        raise ValueError(f"task must be one of {', '.join(map(repr, TASK_OUTPUT))} or None (inferred from the "
                         f"number of columns: 1 is binary, more multiclass); got {task!r}")
    return task


def _resolve_task(task: str | None, n_cols: int) -> str:
    """The explicit task, or today's inference: one column is binary, more is multiclass."""
    if task is None:
        return "binary" if n_cols == 1 else "multiclass"
    return _check_task(task)


def _method_class(method: str | type[BlendMethod]) -> type[BlendMethod]:
    if isinstance(method, type) and issubclass(method, BlendMethod):
        return method
    try:
        return BLEND_METHODS[method]
    except KeyError:
        raise KeyError(f"unknown blend method {method!r}; known methods: {', '.join(BLEND_METHODS)}") from None


def not_applicable_reason(method: str | type[BlendMethod], task: str | None) -> str | None:
    """Why a blend method does not apply to a task, or None when it does.

    Parameters
    ----------
    method : str or BlendMethod subclass
        A key of :data:`BLEND_METHODS` (or the class itself).
    task : str or None
        A key of :data:`TASK_OUTPUT`.  None (inferred binary or multiclass)
        always means probabilities, which every method handles.

    Returns
    -------
    reason : str or None
        The message :class:`NotApplicable` would carry, naming the methods
        that do apply; None when ``method`` applies.
    """
    cls = _method_class(method)
    if task is None:
        return None
    output = TASK_OUTPUT[_check_task(task)]
    if output in cls.outputs:
        return None
    usable = [name for name, c in BLEND_METHODS.items() if output in c.outputs and not name.startswith("_")]
    alternatives = ", ".join(usable[:-1]) + (" or " if len(usable) > 1 else "") + usable[-1] if usable else "none"
    why = f"{_OUTPUT_WORDS[output]}: {cls.why_not}" if cls.why_not else _OUTPUT_WORDS[output]
    return f"blend method {cls.name!r} does not apply to {task} predictions ({why}); use {alternatives}"


def applicable(method: str | type[BlendMethod], task: str | None) -> bool:
    """Whether a blend method applies to a task's predictions.

    Parameters
    ----------
    method : str or BlendMethod subclass
        A key of :data:`BLEND_METHODS` (or the class itself).
    task : str or None
        A key of :data:`TASK_OUTPUT`; None (inferred binary or multiclass)
        always applies.

    Returns
    -------
    bool
        False exactly when ``fit`` would raise :class:`NotApplicable`;
        :func:`not_applicable_reason` gives the message.
    """
    return not_applicable_reason(method, task) is None


# --------------------------------------------------------------------------- #
# Validation and small array helpers
# --------------------------------------------------------------------------- #


def _as_metric(metric: Metric | str) -> Metric:
    return get_metric(metric) if isinstance(metric, str) else metric


def _validate_preds(preds: Any, *, task: str | None = None, n_models: int | None = None,
                    n_cols: int | None = None) -> tuple[np.ndarray, str]:
    """Check the stacked predictions for the task; return them as float64 and the resolved task.

    Simplex (multiclass) rows that sum to 1 within ``_ROW_SUM_TOL`` are
    renormalised (a copy) so that linear blends with weights summing to one
    stay exact probability vectors, which the fast log-loss objective relies
    on.  Probabilities (binary, multilabel) are checked per element; values
    (regression, ordinal) only for being finite.
    """
    arr = np.asarray(preds)
    if arr.ndim != 3:
        raise ValueError(
            f"preds must be 3-D (n_models, n_rows, n_cols); got shape {arr.shape}. "
            "Stack per-model predictions with np.stack([...]); binary, regression and ordinal predictions need "
            "a trailing axis of size 1, e.g. p[:, None]."
        )
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"preds must be real numbers; got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    m, r, c = arr.shape
    if m == 0 or r == 0 or c == 0:
        raise ValueError(f"preds must be non-empty; got shape {arr.shape}")
    explicit = task is not None
    task = _resolve_task(task, c)
    output = TASK_OUTPUT[task]
    if n_models is not None and m != n_models:
        raise ValueError(f"preds has {m} models but the blend was fitted on {n_models}; pass the same models in the same order")
    if n_cols is not None and c != n_cols:
        raise ValueError(f"preds has {c} columns but the blend was fitted on {n_cols}")
    if task == "multiclass" and c < 2:
        raise ValueError("multiclass preds need one column per class (at least 2); got 1 column. "
                         "For one positive-class probability pass task='binary'")
    if task in ("binary", "regression", "ordinal") and c != 1:
        raise ValueError(f"{task} preds must have exactly 1 column (shape (n_models, n_rows, 1)); got {c} columns. "
                         "For one probability per class pass task='multiclass', per label task='multilabel'")
    finite = np.isfinite(arr)
    if not finite.all():
        bad = np.argwhere(~finite)
        mi, ri, ci = bad[0]
        raise ValueError(
            f"preds contains {len(bad)} NaN/inf values, first at model {mi}, row {ri}, column {ci} "
            f"(value {arr[mi, ri, ci]}); fix or drop that model's OOF predictions"
        )
    if output == "value":
        return arr, task
    lo, hi = arr.min(), arr.max()
    if lo < -1e-6 or hi > 1 + 1e-6:
        per_model = np.flatnonzero((arr.min(axis=(1, 2)) < -1e-6) | (arr.max(axis=(1, 2)) > 1 + 1e-6))
        mi = per_model[0]
        fix = {"multiclass": "apply softmax", "binary": "apply sigmoid",
               "multilabel": "apply sigmoid to each label's logit"}[task]
        if not explicit:
            fix = ("apply softmax (multiclass) or sigmoid (binary) first; for regression or ordinal values pass "
                   "task='regression' or task='ordinal'")
        else:
            fix += " first"
        raise ValueError(
            f"{task} preds must be probabilities in [0, 1]; model {mi} has values in "
            f"[{arr[mi].min():.4g}, {arr[mi].max():.4g}]. If these are logits, {fix}"
        )
    if lo < 0 or hi > 1:
        arr = np.clip(arr, 0.0, 1.0)
    if output == "simplex":
        sums = arr.sum(axis=2)
        dev = np.abs(sums - 1.0)
        worst = dev.max()
        if worst > _ROW_SUM_TOL:
            mi, ri = np.unravel_index(dev.argmax(), dev.shape)
            raise ValueError(
                f"multiclass rows must sum to 1; model {mi} row {ri} sums to {sums[mi, ri]:.4g}. "
                "Pass probabilities (softmax of the logits), one column per class; for independent "
                "per-label probabilities pass task='multilabel'"
            )
        if worst > 1e-12:
            arr = arr / sums[:, :, None]
    return arr, task


def _integral(arr: np.ndarray) -> bool:
    if np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool:
        return True
    return (np.issubdtype(arr.dtype, np.number) and not np.issubdtype(arr.dtype, np.complexfloating)
            and bool(np.all(np.isfinite(arr))) and bool(np.all(arr == np.round(arr))))


def _validate_y(y: Any, n_rows: int, n_cols: int, task: str | None = None) -> np.ndarray:
    """Check the targets against the task and the predictions' shape.

    Returns
    -------
    y : ndarray
        int64 ``(n_rows,)`` (multiclass, binary, ordinal), int64
        ``(n_rows, n_labels)`` (multilabel) or float64 ``(n_rows,)``
        (regression).
    """
    task = _resolve_task(task, n_cols)
    arr = np.asarray(y)
    if task == "multilabel":
        if arr.ndim == 1 and n_cols == 1:
            arr = arr[:, None]
        if arr.ndim != 2:
            raise ValueError(f"multilabel y must be a 2-D 0/1 indicator of shape (n_rows, n_labels); got shape {arr.shape}")
        if arr.shape[0] != n_rows:
            raise ValueError(f"y has {arr.shape[0]} rows but preds has {n_rows} rows; pass the targets of the OOF rows in the same order")
        if arr.shape[1] != n_cols:
            raise ValueError(f"multilabel y has {arr.shape[1]} label columns but preds has {n_cols}; "
                             "pass one prediction column per label, in the same order")
        if not _integral(arr) or not np.isin(arr, (0, 1)).all():
            bad = np.argwhere(~np.isin(arr, (0, 1)))
            at = f"; first bad value {arr[tuple(bad[0])].item()!r} at row {bad[0][0]}, label {bad[0][1]}" if len(bad) else ""
            raise ValueError(f"multilabel y must hold only 0 and 1{at}. Encode each label as a 0/1 indicator column")
        return arr.astype(np.int64)

    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        what = "real values" if task == "regression" else "integer labels"
        raise ValueError(f"{task} y must be 1-D {what} of shape (n_rows,); got shape {arr.shape}")
    if len(arr) != n_rows:
        raise ValueError(f"y has {len(arr)} labels but preds has {n_rows} rows; pass the labels of the OOF rows in the same order")
    if task == "regression":
        if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
            raise ValueError(f"regression y must hold real numbers; got dtype {arr.dtype}")
        arr = arr.astype(np.float64)
        if not np.isfinite(arr).all():
            i = int(np.flatnonzero(~np.isfinite(arr))[0])
            raise ValueError(f"regression y must be finite; row {i} is {arr[i]}. Drop or impute those rows first")
        return arr
    if not _integral(arr):
        raise ValueError(f"{task} y must hold integer {'grades' if task == 'ordinal' else 'class labels'}; "
                         f"got dtype {arr.dtype} with non-integer values")
    arr = arr.astype(np.int64)
    if task == "ordinal":
        if arr.min() < 0:
            raise ValueError(f"ordinal y must hold grade indices 0, 1, 2, ...; got a minimum of {arr.min()}. "
                             "Encode grades as their index in the ordered grade list")
        return arr
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


def _to_output(blend: np.ndarray, output: str) -> np.ndarray:
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


def _logit_features(preds: np.ndarray, output: str) -> np.ndarray:
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
        z = _logit(preds, _LOG_CLIP)
    else:
        z = np.log(np.clip(preds, _LOG_CLIP, 1.0))
        z -= z.mean(axis=2, keepdims=True)
    return z.transpose(1, 0, 2).reshape(n_rows, n_models * n_cols).astype(np.float32)


def single_model_scores(preds: np.ndarray, y: np.ndarray, metric: Metric | str, *,
                        task: str | None = None) -> np.ndarray:
    """Score each model on its own.

    Parameters
    ----------
    preds : ndarray of shape (n_models, n_rows, n_cols)
    y : ndarray of shape (n_rows,) or (n_rows, n_labels)
        See the module table for each task.
    metric : Metric or str
    task : str or None, default None
        A key of :data:`TASK_OUTPUT`; None infers binary (one column) or
        multiclass.

    Returns
    -------
    scores : ndarray of shape (n_models,)
        In the metric's own units and direction.
    """
    metric = _as_metric(metric)
    preds, task = _validate_preds(preds, task=task)
    y = _validate_y(y, preds.shape[1], preds.shape[2], task)
    return _single_scores(preds, y, metric)


def _single_scores(preds: np.ndarray, y: np.ndarray, metric: Metric) -> np.ndarray:
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
        self.task = _resolve_task(task, preds.shape[2])
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
                self.hi = 1.0 - _EPS
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

    def subset(self, idx: np.ndarray) -> "_LinearLoss":
        new = object.__new__(_LinearLoss)
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
        np.clip(r, _EPS, self.hi, out=r)
        np.log(r, out=r)
        return -r.mean(axis=-1, dtype=np.float64)

    def loss(self, r: np.ndarray) -> float:
        """Loss of one blend given in the ``stack`` representation."""
        if self.mode != "metric":
            return float(self._reduce(np.array(r, dtype=self.stack.dtype)))
        pred = _to_output(r, self.output) if self.clip else r
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
    ``_predict`` unless they are a linear blend with ``weights_``); one that
    does not handle every output kind narrows ``outputs`` and says why in
    ``why_not``.

    Parameters
    ----------
    calibrate : bool, default False
        After fitting, and only when the metric is ``log_loss`` and the task
        is multiclass or binary, fit a temperature on the method's in-sample
        blend (:func:`fit_temperature`) and keep it only if it lowers the
        in-sample log loss; ``predict`` then applies it.  Averages of
        diverse models are typically under-confident, which a temperature
        below 1 corrects; :func:`nested_score` tells whether it helps out
        of sample.  Other tasks ignore it quietly: a temperature is a
        softmax/sigmoid rescaling, meaningless for values, and for multilabel
        one shared temperature over labels of different calibration is not
        what a per-label fix would need.
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
    task_ : str
        The task the method was fitted for (resolved: never None), so that
        ``predict`` validates and outputs the same way.
    output_ : {"simplex", "probability", "value"}
        ``TASK_OUTPUT[task_]``.
    kind : {"mean", "weights", "stacker"}
        Class attribute.
    outputs : frozenset of str
        Class attribute: the output kinds the method applies to.
    why_not : str
        Class attribute: why it does not apply to the others (for
        :class:`NotApplicable`'s message).
    transductive : bool
        Class attribute; True when a row's prediction depends on the other
        rows passed to ``predict`` (``rank_mean``).
    """

    name: str = "?"
    kind: str = "weights"
    outputs: frozenset[str] = frozenset({"simplex", "probability", "value"})
    why_not: str = ""
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
        self.task_: str | None = None
        self.output_: str | None = None

    def __repr__(self) -> str:
        changed = {k: v for k, v in self.params.items() if v != {**self._base_defaults, **self.defaults}.get(k)}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in changed.items())})"

    # -- hooks ------------------------------------------------------------- #

    def _check_params(self) -> None:
        """Raise ValueError for invalid parameter values (subclasses extend)."""

    def _fit(self, preds: np.ndarray, y: np.ndarray, metric: Metric, extra: np.ndarray | None) -> None:
        raise NotImplementedError

    def _predict(self, preds: np.ndarray, extra: np.ndarray | None) -> np.ndarray:
        return _to_output(np.tensordot(self.weights_, preds, axes=1), self.output_)

    # -- public API -------------------------------------------------------- #

    def fit(self, preds: np.ndarray, y: np.ndarray, metric: Metric | str,
            extra: np.ndarray | None = None, *, task: str | None = None) -> "BlendMethod":
        """Fit the blend on OOF predictions.

        Parameters
        ----------
        preds : array-like of shape (n_models, n_rows, n_cols)
            Stacked OOF predictions (see the module table for each task).
        y : array-like of shape (n_rows,) or (n_rows, n_labels)
            Targets: class labels ``0 .. n_classes - 1``, a 0/1 indicator
            per label (multilabel), real values (regression) or grade
            indices (ordinal).
        metric : Metric or str
            The competition metric (or its registry name).
        extra : array-like of shape (n_rows, n_features), optional
            Per-row metadata features; used by stackers, ignored otherwise.
        task : str or None, default None
            A key of :data:`TASK_OUTPUT`; None infers binary (one column)
            or multiclass.

        Returns
        -------
        self

        Raises
        ------
        NotApplicable
            The method does not apply to the task (see :func:`applicable`).
        ValueError
            ``preds``, ``y`` or ``extra`` do not fit the task; the message
            names the bad value.
        """
        metric = _as_metric(metric)
        if task is not None:
            self._check_applicable(_check_task(task))  # before validating: the cheaper, clearer error
        preds, task = _validate_preds(preds, task=task)
        _, n_rows, n_cols = preds.shape
        y = _validate_y(y, n_rows, n_cols, task)
        extra = _validate_extra(extra, n_rows)
        return self._fit_valid(preds, y, metric, extra, task)

    def _check_applicable(self, task: str) -> None:
        reason = not_applicable_reason(type(self), task)
        if reason is not None:
            raise NotApplicable(reason)

    def _fit_valid(self, preds: np.ndarray, y: np.ndarray, metric: Metric, extra: np.ndarray | None,
                   task: str) -> "BlendMethod":
        # fit on inputs already validated for `task` (nested_score checks the full arrays once)
        self._check_applicable(task)
        self.task_, self.output_ = task, TASK_OUTPUT[task]
        self.n_models_, self.n_cols_ = preds.shape[0], preds.shape[2]
        self.n_extra_ = None if extra is None else extra.shape[1]
        self.metric_ = metric
        self.temperature_ = 1.0
        self._fit(preds, y, metric, extra if self.kind == "stacker" else None)
        if self.params["calibrate"] and metric.name == "log_loss" and task in ("multiclass", "binary"):
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
            Same models, same order, same task as in ``fit``.
        extra : array-like of shape (n_rows, n_features), optional
            Required by a stacker fitted with extra features.

        Returns
        -------
        pred : ndarray of shape (n_rows, n_cols)
            Of the fitted task's output kind: rows sum to 1 (multiclass),
            probabilities in [0, 1] (binary, multilabel), or unclipped
            values (regression, ordinal).
        """
        if self.n_models_ is None:
            raise RuntimeError(f"blend method {self.name!r} is not fitted; call fit(preds, y, metric) first")
        preds, _ = _validate_preds(preds, task=self.task_, n_models=self.n_models_, n_cols=self.n_cols_)
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


# Means that read predictions as probabilities; for values they would take ranks, logs or powers of numbers
# on the target's scale, which have no meaning there (and logs of negatives are undefined).
_PROBABILITY_OUTPUTS = frozenset({"simplex", "probability"})


@register_blend("mean")
class Mean(_MeanMethod):
    """Arithmetic mean of the models' predictions (any task)."""

    def _predict(self, preds, extra):
        return _to_output(preds.mean(axis=0), self.output_)


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
        return _to_output(ranks.mean(axis=0), self.output_)


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
        return _to_output(np.exp(np.log(np.clip(preds, _LOG_CLIP, 1.0)).mean(axis=0)), self.output_)


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
        _require(np.isfinite(self.params["power"]), f"power must be a finite number; got {self.params['power']!r}")

    def _predict(self, preds, extra):
        power = float(self.params["power"])
        if power == 0:
            return GeometricMean._predict(self, preds, extra)
        base = np.clip(preds, _LOG_CLIP, 1.0) if power < 0 else preds
        return _to_output(np.power(np.power(base, power).mean(axis=0), 1.0 / power), self.output_)


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
        obj = _LinearLoss(preds, y, metric, task=self.task_)
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
        obj = _LinearLoss(preds, y, metric, task=self.task_, dtype=np.float32)
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
        _require(0 < p["step"] <= 1, f"step must be in (0, 1]; got {p['step']!r}")
        _require(p["step"] <= p["max_weight"] <= 1, f"max_weight must be in [step, 1]; got {p['max_weight']!r}")
        _require(_is_int(p["max_iter"]) and p["max_iter"] >= 0, f"max_iter must be an int >= 0; got {p['max_iter']!r}")

    def _fit(self, preds, y, metric, extra):
        p = self.params
        obj = _LinearLoss(preds, y, metric, task=self.task_, clip=p["allow_negative"], dtype=np.float32)
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
    result_ : scipy.optimize.OptimizeResult
    """

    defaults = {"max_iter": 200, "ftol": 1e-10}

    def _fit(self, preds, y, metric, extra):
        from scipy.optimize import minimize

        obj = _LinearLoss(preds, y, metric, task=self.task_, force_log_loss=True)
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
            b = np.clip(w @ stack, _EPS, obj.hi)
            return -(stack @ (1.0 / b)) / n_elements

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
    """Second-level model on the models' logits (+ extra features).

    * multiclass, binary: one classifier on every kept model's logits.
    * multilabel: one binary classifier per label, on the kept models'
      logits of that label (``label_features="own"``) or of every label
      (``"all"``).  A label with a
      single class in the fitting rows (never positive in a small fold)
      cannot be learnt; it gets the mean of the kept models' probabilities
      for that label rather than a certain 0 or 1, which would cost ~34.5
      nats of log loss on every held-out positive.
    * regression, ordinal: one regressor on the kept models' values, fitted
      to the residual of their mean: the prediction is that mean plus a
      learnt correction, so regularisation (Ridge's penalty, few shallow
      trees) pulls towards the mean blend rather than towards a constant.
    """

    kind = "stacker"

    def _check_params(self):
        _check_max_models(self.params["max_models"])
        _require(self.params["label_features"] in ("own", "all"),
                 f"label_features must be 'own' or 'all'; got {self.params['label_features']!r}")

    def _make_model(self, regression: bool = False):
        raise NotImplementedError

    def _features(self, preds, extra):
        x = _logit_features(np.take(preds, self.models_, axis=0), self.output_)
        return x if extra is None else np.hstack([x, extra.astype(np.float32)])

    def _label_inputs(self, x: np.ndarray, label: int, n_labels: int) -> np.ndarray:
        """Multilabel: the columns of ``_features`` that label ``label``'s model reads."""
        if self.params["label_features"] == "all":
            return x
        # _features is model-major (model 0's labels, then model 1's, ...); extra features follow
        n_logits = len(self.models_) * n_labels
        return x[:, np.r_[label:n_logits:n_labels, n_logits:x.shape[1]]]

    def _fit(self, preds, y, metric, extra):
        self._n_classes = 2 if preds.shape[2] == 1 else preds.shape[2]
        # the stacker reads only the best `max_models` models: fewer inputs overfit less and fit faster
        limit = self.params["max_models"]
        if limit and preds.shape[0] > limit:
            scores = _single_scores(preds, y, metric)
            best_first = np.argsort(-scores if metric.greater_is_better else scores, kind="stable")
            self.models_ = np.sort(best_first[:limit])
        else:
            self.models_ = np.arange(preds.shape[0])
        if self.output_ == "value":
            base = np.take(preds, self.models_, axis=0).mean(axis=0)[:, 0]
            self.model_ = self._make_model(regression=True)
            self.model_.fit(self._features(preds, extra), y - base)
            return
        if self.task_ == "multilabel":
            # None marks a label with one class in these rows: predicted by the models' mean
            self.model_ = None
            self.label_models_ = []
            x = self._features(preds, extra)  # once: each label's model reads a slice
            for label in range(preds.shape[2]):
                if np.unique(y[:, label]).size < 2:
                    self.label_models_.append(None)
                    continue
                model = self._make_model()
                model.fit(self._label_inputs(x, label, preds.shape[2]), y[:, label])
                self.label_models_.append(model)
            return
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
        if self.output_ == "value":
            base = np.take(preds, self.models_, axis=0).mean(axis=0)[:, 0]
            return (base + self.model_.predict(self._features(preds, extra)))[:, None]
        if self.task_ == "multilabel":
            out = np.take(preds, self.models_, axis=0).mean(axis=0)
            x = self._features(preds, extra)
            for label, model in enumerate(self.label_models_):
                if model is not None:
                    # column of class 1: classes_ is [0, 1] as both were present in the fitting rows
                    out[:, label] = model.predict_proba(self._label_inputs(x, label, preds.shape[2]))[:, 1]
            return np.clip(out, 0.0, 1.0)
        full = np.zeros((n_rows, self._n_classes))
        if self.model_ is None:
            full[:, self._constant] = 1.0
        else:
            # classes absent from the training rows (a small fold) get probability 0
            full[:, self.model_.classes_] = self.model_.predict_proba(self._features(preds, extra))
        if preds.shape[2] == 1:
            return np.clip(full[:, 1:2], 0.0, 1.0)
        return _to_output(full, "simplex")


@register_blend("logreg_stacker")
class LogRegStacker(_Stacker):
    """Logistic (or, for values, ridge) regression on standardised logits (+ extra).

    Multiclass: one multinomial model; binary: one logistic model;
    multilabel: one logistic model per label.  Regression and ordinal: a
    ridge regression on the standardised values (+ extra) with
    ``alpha = 1 / C``, fitted to the residual of the kept models' mean (see
    :class:`_Stacker`), so that the one knob ``C`` keeps its direction
    (larger = weaker penalty).  Ridge's penalty is scale-free in the target
    (scaling ``y`` scales the solution), but its per-row curvature (2) is
    larger than the logistic loss's (at most 1/4), so for the same ``C`` it
    regularises relatively less; check with :func:`nested_score`.

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
    label_features : {"own", "all"}, default "own"
        Multilabel only: label ``l``'s model reads the kept models' logits
        of label ``l`` (``n_models`` inputs) or of every label (``n_models *
        n_labels``).  Measured on synthetic sets (6 models, 5 folds, nested
        mean BCE, mean of 3 seeds), "own" vs "all": independent labels,
        logreg 1,000 rows x 16 labels 0.195 vs 0.221, 400 x 16 0.210 vs
        0.247, lgbm 1,000 x 8 0.219 vs 0.229; co-occurring labels whose
        models ignore each other, 0.229 vs 0.190, 0.247 vs 0.240 (and AUC
        0.952 vs 0.949 in favour of "own"), 0.266 vs 0.217.  "own" is the
        default: its inputs do not grow with the number of labels (less
        variance on small OOF sets, cost linear in labels), and models that
        share a backbone usually learn co-occurrence themselves, which is
        the only case "all" wins; try "all" with :func:`nested_score` when
        labels co-occur strongly and the OOF set is large.
    """

    defaults = {"C": 0.001, "max_iter": 200, "max_models": 10, "label_features": "own"}

    def _check_params(self):
        super()._check_params()
        _require(self.params["C"] > 0, f"C must be > 0; got {self.params['C']!r}")

    def _make_model(self, regression: bool = False):
        from sklearn.linear_model import LogisticRegression, Ridge
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        if regression:
            return make_pipeline(StandardScaler(), Ridge(alpha=1.0 / self.params["C"]))
        return make_pipeline(StandardScaler(), LogisticRegression(C=self.params["C"], max_iter=self.params["max_iter"]))


@register_blend("lgbm_stacker")
class LGBMStacker(_Stacker):
    """LightGBM on the logits (+ extra), small and regularised.

    A classifier for multiclass and binary, one binary classifier per label
    for multilabel, and a regressor (L2) for regression and ordinal, fitted
    to the residual of the kept models' mean (see :class:`_Stacker`): with
    few shallow trees at a small learning rate, boosting from the mean blend
    reaches a good prediction that boosting from a constant would not.

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
    label_features : {"own", "all"}, default "own"
        Multilabel only; see :class:`LogRegStacker`.
    """

    defaults = {"max_models": 10, "label_features": "own", "n_estimators": 200, "learning_rate": 0.05, "num_leaves": 7, "min_child_samples": 20,
                "subsample": 0.8, "colsample_bytree": 0.5, "reg_lambda": 1.0, "max_bin": 63, "bin_sample": 20000,
                "n_jobs": 2, "seed": 0}

    def _make_model(self, regression: bool = False):
        import lightgbm as lgb

        p = self.params
        cls = lgb.LGBMRegressor if regression else lgb.LGBMClassifier
        return cls(
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
        Fitted and scored on all rows (optimistic); with a decision, the
        all-rows decision applied to the all-rows predictions.
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
        The nested held-out predictions; with a decision, the decided ones
        (each fold's decision applied to its held-out rows), i.e. what was
        scored.
    seconds : float
    fitted : BlendMethod
        The refit on all rows, for predicting the test set.
    decision : object or None
        With ``decision``: the decision fitted on the all-rows refit's
        all-rows predictions, to apply to ``fitted.predict(test)``.
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
    decision: Any = field(default=None, repr=False)


def _fit_decision(decision: Callable[[], Any], y: np.ndarray, pred: np.ndarray, metric: Metric) -> Any:
    dec = decision()
    if not (callable(getattr(dec, "fit", None)) and callable(getattr(dec, "apply", None))):
        raise TypeError(f"decision() must return an object with fit(y, pred, metric) and apply(pred); got {dec!r}")
    fitted = dec.fit(y, pred, metric)
    return dec if fitted is None else fitted


def _apply_decision(dec: Any, pred: np.ndarray) -> np.ndarray:
    out = np.asarray(dec.apply(pred))
    if out.shape != pred.shape:
        raise ValueError(f"decision {type(dec).__name__}.apply returned shape {out.shape} for predictions of shape "
                         f"{pred.shape}; it must return one decided value per prediction, same shape")
    return out


def nested_score(name_or_factory: str | Callable[..., BlendMethod], preds: np.ndarray, y: np.ndarray,
                 folds: np.ndarray, metric: Metric | str, extra: np.ndarray | None = None,
                 params: dict | None = None, *, task: str | None = None,
                 decision: Callable[[], Any] | None = None) -> NestedResult:
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
    y : ndarray of shape (n_rows,) or (n_rows, n_labels)
        See the module table for each task.
    folds : ndarray of shape (n_rows,)
        Fold id of each row; at least 2 distinct ids.
    metric : Metric or str
    extra : ndarray of shape (n_rows, n_features), optional
    params : dict, optional
        Method parameters.  With a persistent optuna ``storage``, only the
        all-rows fit uses it; the fold refits keep their studies in memory.
    task : str or None, default None
        A key of :data:`TASK_OUTPUT`; None infers binary (one column) or
        multiclass.
    decision : callable or None, default None
        A zero-argument factory of a decision rule: an object with
        ``fit(y, pred, metric) -> self`` and ``apply(pred) -> ndarray`` of
        ``pred``'s shape (thresholds turning probabilities into 0/1, cut
        points turning values into grades).  In each outer fold a fresh
        decision is fitted on the fold refit's predictions of its own
        training rows, applied to the held-out rows' predictions, and the
        decided predictions are scored; the held-out rows never reach a
        decision's ``fit``.  The all-rows refit gets one fitted on its
        all-rows predictions (``NestedResult.decision``).

    Returns
    -------
    NestedResult

    Raises
    ------
    NotApplicable
        The method does not apply to the task (see :func:`applicable`).
    """
    start = time.perf_counter()
    metric = _as_metric(metric)
    params = dict(params or {})
    if isinstance(name_or_factory, str):
        method_name = name_or_factory
        factory = lambda **kw: make_blend(method_name, **kw)  # noqa: E731
        if task is not None:
            reason = not_applicable_reason(method_name, _check_task(task))
            if reason is not None:
                raise NotApplicable(reason)
    else:
        factory = name_or_factory
        method_name = getattr(name_or_factory, "name", getattr(name_or_factory, "__name__", repr(name_or_factory)))
    if decision is not None and not callable(decision):
        raise TypeError(f"decision must be a zero-argument factory (e.g. a class), not an instance; got {decision!r}")
    preds, task = _validate_preds(preds, task=task)
    _, n_rows, n_cols = preds.shape
    y = _validate_y(y, n_rows, n_cols, task)
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

    def key(f):
        return f.item() if hasattr(f, "item") else f

    method_cls = BLEND_METHODS.get(method_name) if isinstance(name_or_factory, str) else None
    if method_cls is not None and method_cls.kind == "mean" and not params.get("calibrate"):
        # a fixed mean learns nothing from the rows, so refitting it inside the folds cannot change its
        # honest score: score it once (the refits cost 5x the time on large OOF sets for the same figure)
        full = factory(**params)
        full._fit_valid(preds, y, metric, extra, task)
        pred = full._predict_valid(preds, extra)
        if decision is None:
            score = metric(y, pred)
            fold_scores = {key(f): metric(y[folds == f], pred[folds == f]) for f in fold_ids}
            return NestedResult(
                method=method_name, params=dict(full.params), in_sample=score, nested=score, gap=0.0,
                fold_scores=fold_scores, weight_std=0.0, weights=full.weights_, oof_pred=pred,
                seconds=time.perf_counter() - start, fitted=full,
            )
        # but a decision does learn from the rows: it is nested, fitted on the other folds' rows only
        oof = np.empty((n_rows, n_cols))
        fold_scores = {}
        for f in fold_ids:
            test, train = np.flatnonzero(folds == f), np.flatnonzero(folds != f)
            dec = _fit_decision(decision, y[train], pred[train], metric)
            oof[test] = _apply_decision(dec, pred[test])
            fold_scores[key(f)] = metric(y[test], oof[test])
        final = _fit_decision(decision, y, pred, metric)
        in_sample = metric(y, _apply_decision(final, pred))
        nested = metric(y, oof)
        gap = in_sample - nested if metric.greater_is_better else nested - in_sample
        return NestedResult(
            method=method_name, params=dict(full.params), in_sample=in_sample, nested=nested, gap=gap,
            fold_scores=fold_scores, weight_std=0.0, weights=full.weights_, oof_pred=oof,
            seconds=time.perf_counter() - start, fitted=full, decision=final,
        )

    # float64 with or without a decision: decided 0/1 labels or grades are exact in it
    oof = np.empty((n_rows, n_cols))
    fold_scores: dict = {}
    inner_weights = []
    for f in fold_ids:
        test = np.flatnonzero(folds == f)
        train = np.flatnonzero(folds != f)
        method = factory(**fold_params(f))
        # np.take with integer indices copies ~2.5x faster than a boolean mask on axis 1
        train_preds = np.take(preds, train, axis=1)
        train_extra = None if extra is None else extra[train]
        method._fit_valid(train_preds, y[train], metric, train_extra, task)
        held_out = method._predict_valid(np.take(preds, test, axis=1), None if extra is None else extra[test])
        if decision is not None:
            # in-sample predictions of the training rows: the held-out rows must not tune the decision
            dec = _fit_decision(decision, y[train], method._predict_valid(train_preds, train_extra), metric)
            held_out = _apply_decision(dec, held_out)
        oof[test] = held_out
        fold_scores[key(f)] = metric(y[test], oof[test])
        if method.weights_ is not None:
            inner_weights.append(method.weights_)

    full = factory(**params)
    full._fit_valid(preds, y, metric, extra, task)
    all_rows = full._predict_valid(preds, extra)
    final = None
    if decision is not None:
        final = _fit_decision(decision, y, all_rows, metric)
        all_rows = _apply_decision(final, all_rows)
    in_sample = metric(y, all_rows)
    nested = metric(y, oof)
    gap = in_sample - nested if metric.greater_is_better else nested - in_sample
    weight_std = float(np.std(np.stack(inner_weights), axis=0).mean()) if len(inner_weights) == len(fold_ids) else None
    return NestedResult(
        method=getattr(full, "name", method_name), params=dict(full.params), in_sample=in_sample, nested=nested,
        gap=gap, fold_scores=fold_scores, weight_std=weight_std, weights=full.weights_, oof_pred=oof,
        seconds=time.perf_counter() - start, fitted=full, decision=final,
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
                     metric: Metric | str | None = None, *, y: np.ndarray | None = None,
                     task: str | None = None) -> tuple[np.ndarray, list[tuple[int, int, float]]]:
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
    y : ndarray of shape (n_rows,) or (n_rows, n_labels), optional
        With ``metric`` and no ``scores``: compute the scores.
    task : str or None, default None
        A key of :data:`TASK_OUTPUT`, for validating ``preds`` and ``y``;
        None infers binary (one column) or multiclass.  The correlation
        itself reads every kind of prediction the same way.

    Returns
    -------
    kept : ndarray of int
        Indices of the kept models, ascending.
    pruned : list of (pruned_idx, kept_idx, corr)
        Each pruned model with the kept model it duplicates (the most
        correlated one).
    """
    preds, task = _validate_preds(preds, task=task)
    n = preds.shape[0]
    if scores is None and y is not None and metric is not None:
        scores = _single_scores(preds, _validate_y(y, preds.shape[1], preds.shape[2], task), _as_metric(metric))
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
