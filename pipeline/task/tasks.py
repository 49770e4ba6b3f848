"""What a competition predicts: one registry entry per Kaggle task shape.

A task decides, for every stage, what the targets are and what a prediction is:

==========  =================================  ============================  ===================
task        targets ``y``                      prediction (one row)          stored columns
==========  =================================  ============================  ===================
multiclass  class index ``(n,)``               probabilities, sum to 1       one per class
binary      0/1 ``(n,)``                       P(positive class)             the positive class
multilabel  0/1 indicator ``(n, L)``           one probability per label     one per label
regression  value ``(n,)``                     the value                     the target column
ordinal     grade index ``(n,)``               a value on the grade scale    the target column
==========  =================================  ============================  ===================

A task reads its targets from ``train.csv`` (:meth:`Task.parse`), names the stratification labels for the folds
(:meth:`Task.strata`), builds the network's head (:func:`pipeline.train.heads.make_head`: the loss and the activation
that turns logits into the stored prediction; the only part that needs torch, so it lives with training), and writes
the submission in the sample submission's format (:meth:`Task.submission`). Adding a task is one class and one
registry entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from pipeline.core.errors import PipelineError
from pipeline.task.metrics import TASK_OUTPUT


class TaskError(PipelineError, ValueError):
    """The targets or the sample submission do not fit the task; the message says how to fix it."""


@dataclass
class Targets:
    """The parsed targets of a competition.

    Attributes
    ----------
    y : ndarray
        Task-shaped targets (see the module table).
    columns : list of str
        Names of the prediction columns (what the OOF store and the ensemble hold).
    labels : list of str
        Names behind the integer targets: class names (multiclass, and binary as
        ``[negative, positive]``), label names (multilabel), grade names (ordinal);
        empty for regression.
    value_range : (float, float) or None
        Regression and ordinal: the target's range, which scales the BCE loss's target.
    value_mean, value_std : float
        Regression and ordinal: the targets' mean and spread, which standardise the MSE/Huber target.
    """

    y: np.ndarray
    columns: list[str]
    labels: list[str]
    value_range: tuple[float, float] | None = None
    value_mean: float = 0.0
    value_std: float = 1.0
    meta: dict = field(default_factory=dict)


def natural_key(label: str):
    # numeric names sort as numbers ("2" before "10")
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)


def _filled(frame: pd.DataFrame, column: str, what: str) -> pd.Series:
    """``frame[column]``, or a TaskError naming the rows where it is empty or NaN (``what``: "label", "target")."""
    values = frame[column]
    empty = (values.isna() | (values.astype(str).str.strip() == "")).to_numpy()
    if empty.any():
        raise TaskError(
            f"empty or NaN {what} in column {column!r} at row(s) {_rows(empty)} ({int(empty.sum())} in all)"
        )
    return values


def _rows(mask: np.ndarray) -> list[int]:
    return (np.flatnonzero(mask) + 2)[:5].tolist()  # row 1 is the header


class Task:
    """Base class: one Kaggle task shape. Subclasses fill the class attributes and :meth:`parse`."""

    name = "?"
    #: losses the head can train with, the first is the default
    losses: tuple[str, ...] = ()
    default_metric = "accuracy"

    @property
    def output(self) -> str:
        """The kind of prediction: "simplex" (rows sum to 1), "probability" (independent), "value"."""
        return TASK_OUTPUT[self.name]

    def parse(self, frame: pd.DataFrame, comp, labels: list[str] | None = None) -> Targets:
        """Targets of ``frame`` (train.csv, or the solution with ``labels`` fixed by train.csv).

        Raises
        ------
        TaskError
            Naming the rows or values that do not fit the task.
        """
        raise NotImplementedError

    def strata(self, y: np.ndarray, n_splits: int) -> np.ndarray:
        """1-D labels that stratified folds and subsets balance."""
        return y

    def label_counts(self, targets: Targets) -> pd.Series | None:
        """Rows per class, grade or label (None for a continuous target)."""
        return pd.Series(np.bincount(targets.y, minlength=len(targets.labels)), index=targets.labels)

    def truth(self, y: np.ndarray, n_columns: int) -> np.ndarray:
        """The targets shaped as predictions, ``(n, n_columns)``: what a perfect model would store."""
        return np.asarray(y, dtype=np.float64).reshape(len(y), -1)

    def summary(self, y: np.ndarray, columns: list[str]) -> dict:
        """A fold's row of the folds table: what stratification kept equal."""
        counts = np.bincount(y, minlength=len(columns)) / max(len(y), 1)
        return {"min class share": f"{counts.min():.3f}", "max class share": f"{counts.max():.3f}"}

    def submission_values(
        self,
        sample: pd.DataFrame,
        id_column: str,
        target_column: str,
        targets: Targets,
        pred: np.ndarray,
        decided: np.ndarray,
        needs: str,
    ) -> dict[str, np.ndarray]:
        """Column name -> values in the sample submission's format (see :func:`submission_frame`)."""
        raise NotImplementedError


