"""Metric registry: each metric knows its direction, the prediction it needs and its tasks.

Metrics are written in plain, vectorised NumPy (no per-call input validation)
because the ensemble stage scores thousands of candidate blends;
``tests/test_metrics.py`` checks every one against scikit-learn's value for
every task it serves.

Prediction conventions
----------------------
==========  ==============================  ==========================================
task        ``y_true``                      ``y_pred``
==========  ==============================  ==========================================
multiclass  int ``(n,)`` class index        ``(n, C)`` probabilities, rows sum to 1
binary      int ``(n,)`` in {0, 1}          ``(n,)`` or ``(n, 1)``: P(positive)
multilabel  int ``(n, L)`` 0/1 indicator    ``(n, L)`` independent probabilities
regression  float ``(n,)`` or ``(n, 1)``    ``(n,)`` or ``(n, 1)`` values
ordinal     int ``(n,)`` grade 0..K-1       ``(n,)`` or ``(n, 1)`` values on the grade scale
==========  ==============================  ==========================================

One metric name serves several tasks, and a metric only sees arrays, so it
tells the tasks apart by shape: ``y_true`` 2-D with more than one column is
multilabel; otherwise a ``y_pred`` with more than one column is multiclass;
otherwise (1-D or one-column ``y_pred``) it is binary, ordinal or regression.
A one-column ``y_true`` is read as 1-D (a single-label multilabel problem is a
binary one).

Default decisions of label metrics
----------------------------------
* multiclass: the arg-max class.
* binary and multilabel: positive when ``p >= 0.5``.
* ordinal: ``floor(value + 0.5)`` (round half up), clipped below at grade 0.
  Binary probabilities go through the same rule, and for ``p`` in [0, 1] it is
  exactly ``p >= 0.5`` (``np.rint`` would send 0.5 to 0, unlike the
  threshold). There is no upper clip: a metric does not know the number of
  grades, and clipping at ``y_true.max()`` would let the labels being scored
  shape the predictions (a fold without the top grade would score
  optimistically). A prediction above the top grade is scored as that wrong
  grade; :class:`pipeline.decision.Cutpoints` knows the number of grades and
  never predicts one out of range.

:mod:`pipeline.decision` fits better decisions (thresholds, cut points) on
out-of-fold predictions; its decided predictions score under these same rules.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError

_EPS = 1e-15

#: Task -> kind of prediction its models output, which decides how predictions are validated, blended and
#: stored: "simplex" (rows sum to 1), "probability" (independent probabilities in [0, 1]), "value" (real
#: numbers). Kept here, the torch-free base of the package, so blend and tasks read one table.
TASK_OUTPUT: dict[str, str] = {
    "multiclass": "simplex",
    "binary": "probability",
    "multilabel": "probability",
    "regression": "value",
    "ordinal": "value",
}
#: the task names a metric can declare
TASKS: tuple[str, ...] = tuple(TASK_OUTPUT)
#: what a metric reads from a prediction
NEEDS: tuple[str, ...] = ("proba", "label", "value")


def _check_needs(needs) -> str:
    if needs not in NEEDS:
        raise ValueError(f"needs={needs!r} is not one of {', '.join(map(repr, NEEDS))}: 'proba' for metrics of "
                         "probabilities, 'label' for metrics of decided labels, 'value' for regression values")
    return needs


def _check_tasks(tasks) -> tuple[str, ...]:
    # a lone string would otherwise iterate as characters
    if isinstance(tasks, str):
        tasks = (tasks,)
    try:
        tasks = tuple(tasks)
    except TypeError:
        raise ValueError(f"tasks={tasks!r} must be a list of task names from {', '.join(TASKS)}") from None
    if not tasks:
        raise ValueError(f"tasks is empty; name the tasks the metric applies to, from {', '.join(TASKS)}")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {', '.join(map(repr, unknown))} in tasks={list(tasks)!r}; "
                         f"tasks are {', '.join(TASKS)}")
    return tasks


@dataclass(frozen=True)
class Metric:
    """A scoring function with its direction.

    Parameters
    ----------
    name : str
        Registry key, as written in a competition config.
    fn : callable
        ``fn(y_true, y_pred) -> float`` on the task shapes of the module docstring.
    greater_is_better : bool
        Direction of the metric.
    needs : {"proba", "label", "value"}
        What the metric reads from the prediction: probabilities; labels, which
        it decides itself with the module's default decisions (so decided
        predictions from :mod:`pipeline.decision` score unchanged); or
        regression values.
    tasks : tuple of str
        Keyword-only. The tasks the metric applies to, from :data:`TASKS`.
    """

    name: str
    fn: Callable[[np.ndarray, np.ndarray], float]
    greater_is_better: bool
    needs: str = "proba"
    tasks: tuple[str, ...] = field(default=(), kw_only=True)

    def __post_init__(self):
        _check_needs(self.needs)
        # frozen: normalise a list of tasks to a tuple through object.__setattr__
        object.__setattr__(self, "tasks", _check_tasks(self.tasks))

    def __call__(self, y_true: np.ndarray, y_pred: np.ndarray) -> float:
        return float(self.fn(np.asarray(y_true), np.asarray(y_pred)))

    score = __call__

    def loss(self, y_true: np.ndarray, y_pred: np.ndarray) -> float:
        """The score as a quantity to minimise (sign-flipped when higher is better)."""
        value = self(y_true, y_pred)
        return -value if self.greater_is_better else value

    def is_better(self, a: float, b: float) -> bool:
        """True when score ``a`` beats score ``b``."""
        return a > b if self.greater_is_better else a < b

    @property
    def worst(self) -> float:
        return -np.inf if self.greater_is_better else np.inf


# ---------------------------------------------------------------- shape dispatch

def _is_multilabel(y_true: np.ndarray) -> bool:
    return y_true.ndim == 2 and y_true.shape[1] > 1


def _is_multiclass(y_true: np.ndarray, y_pred: np.ndarray) -> bool:
    return not _is_multilabel(y_true) and y_pred.ndim == 2 and y_pred.shape[1] > 1


def _round_half_up(values: np.ndarray) -> np.ndarray:
    """floor(x + 0.5) computed as floor(x) + (frac >= 0.5).

    ``x - floor(x)`` is exact in floating point while ``x + 0.5`` can round up
    (0.49999999999999994 + 0.5 == 1.0), so on [0, 1] this is exactly ``x >= 0.5``.
    """
    whole = np.floor(values)
    return whole + (values - whole >= 0.5)


def _grades(y_pred: np.ndarray) -> np.ndarray:
    """Binary/ordinal default decision of a 1-D or one-column prediction."""
    return np.maximum(_round_half_up(y_pred.reshape(-1)), 0).astype(np.int64)


def _class_labels(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(y, labels) as 1-D ints for single-label tasks: arg-max or the default decision."""
    y = y_true.reshape(-1).astype(np.int64)
    if y_pred.ndim == 2 and y_pred.shape[1] > 1:
        return y, y_pred.argmax(axis=1)
    return y, _grades(y_pred)


