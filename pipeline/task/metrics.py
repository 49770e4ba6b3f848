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
  grade; :class:`pipeline.task.decision.Cutpoints` knows the number of grades and
  never predicts one out of range.

:mod:`pipeline.task.decision` fits better decisions (thresholds, cut points) on
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

from pipeline.core.errors import PipelineError
from pipeline.task import scores

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
        predictions from :mod:`pipeline.task.decision` score unchanged); or
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


register_metric(Metric("accuracy", scores.accuracy, True, "label",
                       tasks=("multiclass", "binary", "multilabel", "ordinal")))
register_metric(Metric("log_loss", scores.log_loss, False, "proba", tasks=("multiclass", "binary", "multilabel")))
register_metric(Metric("roc_auc", scores.roc_auc, True, "proba", tasks=("binary", "multiclass", "multilabel")))
register_metric(Metric("f1", scores.f1_binary, True, "label", tasks=("binary",)))
register_metric(Metric("f1_micro", scores.f1_micro, True, "label", tasks=("multiclass", "binary", "multilabel")))
register_metric(Metric("f1_macro", scores.f1_macro, True, "label", tasks=("multiclass", "binary", "multilabel")))
register_metric(Metric("map", scores.average_precision, True, "proba", tasks=("multilabel", "binary")))
register_metric(Metric("qwk", scores.qwk, True, "label", tasks=("ordinal", "multiclass")))
register_metric(Metric("rmse", scores.rmse, False, "value", tasks=("regression", "ordinal")))
register_metric(Metric("mae", scores.mae, False, "value", tasks=("regression", "ordinal")))

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
        raise ValueError(
            f"metric {metric_name!r} does not apply to task {task!r}; "
            f"metrics for {task}: {', '.join(metrics_for(task))}"
        )
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
        raise UserMetricError(
            f"metric file {str(path)!r} (from function={function!r}) does not exist; "
            "give a path relative to the config's directory, or an absolute one"
        )
    # one module name per file: loading a config again reuses the module instead of
    # re-running the file, like a normal import would
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:12]
    module_name = f"_pipeline_user_metric_{path.stem}_{digest}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise UserMetricError(
            f"cannot import {str(path)!r} as Python (from function={function!r}); point function at a .py file"
        )
    module = importlib.util.module_from_spec(spec)
    # registered before running so the file's own dataclasses/pickling can find it
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise UserMetricError(
            f"importing metric file {str(path)!r} failed with {type(exc).__name__}: {exc}; fix the file"
        ) from exc
    return module


def _load_package_module(where: str, function: str):
    try:
        return importlib.import_module(where)
    except Exception as exc:
        raise UserMetricError(
            f"cannot import module {where!r} (from function={function!r}): "
            f"{type(exc).__name__}: {exc}; install it or put it on PYTHONPATH, "
            "or name a file as 'path/to/file.py:function'"
        ) from exc


def load_user_metric(name: str, function: str, greater_is_better: bool, needs: str, tasks, base_dir=None) -> Metric:
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
        bool(greater_is_better),
        needs,
        tasks,
    )
    if same_settings and _USER_SOURCES.get(name) == source:
        return existing  # idempotent: no re-import, the same object every time

    builtin_error = UserMetricError(
        f"metric name {name!r} is a built-in metric; give your metric another name "
        f"(built-ins: {', '.join(BUILTIN_METRICS)})"
    )
    if name in BUILTIN_METRICS and _is_file(where):
        raise builtin_error  # a file's function can never be the built-in one: fail before running it
    module = _load_file_module(path, function) if _is_file(where) else _load_package_module(where, function)
    if not hasattr(module, attr):
        public = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
        raise UserMetricError(
            f"{where!r} has no attribute {attr!r} (from function={function!r}); "
            f"callables there: {', '.join(public) or 'none'}"
        )
    fn = getattr(module, attr)
    if not callable(fn):
        raise UserMetricError(
            f"{function!r} is a {type(fn).__name__}, not a function; "
            "point function at def metric(y_true, y_pred) -> float"
        )

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
