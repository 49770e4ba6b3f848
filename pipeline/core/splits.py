"""Split primitives: the held-out rows of a saved fold assignment, with nothing above them.

``iter_splits`` lives here rather than in ``pipeline.folds`` because the pure layers (the blend methods,
thresholds and cut points) need it, and ``pipeline.folds`` reads the config and the competition folder.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np


def iter_splits(folds) -> Iterator[tuple[Any, np.ndarray, np.ndarray]]:
    """The train / held-out rows of each fold, for nested cross-validation.

    Modelled on scikit-learn's ``split``, but over a saved fold assignment:
    each fold in turn is held out and the other folds are its training rows,
    so every row is held out exactly once.  The fold ids are checked when
    this is called, not when the first split is drawn.

    Parameters
    ----------
    folds : array-like of shape (n_rows,)
        The fold id of each row (any sortable ids: 0..K-1, strings, ...).

    Returns
    -------
    splits : iterator of (fold_id, train_idx, held_out_idx)
        One per distinct fold id, in sorted order.  ``fold_id`` is a plain
        Python scalar (an int, float or str for NumPy ids), fit for a dict
        key or JSON; ``train_idx`` and ``held_out_idx`` are ascending integer
        row indices (``np.flatnonzero``), disjoint and together every row.

    Raises
    ------
    ValueError
        If ``folds`` is not 1-D, holds a NaN id (its rows would never be held
        out), or has fewer than 2 distinct ids (nothing to train on).
    """
    folds = np.asarray(folds)
    if folds.ndim != 1:
        raise ValueError(f"folds must be 1-D, one fold id per row; got shape {folds.shape}")
    if folds.dtype.kind in "fc" and np.isnan(folds).any():
        raise ValueError(f"fold ids must not be NaN; row {int(np.flatnonzero(np.isnan(folds))[0])} is NaN")
    fold_ids = np.unique(folds)
    if len(fold_ids) < 2:
        raise ValueError(f"nested cross-validation needs at least 2 folds; got fold ids {fold_ids.tolist()}")

    def splits() -> Iterator[tuple[Any, np.ndarray, np.ndarray]]:
        for fold in fold_ids:
            held = folds == fold
            # a NumPy scalar becomes its Python value; an object array's ids already are Python values
            yield (fold.item() if isinstance(fold, np.generic) else fold), np.flatnonzero(~held), np.flatnonzero(held)

    return splits()