TASKS: dict[str, Task] = {}


def register_task(cls: type[Task]) -> type[Task]:
    TASKS[cls.name] = cls()
    return cls


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise TaskError(f"unknown task {name!r}; choose one of {sorted(TASKS)}") from None


def _format_error(sample_columns: list[str], expected: list[str], target_names: list[str] | None = None) -> TaskError:
    """The sample fits no format; where it has one column per class or label, name the columns that differ."""
    columns = sample_columns[1:]
    if target_names is not None and len(columns) > 1:
        unknown = [c for c in columns if c not in target_names]
        absent = [c for c in target_names if c not in columns]
        parts = []
        if unknown:
            parts.append(f"column(s) {unknown[:5]} not a class of train.csv")
        if absent:
            parts.append(f"no column for class(es) {absent[:5]}")
        if parts:
            return TaskError(
                f"sample submission: {'; '.join(parts)} (train.csv's classes: {target_names[:10]}); "
                "the sample and train.csv must name the same classes: check competition.target_column. "
                "Formats for this task: " + "; ".join(expected)
            )
    return TaskError(
        f"sample submission columns {sample_columns} fit none of the formats for this task: " + "; ".join(expected)
    )


@register_task
class Multiclass(Task):
    name = "multiclass"
    losses = ("ce",)

    def parse(self, frame, comp, labels=None):
        values = _filled(frame, comp.target_column, "label").astype(str)
        labels = labels or sorted(values.unique().tolist(), key=natural_key)
        lookup = {c: i for i, c in enumerate(labels)}
        unknown = ~values.isin(lookup)
        if unknown.any():
            raise TaskError(f"label(s) {sorted(values[unknown].unique())[:5]} are not among the training classes")
        return Targets(values.map(lookup).to_numpy(dtype=np.int64), list(labels), list(labels))

    def truth(self, y, n_columns):
        return np.eye(n_columns)[y]

    def submission_values(self, sample, id_column, target_column, targets, pred, decided, needs):
        columns = list(sample.columns)[1:]
        if columns == [target_column]:
            return {target_column: np.asarray(targets.labels, dtype=object)[pred.argmax(axis=1)]}
        if set(columns) == set(targets.columns):
            index = {c: k for k, c in enumerate(targets.columns)}
            return {c: pred[:, index[c]] for c in columns}
        raise _format_error(
            list(sample.columns),
            [
                f"'{id_column}, {target_column}' (the class name)",
                f"'{id_column}' plus one probability column per class {targets.columns[:5]}",
            ],
            targets.columns,
        )


