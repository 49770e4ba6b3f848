"""Stage 1: the k-fold split, made once and read by every later stage.

``folds/<competition>.csv`` holds ``id, fold``; ``folds/<competition>.json`` holds
its fingerprint (a hash of the assignment), which every run records so that the
ensemble never mixes predictions made on different splits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import Config
from pipeline.core import io
from pipeline.core.errors import PipelineError
from pipeline.core.hashing import json_hash
from pipeline.data import Competition
from pipeline.task.tasks import get_task


class FoldsError(PipelineError, ValueError):
    """The folds file is missing, stale, or cannot be made from this data."""


def _multilabel_kfold(n: int, seed: int):
    # iterative stratification (Sechidis et al. 2011): every label's share, and the pairs', kept even per fold
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    return MultilabelStratifiedKFold(n_splits=n, shuffle=True, random_state=seed)


def _sklearn_splitter(name: str):
    # scikit-learn (about 60 MB resident) is imported only when folds are made, never by a training process
    def make(n: int, seed: int):
        from sklearn import model_selection

        return getattr(model_selection, name)(n_splits=n, shuffle=True, random_state=seed)

    return make


SPLITTERS = {
    "stratified": _sklearn_splitter("StratifiedKFold"),
    "multilabel": _multilabel_kfold,
    "kfold": _sklearn_splitter("KFold"),
    "group": _sklearn_splitter("GroupKFold"),
    "stratified_group": _sklearn_splitter("StratifiedGroupKFold"),
}


def make_folds(
    y: np.ndarray,
    n_splits: int = 5,
    strategy: str = "stratified",
    seed: int = 42,
    groups: np.ndarray | None = None,
    task: str = "multiclass",
) -> np.ndarray:
    """Assign each row to a validation fold.

    Parameters
    ----------
    y : array
        The task's targets (:mod:`pipeline.task.tasks`): class or grade indices, 0/1 label
        rows (multilabel) or values (regression, stratified on quantile bins).
    n_splits : int
        Number of folds.
    strategy : {"stratified", "kfold", "group", "stratified_group", "multilabel"}
        "stratified" on a multilabel task is iterative stratification ("multilabel").
    seed : int
        Same seed, same folds.
    groups : array of shape (n_rows,), optional
        Required by the group strategies; a group never straddles two folds.

    Returns
    -------
    ndarray of int of shape (n_rows,)
        The fold of each row, 0 .. n_splits-1.

    Raises
    ------
    FoldsError
        For an unknown strategy, missing groups, or too few rows per class/group.
    """
    if strategy not in SPLITTERS:
        raise FoldsError(f"unknown folds strategy {strategy!r}; choose one of {sorted(SPLITTERS)}")
    y = np.asarray(y)
    if task == "multilabel" and strategy == "stratified":
        strategy = "multilabel"
    if strategy == "multilabel" and (y.ndim != 2 or y.shape[1] < 2):
        raise FoldsError(f"strategy 'multilabel' needs a 0/1 matrix with one column per label; got shape {y.shape}")
    if strategy == "stratified_group" and y.ndim != 1:
        raise FoldsError("strategy 'stratified_group' cannot stratify label sets; use 'group' or 'multilabel'")
    if strategy in ("stratified", "stratified_group"):  # class, grade or target-bin labels
        y = get_task(task).strata(y, n_splits)
    if strategy in ("group", "stratified_group"):
        if groups is None:
            raise FoldsError(f"strategy {strategy!r} needs groups (set folds.group_column)")
        n_groups = len(np.unique(groups))
        if n_groups < n_splits:
            raise FoldsError(f"{n_groups} groups cannot fill {n_splits} folds; lower folds.n_splits")
    if strategy in ("stratified", "stratified_group"):
        counts = np.bincount(y)
        rare = np.flatnonzero((counts > 0) & (counts < n_splits))
        if len(rare) and strategy == "stratified":
            raise FoldsError(
                f"class index(es) {rare.tolist()} have fewer rows ({counts[rare].tolist()}) than folds ({n_splits}); "
                "lower folds.n_splits or use strategy 'kfold'"
            )
    splitter = SPLITTERS[strategy](n_splits, seed)
    folds = np.full(len(y), -1, dtype=np.int64)
    uses_groups = strategy in ("group", "stratified_group")
    splits = splitter.split(np.zeros(len(y)), y, groups) if uses_groups else splitter.split(np.zeros(len(y)), y)
    for fold, (_, valid_idx) in enumerate(splits):
        folds[valid_idx] = fold
    return folds


def fingerprint(ids: np.ndarray, folds: np.ndarray) -> str:
    """A hash of the id -> fold assignment, independent of row order."""
    order = np.argsort(ids, kind="stable")
    return json_hash([np.asarray(ids)[order].tolist(), np.asarray(folds)[order].tolist()])


def folds_frame(ids: np.ndarray, folds: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"id": ids, "fold": folds})


def read_folds_table(path: Path) -> pd.DataFrame:
    """``folds/<competition>.csv`` as ``id`` (str) and ``fold`` (int), checked as a hand edit could break it.

    Raises
    ------
    FoldsError
        If the file does not parse, lacks a column, holds a fold that is not a whole number, or
        puts every row in one fold (nothing left to train on).
    """
    remake = "remake it with 'make folds FORCE=1' (runs made on the old folds will no longer ensemble)"
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise FoldsError(f"{path} is not a readable CSV ({exc}); {remake}") from None
    missing = [c for c in ("id", "fold") if c not in frame.columns]
    if missing:
        raise FoldsError(f"{path} has no column {missing} (columns: {list(frame.columns)[:5]}); {remake}")
    folds = pd.to_numeric(frame["fold"], errors="coerce")
    bad = folds.isna() | (folds != folds.round())
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise FoldsError(
            f"{path}: fold {frame['fold'].iat[row]!r} of id {frame['id'].iat[row]!r} (row {row + 2}) "
            f"is not a fold number; {remake}"
        )
    folds = folds.astype(np.int64)
    if folds.nunique() < 2:
        raise FoldsError(
            f"{path}: every row is in fold {folds.iat[0] if len(folds) else '-'}, so no fold has rows "
            f"to train on; {remake}"
        )
    return pd.DataFrame({"id": frame["id"].astype(str), "fold": folds.to_numpy()})


def read_folds(config: Config, competition: Competition) -> tuple[np.ndarray, str]:
    """The saved folds aligned to ``train.csv`` row order, with their fingerprint.

    Raises
    ------
    FoldsError
        If the file is missing or damaged (:func:`read_folds_table`), or its ids differ from train.csv.
    """
    path = config.folds_csv
    if not path.is_file():
        raise FoldsError(f"no folds file {path}; run 'make folds' first")
    frame = read_folds_table(path)
    by_id = dict(zip(frame["id"], frame["fold"]))
    ids = competition.train_ids
    missing = [i for i in ids if i not in by_id]
    if missing or len(by_id) != len(ids):
        raise FoldsError(
            f"{path} does not match train.csv ({len(missing)} train ids missing, {len(by_id)} vs {len(ids)} rows); "
            "run 'make folds FORCE=1' to remake it (runs made on the old folds will no longer ensemble)"
        )
    folds = np.array([by_id[i] for i in ids], dtype=np.int64)
    return folds, fingerprint(ids, folds)


def fold_summary(y: np.ndarray, folds: np.ndarray, classes: list[str], task: str = "multiclass") -> pd.DataFrame:
    """Rows per fold and what stratification kept even (class, label or target shares): the folds table."""
    rows = []
    for fold in np.unique(folds):
        mask = folds == fold
        rows.append({"fold": int(fold), "rows": int(mask.sum()), **get_task(task).summary(y[mask], classes)})
    return pd.DataFrame(rows)


def run_folds(config: Config, competition: Competition, force: bool = False) -> tuple[np.ndarray, str, str]:
    """Make and save the folds unless an identical file exists.

    Returns
    -------
    (folds, fingerprint, status) where status is "written", "unchanged" or "replaced".

    Raises
    ------
    FoldsError
        If a different folds file exists and ``force`` is not set.
    """
    groups = None
    if config.folds.group_column:
        groups = competition.train[config.folds.group_column].to_numpy()
    folds = make_folds(
        competition.y,
        config.folds.n_splits,
        config.folds.strategy,
        config.folds.seed,
        groups,
        task=config.competition.task,
    )
    ids = competition.train_ids
    new_print = fingerprint(ids, folds)
    path: Path = config.folds_csv
    status = "written"
    if path.is_file():
        try:
            _, old_print = read_folds(config, competition)
        except FoldsError:
            old_print = None
        if old_print == new_print:
            return folds, new_print, "unchanged"
        if not force:
            raise FoldsError(
                f"{path} exists with other folds (fingerprint {old_print}, new {new_print}); "
                "pass FORCE=1 to replace it (runs made on the old folds will no longer ensemble)"
            )
        status = "replaced"
    io.write_csv(path, folds_frame(ids, folds))
    io.write_json(
        path.with_suffix(".json"),
        {
            "fingerprint": new_print,
            "n_splits": config.folds.n_splits,
            "strategy": config.folds.strategy,
            "seed": config.folds.seed,
            "group_column": config.folds.group_column,
            "rows": len(ids),
        },
    )
    return folds, new_print, status