def _one_hot(y: np.ndarray, n_classes: int) -> np.ndarray:
    out = np.zeros((len(y), n_classes), dtype=bool)
    out[np.arange(len(y)), y] = True
    return out


def _columns(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(Y, S) as (n, L) indicator and score matrices: multilabel as is, multiclass
    one-vs-rest, binary as one column."""
    if _is_multilabel(y_true):
        return y_true.astype(bool), y_pred
    if _is_multiclass(y_true, y_pred):
        return _one_hot(y_true.reshape(-1).astype(np.int64), y_pred.shape[1]), y_pred
    return (y_true.reshape(-1, 1) == 1), y_pred.reshape(-1, 1)


def _tie_runs(Y: np.ndarray, S: np.ndarray):
    """Sort each score column ascending and cut it into runs of tied scores.

    Works on the transposed, contiguous ``(L, n)`` arrays flattened to one
    vector (a run also ends at a column's end), so every column is handled by
    the same few NumPy calls, with no Python loop over columns.

    Returns
    -------
    column, first, last : ndarray of shape (n_runs,)
        Each run's column and its first/last sorted position in that column.
    positives : ndarray of shape (n_runs,)
        Positives inside each run.
    n_pos : ndarray of shape (L,)
        Positives per column.
    """
    n, n_columns = S.shape
    scores = np.ascontiguousarray(S.T)
    order = np.argsort(scores, axis=1)  # the order inside a run never matters here
    s = np.take_along_axis(scores, order, axis=1).ravel()
    hits = np.take_along_axis(np.ascontiguousarray(Y.T, dtype=np.int64), order, axis=1).ravel()
    new_run = np.empty(len(s), dtype=bool)
    new_run[0] = True
    np.not_equal(s[1:], s[:-1], out=new_run[1:])
    new_run[::n] = True
    starts = np.flatnonzero(new_run)
    column = starts // n
    first = starts - column * n
    last = np.append(starts[1:], len(s)) - 1 - column * n
    positives = np.add.reduceat(hits, starts)
    n_pos = np.bincount(column, weights=positives, minlength=n_columns)
    return column, first, last, positives, n_pos


def _column_auc(Y: np.ndarray, S: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC per column with average ranks for ties (sklearn's roc_auc_score);
    NaN for a column holding one class only (sklearn raises there)."""
    column, first, last, positives, n_pos = _tie_runs(Y, S)
    # every member of a run gets the run's average 1-based rank
    rank_sum = np.bincount(column, weights=positives * ((first + last) / 2.0 + 1.0), minlength=len(n_pos))
    n_neg = S.shape[0] - n_pos
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    return np.where((n_pos == 0) | (n_neg == 0), np.nan, auc)


def _column_average_precision(Y: np.ndarray, S: np.ndarray) -> np.ndarray:
    """Step-wise average precision per column, as sklearn's average_precision_score.

    sklearn sums ``(R_k - R_{k-1}) * P_k`` over the distinct scores taken as
    thresholds ``score >= s_k``, so a run of tied scores is one operating
    point: its recall step is the run's positives over all positives, and
    ``P_k`` counts the whole run. A column without positives scores 0, as in
    sklearn.
    """
    column, first, _, positives, n_pos = _tie_runs(Y, S)
    # positives sorted before each run, within its column (sorted ascending:
    # the rows at or above the threshold are the run and everything after it)
    before = np.cumsum(positives) - positives
    before -= before[first == 0][column]
    precision = (n_pos[column] - before) / (S.shape[0] - first)
    total = np.bincount(column, weights=positives * precision, minlength=len(n_pos))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n_pos > 0, total / n_pos, 0.0)


def _f1_per_class(y: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """F1 per class of single-label predictions; NaN for a class absent from both."""
    n_classes = max(n_classes, int(y.max(initial=0)) + 1, int(labels.max(initial=0)) + 1)
    tp = np.bincount(y[y == labels], minlength=n_classes)
    denom = np.bincount(y, minlength=n_classes) + np.bincount(labels, minlength=n_classes)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > 0, 2.0 * tp / denom, np.nan)


# ---------------------------------------------------------------- metrics

def _accuracy(y_true, y_pred):
    if _is_multilabel(y_true):
        # exact match of the whole label set (sklearn's subset accuracy)
        return np.mean(np.all((y_pred >= 0.5) == (y_true == 1), axis=1))
    y, labels = _class_labels(y_true, y_pred)
    return np.mean(labels == y)


def _log_loss(y_true, y_pred):
    if _is_multilabel(y_true):
        # mean over labels of the per-label binary log loss = mean over all cells
        p = np.clip(y_pred, _EPS, 1 - _EPS)
        return -np.mean(np.where(y_true == 1, np.log(p), np.log(1 - p)))
    y = y_true.reshape(-1)
    if not _is_multiclass(y_true, y_pred):
        p = np.clip(y_pred.reshape(-1), _EPS, 1 - _EPS)
        return -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    p = y_pred / y_pred.sum(axis=1, keepdims=True)
    picked = p[np.arange(len(y)), y.astype(np.int64)]
    return -np.mean(np.log(np.clip(picked, _EPS, 1.0)))


def _roc_auc(y_true, y_pred):
    # binary: the one column; multiclass: macro one-vs-rest; multilabel: macro over labels
    return np.mean(_column_auc(*_columns(y_true, y_pred)))


def _average_precision(y_true, y_pred):
    return np.mean(_column_average_precision(*_columns(y_true, y_pred)))


def _f1_binary(y_true, y_pred):
    labels = _grades(y_pred) == 1
    positive = y_true.reshape(-1) == 1
    denom = labels.sum() + positive.sum()
    return 0.0 if denom == 0 else 2.0 * np.sum(labels & positive) / denom


def _f1_micro(y_true, y_pred):
    if _is_multilabel(y_true):
        decided = y_pred >= 0.5
        truth = y_true == 1
        denom = decided.sum() + truth.sum()
        return 0.0 if denom == 0 else 2.0 * np.sum(decided & truth) / denom
    # single-label micro F1 counts every wrong row once as FP and once as FN: it is accuracy
    y, labels = _class_labels(y_true, y_pred)
    return np.mean(labels == y)


def _f1_macro(y_true, y_pred):
    if _is_multilabel(y_true):
        decided = y_pred >= 0.5
        truth = y_true == 1
        tp = np.sum(decided & truth, axis=0)
        denom = decided.sum(axis=0) + truth.sum(axis=0)
        # a label with neither true nor predicted positives scores 0 (sklearn's zero_division default)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.mean(np.where(denom > 0, 2.0 * tp / denom, 0.0))
    y, labels = _class_labels(y_true, y_pred)
    n_classes = y_pred.shape[1] if _is_multiclass(y_true, y_pred) else 2
    # sklearn averages over the classes present in y_true or the predictions
    return np.nanmean(_f1_per_class(y, labels, n_classes))


def _qwk(y_true, y_pred):
    """Quadratic weighted kappa with weights (i - j)**2 on the grade values.

    With O the confusion matrix and E the outer product of its margins over n,
    sum(W*O) = sum((y - l)**2) and sum(W*E) = sum(y**2) + sum(l**2) - 2 sum(y) sum(l) / n,
    so no K x K matrix is built. Equals sklearn's cohen_kappa_score(weights="quadratic",
    labels=range(K)); without ``labels`` sklearn weights by position among the labels
    present, which only differs when a grade inside the range is absent from both.
    """
    y, labels = _class_labels(y_true, y_pred)
    y = y.astype(np.float64)
    labels = labels.astype(np.float64)
    observed = np.sum((y - labels) ** 2)
    expected = np.sum(y**2) + np.sum(labels**2) - 2.0 * y.sum() * labels.sum() / len(y)
    if expected == 0:
        return np.nan  # one grade everywhere on both sides: kappa is undefined (sklearn: nan)
    return 1.0 - observed / expected


def _rmse(y_true, y_pred):
    return np.sqrt(np.mean((y_true.reshape(-1) - y_pred.reshape(-1)) ** 2))


def _mae(y_true, y_pred):
    return np.mean(np.abs(y_true.reshape(-1) - y_pred.reshape(-1)))


# ---------------------------------------------------------------- registry

METRICS: dict[str, Metric] = {}
# name -> where a user metric came from ("/abs/file.py:func" or "package.module:func")
_USER_SOURCES: dict[str, str] = {}


def register_metric(metric: Metric) -> Metric:
    """Add a metric to the registry; the name must be new.

    Parameters
    ----------
    metric : Metric

    Returns
    -------
    Metric
        ``metric``, so the call can wrap a definition.
    """
    if metric.name in METRICS:
        raise ValueError(f"metric {metric.name!r} is already registered")
    METRICS[metric.name] = metric
    return metric


register_metric(Metric("accuracy", _accuracy, True, "label", tasks=("multiclass", "binary", "multilabel", "ordinal")))
register_metric(Metric("log_loss", _log_loss, False, "proba", tasks=("multiclass", "binary", "multilabel")))
register_metric(Metric("roc_auc", _roc_auc, True, "proba", tasks=("binary", "multiclass", "multilabel")))
register_metric(Metric("f1", _f1_binary, True, "label", tasks=("binary",)))
register_metric(Metric("f1_micro", _f1_micro, True, "label", tasks=("multiclass", "binary", "multilabel")))
register_metric(Metric("f1_macro", _f1_macro, True, "label", tasks=("multiclass", "binary", "multilabel")))
register_metric(Metric("map", _average_precision, True, "proba", tasks=("multilabel", "binary")))
register_metric(Metric("qwk", _qwk, True, "label", tasks=("ordinal", "multiclass")))
register_metric(Metric("rmse", _rmse, False, "value", tasks=("regression", "ordinal")))
register_metric(Metric("mae", _mae, False, "value", tasks=("regression", "ordinal")))

#: names of the metrics that ship with the pipeline (user metrics may not replace them)
BUILTIN_METRICS: tuple[str, ...] = tuple(METRICS)


def get_metric(name: str) -> Metric:
    """Look a metric up by name.

    Raises
    ------
    KeyError
        With the list of known metrics when ``name`` is not registered.
    """
    try:
        return METRICS[name]
    except KeyError:
        raise KeyError(f"unknown metric {name!r}; known metrics: {', '.join(sorted(METRICS))}") from None


def _check_task(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; tasks are {', '.join(TASKS)}")
    return task


def metrics_for(task: str) -> list[str]:
    """Names of the registered metrics that apply to ``task``, sorted.

    Parameters
    ----------
    task : str
        One of :data:`TASKS`.

    Returns
    -------
    list of str
    """
    _check_task(task)
    return sorted(name for name, metric in METRICS.items() if task in metric.tasks)


def check_metric_task(metric_name: str, task: str) -> Metric:
    """Check that a registered metric applies to a task.

    Parameters
    ----------
    metric_name : str
    task : str

    Returns
    -------
    Metric
        The metric, for convenience.

    Raises
    ------
    KeyError
        When the metric is not registered (see :func:`get_metric`).
    ValueError
        When the task is unknown, or the metric does not apply to it; the
        message lists the metrics that do.
    """
    _check_task(task)
    metric = get_metric(metric_name)
    if task not in metric.tasks:
        raise ValueError(f"metric {metric_name!r} does not apply to task {task!r}; "
                         f"metrics for {task}: {', '.join(metrics_for(task))}")
    return metric


# ---------------------------------------------------------------- user metrics

class UserMetricError(PipelineError, ValueError):
    """A user metric cannot be loaded; the message names the bad value and the fix."""


_SPEC_HELP = "write it as 'path/to/file.py:function' or 'package.module:function'"


def _split_spec(function) -> tuple[str, str]:
    if not isinstance(function, str) or ":" not in function:
        raise UserMetricError(f"function={function!r} does not name a function; {_SPEC_HELP}")
    # split at the last colon: a Windows path has one of its own ("C:\\...")
    where, attr = function.rsplit(":", 1)
    if not where or not attr.isidentifier():
        raise UserMetricError(f"function={function!r} does not name a function; {_SPEC_HELP}")
    return where, attr


def _is_file(where: str) -> bool:
    return where.endswith(".py") or "/" in where or "\\" in where


def _load_file_module(path: Path, function: str):
    if not path.is_file():
        raise UserMetricError(f"metric file {str(path)!r} (from function={function!r}) does not exist; "
                              "give a path relative to the config's directory, or an absolute one")
    # one module name per file: loading a config again reuses the module instead of
    # re-running the file, like a normal import would
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:12]
    module_name = f"_pipeline_user_metric_{path.stem}_{digest}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise UserMetricError(f"cannot import {str(path)!r} as Python (from function={function!r}); "
                              "point function at a .py file")
    module = importlib.util.module_from_spec(spec)
    # registered before running so the file's own dataclasses/pickling can find it
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise UserMetricError(f"importing metric file {str(path)!r} failed with "
                              f"{type(exc).__name__}: {exc}; fix the file") from exc
    return module


