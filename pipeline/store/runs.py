"""Reading stored runs for the ensemble, their prediction frames, and removing a run (`make clean-run`)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core import io
from pipeline.store.frames import check_prediction_values, frame_probs, read_table
from pipeline.store.layout import RunLayout, StoreError
from pipeline.store.lock import RunLock
from pipeline.store.meta import RunMeta, read_meta

# -- reading runs for the ensemble -----------------------------------------------------------

@dataclass
class StoredRun:
    """One finished run's predictions aligned to the competition's row order.

    ``fold_tests`` holds each fold model's test predictions, ``(n_folds, n_test, n_cols)`` in
    fold order, whose mean is ``test``; None when the run has none stored (an imported run).
    """

    name: str
    oof: np.ndarray
    test: np.ndarray
    meta: RunMeta
    fold_tests: np.ndarray | None = None


def load_runs(runs_dir: Path, train_ids: np.ndarray, test_ids: np.ndarray, classes: list[str], folds_fingerprint: str,
              task: str = "multiclass") -> tuple[list[StoredRun], list[tuple[str, str]]]:
    """Every finished run made on these folds, for this task and these columns, and the runs left out with why.

    Returns
    -------
    (runs, excluded) where excluded is a list of ``(run name, reason)``.
    """
    runs, excluded = [], []
    if not runs_dir.is_dir():
        return runs, excluded
    for run_dir in sorted(p for p in runs_dir.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
        layout = RunLayout(run_dir)
        try:
            meta = read_meta(layout)
        except StoreError as exc:
            excluded.append((run_dir.name, f"unreadable: {exc}"))
            continue
        if meta is None:
            continue
        if meta.status != "finished":
            done = sorted(meta.folds_done)
            excluded.append((run_dir.name, f"unfinished (folds done: {done or 'none'}); finish it with make train, "
                                           f"or delete it with make clean-run NAME={run_dir.name}"))
            continue
        if meta.folds_fingerprint != folds_fingerprint:
            excluded.append(
                (
                    run_dir.name,
                    f"made on other folds (fingerprint {meta.folds_fingerprint} != {folds_fingerprint}); mixing "
                    "splits leaks",
                )
            )
            continue
        if meta.task != task:
            excluded.append((run_dir.name, f"made for task {meta.task!r}, not {task!r}"))
            continue
        if [str(c) for c in meta.classes] != [str(c) for c in classes]:
            excluded.append((run_dir.name, "its class list differs from train.csv's"))
            continue
        try:
            oof = frame_probs(read_table(layout.oof), train_ids, classes, str(layout.oof))
            test = frame_probs(read_table(layout.test), test_ids, classes, str(layout.test))
            check_prediction_values(oof, task, str(layout.oof), classes)
            check_prediction_values(test, task, str(layout.test), classes)
        except StoreError as exc:
            excluded.append((run_dir.name, f"unreadable: {exc}"))
            continue
        runs.append(StoredRun(run_dir.name, oof, test, meta, read_fold_tests(layout, meta, test)))
    return runs, excluded


def read_fold_tests(layout: RunLayout, meta: RunMeta, test: np.ndarray) -> np.ndarray | None:
    """Each fold model's test predictions, ``(n_folds, n_test, n_cols)``, or None where not all are stored.

    The fold files are keyed by row (the sample submission's order when the run was
    made); they are used only when every fold's file is there, has the test set's shape,
    and their mean is the run's id-keyed ``test.parquet`` (so the rows are the same rows).
    """
    folds = sorted(int(f) for f in meta.folds_done)
    if not folds:
        return None
    stack = []
    for fold in folds:
        path = layout.fold_predictions(fold, "test")
        if not path.is_file():
            return None
        try:
            frame = pd.read_parquet(path)
        except (OSError, ValueError):
            return None
        if "row" not in frame.columns or len(frame) != len(test) or frame.shape[1] - 1 != test.shape[1]:
            return None
        values = frame.sort_values("row").drop(columns="row").to_numpy(dtype=np.float64)
        stack.append(values)
    fold_tests = np.stack(stack)
    if not np.isfinite(fold_tests).all() or not np.allclose(fold_tests.mean(axis=0), test, rtol=1e-5, atol=1e-6):
        return None
    return fold_tests


def check_run_name(name: str, what: str = "NAME") -> str:
    """``name`` if it can name a run folder, else an error saying what is allowed (:func:`pipeline.core.io.safe_name`).
    """
    return io.safe_name(name, what)


def describe_run(run_dir: Path) -> str:
    """A run's status in a few words, for a question or a message (unreadable runs say so)."""
    try:
        meta = read_meta(RunLayout(run_dir))
    except StoreError as exc:
        return f"unreadable: {exc}"
    if meta is None:
        return "no meta.json"
    done = sorted(meta.folds_done)
    return f"{meta.status}, folds done {done or 'none'}" + (f", CV {meta.cv:.4f}" if meta.cv is not None else "")


def remove_run(runs_dir: Path, name: str) -> Path:
    """Delete the run folder ``runs_dir/name`` under its lock (a run being trained is refused).

    Returns
    -------
    Path
        The folder that was removed.

    Raises
    ------
    StoreError
        If the name is not a run name, there is no such run, or a live process holds its lock.
    """
    run_dir = runs_dir / check_run_name(name)
    if not run_dir.is_dir():  # check_run_name has refused "_" and "." names (caches, hidden folders) already
        known = (
            sorted(p.name for p in runs_dir.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
            if runs_dir.is_dir()
            else []
        )
        raise StoreError(f"no run {run_dir}; runs: {', '.join(known) or 'none'}")
    with RunLock(run_dir):
        for child in run_dir.iterdir():
            if child.name != ".lock":
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    run_dir.rmdir()
    return run_dir
