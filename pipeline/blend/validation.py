"""Input checks shared by every entry point: the task, the stacked predictions, the targets, the extra features.

Each check raises ValueError naming the bad value and how to fix it; they return the inputs in the
dtypes the methods rely on (float64 predictions, int64 labels).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..task.metrics import TASK_OUTPUT, Metric, get_metric

# A multiclass row whose probabilities sum further than this from 1 is not a
# probability vector (e.g. logits passed by mistake); closer rows are
# renormalised (float16 / csv round-off).
_ROW_SUM_TOL = 1e-2


def check_task(task: Any) -> str:
    if task not in TASK_OUTPUT:
        raise ValueError(f"task must be one of {', '.join(map(repr, TASK_OUTPUT))} or None (inferred from the "
                         f"number of columns: 1 is binary, more multiclass); got {task!r}")
    return task


def resolve_task(task: str | None, n_cols: int) -> str:
    """The explicit task, or today's inference: one column is binary, more is multiclass."""
    if task is None:
        return "binary" if n_cols == 1 else "multiclass"
    return check_task(task)


def as_metric(metric: Metric | str) -> Metric:
    return get_metric(metric) if isinstance(metric, str) else metric


def validate_preds(preds: Any, *, task: str | None = None, n_models: int | None = None,
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
    task = resolve_task(task, c)
    output = TASK_OUTPUT[task]
    if n_models is not None and m != n_models:
        raise ValueError(
            f"preds has {m} models but the blend was fitted on {n_models}; pass the same models in the same order"
        )
    if n_cols is not None and c != n_cols:
        raise ValueError(f"preds has {c} columns but the blend was fitted on {n_cols}")
    if task == "multiclass" and c < 2:
        raise ValueError(
            "multiclass preds need one column per class (at least 2); got 1 column. "
            "For one positive-class probability pass task='binary'"
        )
    if task in ("binary", "regression", "ordinal") and c != 1:
        raise ValueError(
            f"{task} preds must have exactly 1 column (shape (n_models, n_rows, 1)); got {c} columns. "
            "For one probability per class pass task='multiclass', per label task='multilabel'"
        )
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
        fix = {
            "multiclass": "apply softmax",
            "binary": "apply sigmoid",
            "multilabel": "apply sigmoid to each label's logit",
        }[task]
        if not explicit:
            fix = (
                "apply softmax (multiclass) or sigmoid (binary) first; for regression or ordinal values pass "
                "task='regression' or task='ordinal'"
            )
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
    return (
        np.issubdtype(arr.dtype, np.number)
        and not np.issubdtype(arr.dtype, np.complexfloating)
        and bool(np.all(np.isfinite(arr)))
        and bool(np.all(arr == np.round(arr)))
    )


def validate_y(y: Any, n_rows: int, n_cols: int, task: str | None = None) -> np.ndarray:
    """Check the targets against the task and the predictions' shape.

    Returns
    -------
    y : ndarray
        int64 ``(n_rows,)`` (multiclass, binary, ordinal), int64
        ``(n_rows, n_labels)`` (multilabel) or float64 ``(n_rows,)``
        (regression).
    """
    task = resolve_task(task, n_cols)
    arr = np.asarray(y)
    if task == "multilabel":
        if arr.ndim == 1 and n_cols == 1:
            arr = arr[:, None]
        if arr.ndim != 2:
            raise ValueError(
                f"multilabel y must be a 2-D 0/1 indicator of shape (n_rows, n_labels); got shape {arr.shape}"
            )
        if arr.shape[0] != n_rows:
            raise ValueError(
                f"y has {arr.shape[0]} rows but preds has {n_rows} rows; pass the targets of the OOF rows in the same "
                "order"
            )
        if arr.shape[1] != n_cols:
            raise ValueError(
                f"multilabel y has {arr.shape[1]} label columns but preds has {n_cols}; "
                "pass one prediction column per label, in the same order"
            )
        if not _integral(arr) or not np.isin(arr, (0, 1)).all():
            bad = np.argwhere(~np.isin(arr, (0, 1)))
            at = (
                f"; first bad value {arr[tuple(bad[0])].item()!r} at row {bad[0][0]}, label {bad[0][1]}"
                if len(bad)
                else ""
            )
            raise ValueError(f"multilabel y must hold only 0 and 1{at}. Encode each label as a 0/1 indicator column")
        return arr.astype(np.int64)

    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        what = "real values" if task == "regression" else "integer labels"
        raise ValueError(f"{task} y must be 1-D {what} of shape (n_rows,); got shape {arr.shape}")
    if len(arr) != n_rows:
        raise ValueError(
            f"y has {len(arr)} labels but preds has {n_rows} rows; pass the labels of the OOF rows in the same order"
        )
    if task == "regression":
        if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
            raise ValueError(f"regression y must hold real numbers; got dtype {arr.dtype}")
        arr = arr.astype(np.float64)
        if not np.isfinite(arr).all():
            i = int(np.flatnonzero(~np.isfinite(arr))[0])
            raise ValueError(f"regression y must be finite; row {i} is {arr[i]}. Drop or impute those rows first")
        return arr
    if not _integral(arr):
        raise ValueError(
            f"{task} y must hold integer {'grades' if task == 'ordinal' else 'class labels'}; "
            f"got dtype {arr.dtype} with non-integer values"
        )
    arr = arr.astype(np.int64)
    if task == "ordinal":
        if arr.min() < 0:
            raise ValueError(
                f"ordinal y must hold grade indices 0, 1, 2, ...; got a minimum of {arr.min()}. "
                "Encode grades as their index in the ordered grade list"
            )
        return arr
    n_classes = 2 if n_cols == 1 else n_cols
    if arr.min() < 0 or arr.max() >= n_classes:
        raise ValueError(
            f"y must hold labels 0..{n_classes - 1} for {n_cols}-column predictions; got values in "
            f"[{arr.min()}, {arr.max()}]. Encode labels as 0..C-1 in the column order of the predictions"
        )
    return arr


def validate_extra(extra: Any, n_rows: int, n_features: int | None = None) -> np.ndarray | None:
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