@register_task
class Binary(Task):
    name = "binary"
    losses = ("bce", "ce")
    default_metric = "roc_auc"

    def parse(self, frame, comp, labels=None):
        values = _filled(frame, comp.target_column, "label").astype(str)
        if labels is None:
            labels = sorted(values.unique().tolist(), key=natural_key)
            if len(labels) > 2:
                raise TaskError(
                    f"task 'binary' needs two classes in {comp.target_column!r}, found {len(labels)} "
                    f"({labels[:5]}...); use task 'multiclass'"
                )
            if comp.positive_class is not None:
                if comp.positive_class not in labels:
                    raise TaskError(
                        f"competition.positive_class {comp.positive_class!r} is not a value of "
                        f"{comp.target_column!r} (values: {labels})"
                    )
                labels = [c for c in labels if c != comp.positive_class] + [comp.positive_class]
            if len(labels) == 1:
                raise TaskError(
                    f"column {comp.target_column!r} holds one class only ({labels[0]!r}); a binary task needs both"
                )
        unknown = ~values.isin(labels)
        if unknown.any():
            raise TaskError(
                f"label(s) {sorted(values[unknown].unique())[:5]} are not among the training classes {labels}"
            )
        y = (values == labels[1]).to_numpy().astype(np.int64)
        return Targets(y, [labels[1]], list(labels))

    def summary(self, y, columns):
        return {"positive share": f"{y.mean():.3f}"}

    def submission_values(self, sample, id_column, target_column, targets, pred, decided, needs):
        columns = list(sample.columns)[1:]
        p = pred.reshape(-1)
        if columns == [target_column]:
            if needs == "label":
                return {
                    target_column: np.asarray(targets.labels, dtype=object)[(decided.reshape(-1) >= 0.5).astype(int)]
                }
            return {target_column: p}
        if set(columns) == set(targets.labels):
            return {targets.labels[0]: 1.0 - p, targets.labels[1]: p}
        raise _format_error(
            list(sample.columns),
            [
                f"'{id_column}, {target_column}' (the positive probability, or the class name for a label metric)",
                f"'{id_column}, {targets.labels[0]}, {targets.labels[1]}'",
            ],
        )


@register_task
class Multilabel(Task):
    name = "multilabel"
    losses = ("bce",)
    default_metric = "f1_micro"

    def parse(self, frame, comp, labels=None):
        if comp.target_columns:
            columns = list(comp.target_columns)
            values = frame[columns].apply(pd.to_numeric, errors="coerce")
            bad = ~values.isin([0, 1]).all(axis=1).to_numpy()
            if bad.any():
                raise TaskError(f"target columns {columns} must hold 0 or 1; row(s) {_rows(bad)} do not")
            return Targets(values.to_numpy(dtype=np.int64), columns, columns)
        tokens = frame[comp.target_column].fillna("").astype(str).str.split()
        if labels is None:
            labels = sorted({t for row in tokens for t in row}, key=natural_key)
            if len(labels) < 2:
                raise TaskError(
                    f"column {comp.target_column!r} names {len(labels)} label(s); a multilabel task needs "
                    "space-separated labels (e.g. 'clear primary water') or competition.target_columns"
                )
        lookup = {c: i for i, c in enumerate(labels)}
        y = np.zeros((len(frame), len(labels)), dtype=np.int64)
        unknown = set()
        for row, names in enumerate(tokens):
            for name in names:
                if name in lookup:
                    y[row, lookup[name]] = 1
                else:
                    unknown.add(name)
        if unknown:
            raise TaskError(f"label(s) {sorted(unknown)[:5]} are not among the training labels")
        return Targets(y, list(labels), list(labels))

    def strata(self, y, n_splits):
        # the folds use iterative stratification over all labels (folds.make_folds); a subset draw
        # balances each row's rarest label (-1: no label), which keeps every label in the subset
        counts = y.sum(axis=0)
        rarity = np.where(y > 0, counts[None, :], np.iinfo(np.int64).max)
        return np.where(y.any(axis=1), rarity.argmin(axis=1), -1)

    def label_counts(self, targets):
        return pd.Series(targets.y.sum(axis=0), index=targets.labels)

    def summary(self, y, columns):
        shares = y.mean(axis=0) if len(y) else np.zeros(len(columns))
        return {
            "min label share": f"{shares.min():.3f}",
            "max label share": f"{shares.max():.3f}",
            "labels per row": f"{y.sum(axis=1).mean():.2f}",
        }

    def submission_values(self, sample, id_column, target_column, targets, pred, decided, needs):
        columns = list(sample.columns)[1:]
        if columns == [target_column] and not set(columns) & set(targets.columns):
            chosen = decided >= 0.5
            names = np.asarray(targets.labels, dtype=object)
            return {target_column: np.array([" ".join(names[row]) for row in chosen], dtype=object)}
        if set(columns) == set(targets.columns):
            index = {c: k for k, c in enumerate(targets.columns)}
            values = decided.round().astype(np.int64) if needs == "label" else pred
            return {c: values[:, index[c]] for c in columns}
        raise _format_error(
            list(sample.columns),
            [
                f"'{id_column}, {target_column}' (space-separated labels)",
                f"'{id_column}' plus one column per label {targets.columns[:5]}",
            ],
            targets.columns,
        )


