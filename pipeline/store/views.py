"""Each TTA view's predictions on its own: what a run would score with fewer views (``make export BUDGET=``).

A fold of a run with more than one TTA view keeps, beside its mean over views (``valid``, ``test``), each view's
predictions (``valid_views``, ``test_views``: a ``view`` column, a ``row`` column, one column per output).  Runs
made before those files existed still tell two subsets apart: the first view alone (``valid_plain``) and every
view (``valid``); with two views the second is exactly ``2 * mean - first``, since TTA is the mean of the views'
probabilities.  No torch here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.store.layout import RunLayout, StoreError


def view_frame(view_names: list[str], rows: np.ndarray, probs: np.ndarray) -> pd.DataFrame:
    """One table of every view's predictions: ``view``, ``row``, one column per output.

    Parameters
    ----------
    view_names : list of str
        The views, in the order of ``probs``' first axis.
    rows : ndarray of shape (n_rows,)
        The rows predicted (indices into the train or test table).
    probs : ndarray of shape (n_views, n_rows, n_cols)
    """
    probs = np.asarray(probs)
    if probs.ndim != 3 or probs.shape[0] != len(view_names) or probs.shape[1] != len(rows):
        raise ValueError(f"probs of shape {probs.shape} do not match {len(view_names)} views x {len(rows)} rows")
    frame = pd.DataFrame(probs.reshape(-1, probs.shape[2]), columns=[str(k) for k in range(probs.shape[2])])
    frame.insert(0, "row", np.tile(np.asarray(rows), len(view_names)))
    frame.insert(0, "view", np.repeat(np.asarray(view_names, dtype=object), len(rows)))
    return frame


def read_view_frame(frame: pd.DataFrame, view_names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(rows, predictions of shape ``(n_views, n_rows, n_cols)``) of a :func:`view_frame`, views in ``view_names``'
    order.

    Raises
    ------
    StoreError
        A view is missing, or the views do not cover the same rows.
    """
    values = frame.drop(columns=["view", "row"]).to_numpy(dtype=np.float64)
    rows, out = None, []
    for name in view_names:
        mask = (frame["view"] == name).to_numpy()
        if not mask.any():
            raise StoreError(f"view {name!r} has no predictions (stored: {sorted(set(frame['view']))})")
        these = frame["row"].to_numpy()[mask]
        if rows is not None and not np.array_equal(rows, these):
            raise StoreError(f"view {name!r} covers other rows than view {view_names[0]!r}")
        rows = these
        out.append(values[mask])
    return rows, np.stack(out)


def fold_views(layout: RunLayout, fold: int, split: str, view_names: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """One fold's predictions per view: ``(rows, (n_views, n_rows, n_cols))``, or None where they are not known.

    Parameters
    ----------
    layout : RunLayout
    fold : int
    split : {"valid", "test"}
    view_names : list of str
        The fold's TTA views (``fold.json``'s ``tta``).

    Returns
    -------
    tuple or None
        From ``<split>_views.parquet`` when written; with one view, the fold's own file; for ``valid`` with two
        views and no per-view file, derived exactly from the mean and the first view; None otherwise.
    """
    if split not in ("valid", "test"):
        raise ValueError(f"split {split!r}: choose valid or test")
    path = layout.fold_predictions(fold, f"{split}_views")
    if path.is_file():
        return read_view_frame(pd.read_parquet(path), view_names)
    if len(view_names) == 1:
        rows, values = read_fold_predictions(layout, fold, split)
        return rows, values[None]
    if split == "valid" and len(view_names) == 2:
        rows, mean = read_fold_predictions(layout, fold, "valid")
        plain_rows, plain = read_fold_predictions(layout, fold, "valid_plain")
        if not np.array_equal(rows, plain_rows):
            raise StoreError(f"{layout.fold_predictions(fold, 'valid_plain')} covers other rows than the fold's valid")
        return rows, np.stack([plain, 2 * mean - plain])
    return None


def read_fold_predictions(layout: RunLayout, fold: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(row indices, predictions) of one of a fold's prediction files (``valid``, ``valid_plain``, ``test``)."""
    frame = pd.read_parquet(layout.fold_predictions(fold, kind))
    return frame["row"].to_numpy(), frame.drop(columns="row").to_numpy(dtype=np.float64)