def _load_package_module(where: str, function: str):
    try:
        return importlib.import_module(where)
    except Exception as exc:
        raise UserMetricError(f"cannot import module {where!r} (from function={function!r}): "
                              f"{type(exc).__name__}: {exc}; install it or put it on PYTHONPATH, "
                              "or name a file as 'path/to/file.py:function'") from exc


def load_user_metric(name: str, function: str, greater_is_better: bool, needs: str, tasks,
                     base_dir=None) -> Metric:
    """Import a metric of the user's own, wrap it as a :class:`Metric` and register it.

    Parameters
    ----------
    name : str
        Registry key the config refers to. A built-in name is refused unless
        ``function`` is that very built-in function.
    function : str
        ``"path/to/file.py:func"`` (relative to ``base_dir`` unless absolute) or
        ``"package.module:func"``. ``func(y_true, y_pred) -> float`` receives
        the task shapes of the module docstring.
    greater_is_better : bool
    needs : {"proba", "label", "value"}
    tasks : sequence of str or str
        The tasks the metric applies to.
    base_dir : str or Path, optional
        Directory that relative file paths start from (the config's directory);
        the working directory when None.

    Returns
    -------
    Metric
        The registered metric. Loading the same definition again returns the
        registered one (configs are loaded several times per process); a new
        definition of a user metric name replaces the old one.

    Raises
    ------
    UserMetricError (a ValueError)
        Bad name, ``function`` spelling, ``needs``, ``tasks`` or
        ``greater_is_better``; missing file; module that cannot be imported;
        missing or non-callable attribute; a built-in name.
    """
    if not isinstance(name, str) or not name.strip():
        raise UserMetricError(f"metric name {name!r} must be a non-empty string")
    if not isinstance(greater_is_better, (bool, np.bool_)):
        raise UserMetricError(f"greater_is_better={greater_is_better!r} for metric {name!r} must be true or false")
    try:
        needs = _check_needs(needs)
        tasks = _check_tasks(tasks)
    except ValueError as exc:
        raise UserMetricError(f"metric {name!r}: {exc}") from None
    where, attr = _split_spec(function)
    if _is_file(where):
        path = Path(where)
        if not path.is_absolute():
            path = Path(base_dir if base_dir is not None else ".") / path
        path = path.resolve()
        source = f"{path}:{attr}"
    else:
        source = f"{where}:{attr}"

    existing = METRICS.get(name)
    same_settings = existing is not None and (existing.greater_is_better, existing.needs, existing.tasks) == (
        bool(greater_is_better), needs, tasks)
    if same_settings and _USER_SOURCES.get(name) == source:
        return existing  # idempotent: no re-import, the same object every time

    builtin_error = UserMetricError(f"metric name {name!r} is a built-in metric; give your metric another name "
                                    f"(built-ins: {', '.join(BUILTIN_METRICS)})")
    if name in BUILTIN_METRICS and _is_file(where):
        raise builtin_error  # a file's function can never be the built-in one: fail before running it
    module = _load_file_module(path, function) if _is_file(where) else _load_package_module(where, function)
    if not hasattr(module, attr):
        public = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
        raise UserMetricError(f"{where!r} has no attribute {attr!r} (from function={function!r}); "
                              f"callables there: {', '.join(public) or 'none'}")
    fn = getattr(module, attr)
    if not callable(fn):
        raise UserMetricError(f"{function!r} is a {type(fn).__name__}, not a function; "
                              "point function at def metric(y_true, y_pred) -> float")

    if name in BUILTIN_METRICS:
        if same_settings and existing.fn is fn:
            return existing
        raise builtin_error
    metric = Metric(name, fn, bool(greater_is_better), needs, tasks=tasks)
    # a user name may be redefined: a later config (or an edited file in a new
    # process) wins, as the config is the source of truth
    METRICS[name] = metric
    _USER_SOURCES[name] = source
    return metric
