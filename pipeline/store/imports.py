"""`make import-oof`: predictions made elsewhere, checked against the competition and stored as a finished run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core import io
from pipeline.store.frames import check_prediction_values, frame_probs, numeric_columns, prediction_frame, read_table
from pipeline.store.layout import RunLayout, StoreError
from pipeline.store.meta import RunMeta, write_meta


def validate_import(
    oof: pd.DataFrame,
    test: pd.DataFrame,
    train_ids: np.ndarray,
    test_ids: np.ndarray,
    folds: np.ndarray,
    classes: list[str],
    source: str,
    task: str = "multiclass",
) -> tuple[np.ndarray, np.ndarray]:
    """Check predictions made elsewhere against this competition; return them in our row order.

    Parameters
    ----------
    oof : DataFrame
        ``id``, ``fold`` and one column per prediction column (class, label or the
        target, :mod:`pipeline.task.tasks`), one row per train id.
    test : DataFrame
        ``id`` and the same prediction columns, one row per test id.
    train_ids, test_ids, folds, classes
        The competition's ids, our fold of each train row, the prediction column names.
    task : str
        Probabilities are checked to lie in [0, 1] (and to sum to 1 for multiclass);
        regression and ordinal values only to be finite.

    Returns
    -------
    (oof_probs, test_probs) aligned to ``train_ids`` and ``test_ids``.

    Raises
    ------
    StoreError
        Naming the first problem: a missing column, ids that differ, a fold
        assignment that differs from ours (mixing splits leaks), NaN, or values
        that are not probabilities.
    """
    for frame, what in ((oof, "OOF"), (test, "test")):
        if "id" not in frame.columns:
            raise StoreError(f"{source}: the {what} file needs an 'id' column (columns: {list(frame.columns)[:8]})")
    if "fold" not in oof.columns:
        raise StoreError(
            f"{source}: the OOF file needs a 'fold' column with each row's validation fold (ours: "
            "folds/<competition>.csv)"
        )
    numeric_columns(oof, ["fold"], f"{source} (OOF)")
    for frame, what in ((oof, "OOF"), (test, "test")):
        numeric_columns(frame, [str(c) for c in classes if str(c) in frame.columns], f"{source} ({what})")
    oof_probs = frame_probs(oof, train_ids, classes, f"{source} (OOF)")
    test_probs = frame_probs(test, test_ids, classes, f"{source} (test)")
    their_folds = oof.set_index(oof["id"].astype(str)).loc[np.asarray(train_ids, dtype=str), "fold"].to_numpy()
    if not np.all(np.asarray(their_folds, dtype=np.float64) % 1 == 0):
        raise StoreError(f"{source}: the 'fold' column must hold whole fold numbers")
    differ = np.flatnonzero(their_folds.astype(np.int64) != folds)
    if len(differ):
        raise StoreError(
            f"{source}: fold assignment differs from ours on {len(differ)} rows (e.g. id {train_ids[differ[0]]}: "
            f"fold {their_folds[differ[0]]} vs {folds[differ[0]]}); retrain that model on folds/<competition>.csv - "
            "mixing splits leaks"
        )
    for probs, what in ((oof_probs, "OOF"), (test_probs, "test")):
        check_prediction_values(probs, task, f"{source} ({what})", classes)
    return oof_probs, test_probs


def import_run(
    run_dir: Path,
    oof_path: Path,
    test_path: Path,
    train_ids: np.ndarray,
    test_ids: np.ndarray,
    folds: np.ndarray,
    folds_fingerprint: str,
    classes: list[str],
    metric,
    y: np.ndarray,
    force: bool = False,
    task: str = "multiclass",
) -> RunMeta:
    """Validate predictions from another notebook and add them to the store as a finished run."""
    layout = RunLayout(run_dir)
    if layout.meta.is_file() and not force:
        raise StoreError(f"run {run_dir} exists; choose another NAME or pass FORCE=1")
    oof_probs, test_probs = validate_import(
        read_table(oof_path), read_table(test_path), train_ids, test_ids, folds, classes, str(oof_path), task
    )
    io.write_parquet(layout.oof, prediction_frame(train_ids, oof_probs, classes, folds))
    io.write_parquet(layout.test, prediction_frame(test_ids, test_probs, classes))
    meta = RunMeta(
        name=run_dir.name,
        status="finished",
        model="imported",
        family="imported",
        source={"oof": str(oof_path), "test": str(test_path)},
        task=task,
        classes=list(classes),
        folds_fingerprint=folds_fingerprint,
        cv=metric(y, oof_probs),
        metric=metric.name,
        created=pd.Timestamp.now().isoformat(timespec="seconds"),
        folds_done=sorted(set(np.asarray(folds).tolist())),
    )
    write_meta(layout, meta)
    return meta
