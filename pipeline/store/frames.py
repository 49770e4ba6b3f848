"""Prediction tables: a run's predictions as a frame keyed by id (one column per class) and back, read and checked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.store.layout import StoreError


def prediction_frame(
    ids: np.ndarray, probs: np.ndarray, classes: list[str], folds: np.ndarray | None = None
) -> pd.DataFrame:
    """Predictions keyed by id, one named column per class."""
    frame = pd.DataFrame({"id": np.asarray(ids, dtype=str)})
    if folds is not None:
        frame["fold"] = np.asarray(folds, dtype=np.int64)
    for k, name in enumerate(classes):
        frame[str(name)] = probs[:, k].astype(np.float64)
    return frame


def frame_probs(frame: pd.DataFrame, ids: np.ndarray, classes: list[str], source: str) -> np.ndarray:
    """Class columns of ``frame`` in the order of ``ids``; raise if ids or columns differ."""
    missing_cols = [c for c in classes if str(c) not in frame.columns]
    if missing_cols:
        raise StoreError(f"{source}: no column for class(es) {missing_cols[:5]}")
    indexed = frame.set_index(frame["id"].astype(str))
    if indexed.index.has_duplicates:
        raise StoreError(f"{source}: duplicate ids")
    ids = np.asarray(ids, dtype=str)
    if len(indexed) != len(ids) or not indexed.index.isin(ids).all():
        raise StoreError(f"{source}: ids differ from the competition's ({len(indexed)} rows vs {len(ids)})")
    try:
        probs = indexed.loc[ids, [str(c) for c in classes]].to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"{source}: a prediction column is not numeric ({exc})") from None
    if not np.isfinite(probs).all():
        raise StoreError(f"{source}: NaN or inf predictions")
    return probs


def read_table(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise StoreError(f"{path} does not exist")
    if path.suffix == ".parquet":
        try:
            return pd.read_parquet(path)
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise StoreError(
                f"{path} is not a parquet file pandas can read ({str(exc).splitlines()[0][:120]}); "
                "write it with DataFrame.to_parquet, or pass a .csv"
            ) from None
    if path.suffix == ".csv":
        try:
            return pd.read_csv(path, dtype={"id": str})
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise StoreError(
                f"{path} is not a CSV file pandas can read ({str(exc).splitlines()[0][:120]}); "
                "write it with DataFrame.to_csv(index=False)"
            ) from None
    raise StoreError(f"{path}: expected a .csv or .parquet file")


def numeric_columns(frame: pd.DataFrame, columns: list[str], source: str) -> None:
    """Each named column must hold numbers only; name the first that does not, with an example value."""
    for column in columns:
        values = frame[column]
        numbers = pd.to_numeric(values, errors="coerce")
        bad = numbers.isna() & values.notna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise StoreError(
                f"{source}: column {column!r} holds {values.iat[row]!r} (id {frame['id'].iat[row]}), "
                "not a number; every prediction column must be numeric"
            )


def check_prediction_values(probs: np.ndarray, task: str, source: str, classes: list[str]) -> None:
    """Probabilities lie in [0, 1] (and sum to 1 per row for multiclass); values (regression, ordinal) are
    only required to be finite, which :func:`frame_probs` checks.

    Raises
    ------
    StoreError
        Naming the file, the range found and the fix (logits need a sigmoid or softmax first).
    """
    from pipeline.task.tasks import get_task

    output = get_task(task).output
    if output == "value" or probs.size == 0:
        return
    if probs.min() < 0 or probs.max() > 1:
        raise StoreError(
            f"{source}: values outside [0, 1] (min {probs.min():.3g}, max {probs.max():.3g}); "
            "store probabilities, not logits"
        )
    if output == "simplex" and len(classes) > 1 and not np.allclose(probs.sum(axis=1), 1.0, atol=1e-3):
        raise StoreError(f"{source}: rows do not sum to 1 (e.g. {probs.sum(axis=1)[0]:.4f}); apply a softmax first")