def _numbers(frame: pd.DataFrame, column: str, task: str) -> np.ndarray:
    values = _filled(frame, column, "target")
    numbers = pd.to_numeric(values, errors="coerce")
    bad = numbers.isna().to_numpy()
    if bad.any():
        raise TaskError(
            f"task {task!r} needs numbers in {column!r}; row(s) {_rows(bad)} hold {values[bad].tolist()[:3]}"
        )
    return numbers.to_numpy(dtype=np.float64)


def _value_stats(y: np.ndarray, value_range: tuple[float, float]) -> dict:
    """What the value head scales by: the range (BCE) and the mean and spread (MSE, Huber)."""
    std = float(y.std()) if len(y) > 1 and y.std() > 0 else 1.0
    return {
        "value_range": tuple(float(v) for v in value_range),
        "value_mean": float(y.mean()) if len(y) else 0.0,
        "value_std": std,
    }


class _ValueTask(Task):
    """A task whose head predicts one value: regression, and ordinal grades on their scale."""

    losses = ("mse", "huber", "bce")

    @staticmethod
    def _one_target_column(sample: pd.DataFrame, id_column: str, target_column: str, what: str) -> None:
        if list(sample.columns)[1:] != [target_column]:
            raise _format_error(list(sample.columns), [f"'{id_column}, {target_column}' ({what})"])


@register_task
class Regression(_ValueTask):
    name = "regression"
    default_metric = "rmse"

    def parse(self, frame, comp, labels=None):
        y = _numbers(frame, comp.target_column, self.name)
        if comp.target_range:
            lo, hi = comp.target_range
            outside = (y < lo) | (y > hi)
            if outside.any():
                raise TaskError(
                    f"target(s) outside competition.target_range {list(comp.target_range)} at row(s) {_rows(outside)}"
                )
        value_range = comp.target_range or ((y.min(), y.max()) if len(y) else (0.0, 1.0))
        stats = _value_stats(y, value_range)
        return Targets(y, [comp.target_column], [], **stats)

    def strata(self, y, n_splits):
        # quantile bins of the target, so every fold spans its range (about 10 rows per bin and fold at least)
        n_bins = int(np.clip(len(y) // (10 * n_splits), 2, 20))
        edges = np.unique(np.quantile(y, np.linspace(0, 1, n_bins + 1)[1:-1]))
        return np.searchsorted(edges, y, side="right")

    def summary(self, y, columns):
        return {"target mean": f"{y.mean():.3f}", "target std": f"{y.std():.3f}"}

    def label_counts(self, targets):
        return None  # a continuous target has no classes to count

    def submission_values(self, sample, id_column, target_column, targets, pred, decided, needs):
        self._one_target_column(sample, id_column, target_column, "the predicted value")
        return {target_column: pred.reshape(-1)}


@register_task
class Ordinal(_ValueTask):
    name = "ordinal"
    default_metric = "qwk"

    def parse(self, frame, comp, labels=None):
        numbers = _numbers(frame, comp.target_column, self.name)
        if not np.all(numbers == np.round(numbers)):
            bad = numbers != np.round(numbers)
            raise TaskError(
                f"task 'ordinal' needs integer grades in {comp.target_column!r}; row(s) {_rows(bad)} are not"
            )
        grades = numbers.astype(np.int64)
        if labels is None:
            # every grade between the lowest and the highest, seen or not: kappa's weights need the full scale
            labels = [str(g) for g in range(int(grades.min()), int(grades.max()) + 1)] if len(grades) else ["0"]
        low = int(labels[0])
        y = grades - low
        outside = (y < 0) | (y >= len(labels))
        if outside.any():
            raise TaskError(
                f"grade(s) {sorted(set(grades[outside].tolist()))[:5]} are outside the training grades "
                f"{labels[0]}..{labels[-1]}"
            )
        # a target_range is given on the grade scale: shifted to the index scale the head predicts on
        value_range = [v - low for v in comp.target_range] if comp.target_range else (0, len(labels) - 1)
        return Targets(y, [comp.target_column], list(labels), **_value_stats(y.astype(np.float64), value_range))

    def summary(self, y, columns):
        return {"mean grade": f"{y.mean():.3f}", "grade std": f"{y.std():.3f}"}

    def submission_values(self, sample, id_column, target_column, targets, pred, decided, needs):
        self._one_target_column(sample, id_column, target_column, "the grade")
        if needs == "value":
            return {target_column: pred.reshape(-1) + int(targets.labels[0])}
        grades = np.clip(np.floor(decided.reshape(-1) + 0.5), 0, len(targets.labels) - 1).astype(np.int64)
        return {target_column: np.asarray(targets.labels, dtype=object)[grades]}


def resolve_loss(task: str, loss: str) -> str:
    """``train.loss`` for ``task``: ``"auto"`` is the task's default.

    Raises
    ------
    TaskError
        When the loss does not apply to the task.
    """
    allowed = get_task(task).losses
    if loss == "auto":
        return allowed[0]
    if loss not in allowed:
        raise TaskError(f"train.loss {loss!r} does not apply to task {task!r}; choose one of {['auto', *allowed]}")
    return loss


def submission_frame(sample: pd.DataFrame, id_column: str, target_column: str, task: str, targets: Targets,
                     pred: np.ndarray, decided: np.ndarray | None = None, needs: str = "proba") -> pd.DataFrame:
    """A submission in the sample submission's format: its ids in its order, its columns.

    The sample decides the format; ``needs`` (the metric's) picks between a label and
    a probability where one column could hold either (binary).

    Parameters
    ----------
    sample : DataFrame
    id_column, target_column : str
    task : str
    targets : Targets
        From train.csv: column and label names.
    pred : ndarray of shape (n_test, n_columns)
        Probabilities or values.
    decided : ndarray, optional
        ``pred`` after the tuned decision (thresholds, cut points); ``pred`` when None.
    needs : {"proba", "label", "value"}

    Raises
    ------
    TaskError
        If the sample's columns fit no format of the task.
    """
    decided = pred if decided is None else decided
    if list(sample.columns)[:1] != [id_column]:
        raise TaskError(f"sample submission's first column must be the id column {id_column!r}; "
                        f"got {list(sample.columns)[:3]}")
    values = get_task(task).submission_values(sample, id_column, target_column, targets, np.asarray(pred),
                                              np.asarray(decided), needs)
    out = pd.DataFrame({id_column: sample[id_column].to_numpy()})
    for column in list(sample.columns)[1:]:
        out[column] = values[column]
    return out
