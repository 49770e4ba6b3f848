"""Decision rules fitted on out-of-fold predictions.

A label metric (``needs == "label"``) scores predictions through a default
decision: ``p >= 0.5`` for binary and multilabel, round half up for ordinal
(see :mod:`pipeline.task.metrics`). Those defaults are rarely the best: F1 on a rare
label wants a lower threshold, and a regression head trained on grades tends
to shrink towards the mean, so rounding under-uses the extreme grades. The
rules here tune the decision on out-of-fold predictions:

* :class:`Thresholds` - one threshold per column (binary, multilabel);
* :class:`Cutpoints` - K-1 increasing cut points on the value scale (ordinal).

Both search a fixed grid by coordinate ascent on the metric itself, so any
label metric works, the user's own included. ``apply`` returns decided
predictions (0.0/1.0, or grade numbers as floats) in the prediction's shape,
which the metric scores unchanged: ``metric(y, rule.apply(pred))`` is the tuned
score.

A rule fitted and scored on the same rows flatters itself;
:func:`nested_decision` fits it on the other folds for each fold, which gives
the honest score of "tune the decision, then predict".
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pipeline.core.splits import iter_splits
from pipeline.task.metrics import Metric, check_metric_task, get_metric, metrics_for

#: thresholds searched by default: a fixed grid, nothing taken from the data
DEFAULT_GRID = np.round(np.arange(1, 50) * 0.02, 2)  # 0.02, 0.04, ..., 0.98

# a score must beat the best by more than this to move a threshold: float noise
# in the metric must not break the "prefer the default" tie rule
_TOL = 1e-12


def _as_metric(metric) -> Metric:
    return get_metric(metric) if isinstance(metric, str) else metric


def _check_finite(pred: np.ndarray, who: str) -> None:
    if not np.all(np.isfinite(pred)):
        bad = np.flatnonzero(~np.isfinite(pred).reshape(len(pred), -1).all(axis=1))
        raise ValueError(f"{who}: pred holds NaN or infinite values in row(s) {bad[:5].tolist()}; "
                         "fix or drop those rows before fitting a decision")


class Decision:
    """A decision rule: fitted on (y, pred), it turns predictions into decided ones.

    Subclasses implement :meth:`fit`, :meth:`apply` and :attr:`params`.
    After :meth:`fit`, ``score_`` holds the metric of the tuned decisions on
    the fitting rows (in-sample: optimistic, see :func:`nested_decision`).
    """

    score_: float

    def fit(self, y, pred, metric) -> Decision:
        """Tune the rule on out-of-fold predictions.

        Parameters
        ----------
        y : ndarray
            Targets in the task's shape.
        pred : ndarray
            Out-of-fold predictions in the task's shape.
        metric : Metric or str
            The label metric to maximise (or minimise, per its direction).

        Returns
        -------
        self
        """
        raise NotImplementedError

    def apply(self, pred) -> np.ndarray:
        """Decided predictions, the same shape as ``pred``, as floats.

        Parameters
        ----------
        pred : ndarray

        Returns
        -------
        ndarray
        """
        raise NotImplementedError

    @property
    def params(self) -> dict:
        """The fitted rule as a JSON-able dict, for reports."""
        raise NotImplementedError

    def _check_fitted(self, attribute: str) -> None:
        if not hasattr(self, attribute):
            raise RuntimeError(f"this {type(self).__name__} is not fitted yet; call fit(y, pred, metric) first")


def _ordered_candidates(values: np.ndarray, prefer: float) -> np.ndarray:
    """``values`` sorted by distance from ``prefer`` (lower value first on equal distance):
    taking the first best in this order makes ties resolve towards ``prefer``."""
    values = np.asarray(values, dtype=np.float64)
    return values[np.lexsort((values, np.abs(values - prefer)))]


class Thresholds(Decision):
    """One probability threshold per column: positive when ``p >= threshold``.

    For binary (one column; ``pred`` of shape ``(n,)`` or ``(n, 1)``) and
    multilabel (``(n, L)``) predictions. Fitted by coordinate ascent on the
    metric: each pass visits the columns in order and sets each to its best
    grid value with the other columns held, until a pass changes nothing or
    ``n_passes`` are done. Of equally good thresholds the one nearest 0.5 wins,
    so a column whose threshold does not matter keeps the default.

    Parameters
    ----------
    grid : array-like of float, optional
        Candidate thresholds, fixed in advance (default :data:`DEFAULT_GRID`,
        0.02 to 0.98 by 0.02). Candidates taken from the predictions themselves
        would fit the fold's noise.
    n_passes : int, default 2
        Passes over the columns (the columns interact through the metric, as
        in micro-F1 or subset accuracy).

    Attributes
    ----------
    thresholds_ : ndarray of shape (n_columns,)
    score_ : float
    """

    def __init__(self, grid=None, n_passes: int = 2):
        grid = DEFAULT_GRID if grid is None else np.asarray(grid, dtype=np.float64).reshape(-1)
        if len(grid) == 0 or not np.all(np.isfinite(grid)):
            raise ValueError(f"grid={grid!r} must hold finite thresholds, e.g. np.arange(0.02, 0.99, 0.02)")
        if int(n_passes) < 1:
            raise ValueError(f"n_passes={n_passes!r} must be at least 1")
        self.grid = grid
        self.n_passes = int(n_passes)

    @staticmethod
    def _columns(pred: np.ndarray, who: str) -> np.ndarray:
        if pred.ndim == 1:
            return pred[:, None]
        if pred.ndim == 2:
            return pred
        raise ValueError(f"{who}: pred has shape {pred.shape}; Thresholds takes (n,) or (n, 1) binary "
                         "or (n, L) multilabel probabilities")

    def fit(self, y, pred, metric) -> Thresholds:
        metric = _as_metric(metric)
        y, pred = np.asarray(y), np.asarray(pred, dtype=np.float64)
        P = self._columns(pred, "Thresholds.fit")
        if len(y) != len(P):
            raise ValueError(f"Thresholds.fit: y has {len(y)} rows but pred has {len(P)}; pass the same rows")
        if y.ndim == 2 and y.shape[1] > 1 and y.shape != P.shape:
            raise ValueError(f"Thresholds.fit: multilabel y has shape {y.shape} but pred {P.shape}; "
                             "one prediction column per label")
        _check_finite(P, "Thresholds.fit")
        candidates = _ordered_candidates(self.grid, prefer=0.5)
        thresholds = np.full(P.shape[1], 0.5)
        decided = (P >= thresholds).astype(np.float64)  # updated one column at a time

        def loss() -> float:
            return metric.loss(y, decided.reshape(pred.shape))

        best_loss = loss()
        for _ in range(self.n_passes):
            changed = False
            for j in range(P.shape[1]):
                column_best, column_loss = thresholds[j], np.inf
                for t in candidates:
                    decided[:, j] = P[:, j] >= t
                    trial = loss()
                    if trial < column_loss - _TOL:
                        column_best, column_loss = t, trial
                # the current threshold is on the grid or was scored as best_loss:
                # move only on a real gain so a pass cannot undo ties
                if column_loss < best_loss - _TOL:
                    changed |= column_best != thresholds[j]
                    thresholds[j], best_loss = column_best, column_loss
                decided[:, j] = P[:, j] >= thresholds[j]
            if not changed:
                break
        self.thresholds_ = thresholds
        self.score_ = metric(y, decided.reshape(pred.shape))
        return self

    def apply(self, pred) -> np.ndarray:
        self._check_fitted("thresholds_")
        pred = np.asarray(pred, dtype=np.float64)
        P = self._columns(pred, "Thresholds.apply")
        if P.shape[1] != len(self.thresholds_):
            raise ValueError(f"Thresholds.apply: pred has {P.shape[1]} column(s) but the thresholds were "
                             f"fitted on {len(self.thresholds_)}")
        return (P >= self.thresholds_).astype(np.float64).reshape(pred.shape)

    @property
    def params(self) -> dict:
        self._check_fitted("thresholds_")
        return {"thresholds": [float(t) for t in self.thresholds_]}


class Cutpoints(Decision):
    """Ordinal decision: grade ``k`` for values in ``[c_{k-1}, c_k)``, with K-1 increasing cut points.

    Starts from the rounding cuts ``k + 0.5`` and moves one cut at a time to
    its best value on a grid of offsets around it (``-span..span`` by
    ``step``), never past its neighbours, for up to ``max_passes`` passes.
    Since the grid moves with the cut, later passes can reach cuts further
    than ``span`` from the start. Of equally good positions the one nearest
    the current cut wins, so a cut moves only for a real gain. Decided grades
    are ``0..K-1``: the top grade takes every value above the last cut.

    Parameters
    ----------
    n_grades : int, optional
        K, the number of grades. Inferred from ``y.max() + 1`` when None; give it
        when the fitting rows may lack the top grade (fold subsets).
    step : float, default 0.025
    span : float, default 0.5
    max_passes : int, default 5

    Attributes
    ----------
    cutpoints_ : ndarray of shape (K - 1,)
    n_grades_ : int
    score_ : float
    """

    def __init__(self, n_grades: int | None = None, step: float = 0.025, span: float = 0.5, max_passes: int = 5):
        if n_grades is not None and (int(n_grades) != n_grades or n_grades < 2):
            raise ValueError(f"n_grades={n_grades!r} must be an integer of at least 2 (grades 0..K-1)")
        if not step > 0 or not span >= step:
            raise ValueError(f"step={step!r} and span={span!r} must satisfy 0 < step <= span")
        if int(max_passes) < 1:
            raise ValueError(f"max_passes={max_passes!r} must be at least 1")
        self.n_grades = None if n_grades is None else int(n_grades)
        self.step = float(step)
        self.span = float(span)
        self.max_passes = int(max_passes)

    @staticmethod
    def _values(pred: np.ndarray, who: str) -> np.ndarray:
        if pred.ndim == 1 or (pred.ndim == 2 and pred.shape[1] == 1):
            return pred.reshape(-1)
        raise ValueError(f"{who}: pred has shape {pred.shape}; Cutpoints takes (n,) or (n, 1) ordinal values")

    def fit(self, y, pred, metric) -> Cutpoints:
        metric = _as_metric(metric)
        pred = np.asarray(pred, dtype=np.float64)
        x = self._values(pred, "Cutpoints.fit")
        y = np.asarray(y).reshape(-1)
        if len(y) != len(x):
            raise ValueError(f"Cutpoints.fit: y has {len(y)} rows but pred has {len(x)}; pass the same rows")
        _check_finite(x, "Cutpoints.fit")
        if len(y) and (y.min() < 0 or np.any(y != np.round(y))):
            raise ValueError(f"Cutpoints.fit: y must hold grade indices 0..K-1; found {np.unique(y)[:8].tolist()}")
        n_grades = self.n_grades if self.n_grades is not None else int(y.max(initial=0)) + 1
        if n_grades < 2:
            raise ValueError(f"Cutpoints.fit: {n_grades} grade(s) inferred from y; pass n_grades=K to the constructor")
        if y.max(initial=0) >= n_grades:
            raise ValueError(f"Cutpoints.fit: y holds grade {int(y.max())} but n_grades={n_grades}; "
                             f"pass n_grades={int(y.max()) + 1} or more")

        n_offsets = round(self.span / self.step)
        offsets = _ordered_candidates(np.arange(-n_offsets, n_offsets + 1) * self.step, prefer=0.0)
        cuts = np.arange(n_grades - 1) + 0.5

        def loss(trial_cuts: np.ndarray) -> float:
            return metric.loss(y, self._decide(x, trial_cuts).reshape(pred.shape))

        best_loss = loss(cuts)
        for _ in range(self.max_passes):
            changed = False
            for k in range(len(cuts)):
                low = cuts[k - 1] if k > 0 else -np.inf
                high = cuts[k + 1] if k + 1 < len(cuts) else np.inf
                start = cuts[k]
                for offset in offsets[1:]:  # offsets[0] == 0: the current cut, scored as best_loss
                    candidate = start + offset
                    if not low < candidate < high:
                        continue  # cut points stay strictly increasing
                    trial = cuts.copy()
                    trial[k] = candidate
                    trial_loss = loss(trial)
                    if trial_loss < best_loss - _TOL:
                        cuts, best_loss, changed = trial, trial_loss, True
            if not changed:
                break
        self.cutpoints_ = cuts
        self.n_grades_ = n_grades
        self.score_ = metric(y, self._decide(x, cuts).reshape(pred.shape))
        return self

    @staticmethod
    def _decide(x: np.ndarray, cuts: np.ndarray) -> np.ndarray:
        # the number of cuts at or below x: a value on a cut goes up, like round half up
        return np.searchsorted(cuts, x, side="right").astype(np.float64)

    def apply(self, pred) -> np.ndarray:
        self._check_fitted("cutpoints_")
        pred = np.asarray(pred, dtype=np.float64)
        return self._decide(self._values(pred, "Cutpoints.apply"), self.cutpoints_).reshape(pred.shape)

    @property
    def params(self) -> dict:
        self._check_fitted("cutpoints_")
        return {"cutpoints": [float(c) for c in self.cutpoints_], "n_grades": self.n_grades_}


def decision_for(task: str, metric, n_grades: int | None = None) -> Decision | None:
    """The decision rule worth fitting for a task and metric, unfitted.

    Parameters
    ----------
    task : str
        One of :data:`pipeline.task.metrics.TASKS`.
    metric : Metric or str
    n_grades : int, optional
        Ordinal: the number of grades, passed to :class:`Cutpoints`.

    Returns
    -------
    Decision or None
        :class:`Thresholds` for binary and multilabel, :class:`Cutpoints` for
        ordinal, when the metric scores labels; None otherwise (multiclass
        takes the arg-max, regression has nothing to decide, and probability
        or value metrics read the predictions as they are).

    Raises
    ------
    ValueError
        When the task is unknown or the metric does not apply to it.
    """
    if isinstance(metric, str):
        metric = check_metric_task(metric, task)
    elif task not in metric.tasks:
        metrics_for(task)  # raises on an unknown task
        raise ValueError(f"metric {metric.name!r} does not apply to task {task!r} (its tasks: "
                         f"{', '.join(metric.tasks)}); metrics for {task}: {', '.join(metrics_for(task))}")
    if metric.needs != "label":
        return None
    if task in ("binary", "multilabel"):
        return Thresholds()
    if task == "ordinal":
        return Cutpoints(n_grades=n_grades)
    return None


def decision_from_params(params: dict) -> Decision:
    """A fitted decision rebuilt from its :attr:`Decision.params` (as stored in JSON).

    Parameters
    ----------
    params : dict
        ``{"thresholds": [...]}`` or ``{"cutpoints": [...], "n_grades": K}``.

    Returns
    -------
    Decision
        Fitted: ``apply`` gives what the original rule gave.

    Raises
    ------
    ValueError
        If ``params`` is neither kind.
    """
    if "thresholds" in params:
        rule = Thresholds()
        rule.thresholds_ = np.asarray(params["thresholds"], dtype=np.float64)
        return rule
    if "cutpoints" in params:
        rule = Cutpoints(n_grades=params.get("n_grades"))
        rule.cutpoints_ = np.asarray(params["cutpoints"], dtype=np.float64)
        rule.n_grades_ = int(params["n_grades"])
        return rule
    raise ValueError(f"not a stored decision: {params!r}; expected 'thresholds' or 'cutpoints'")

def nested_decision(y, pred, folds, metric, factory: Callable[[], Decision]) -> tuple[np.ndarray, dict]:
    """Decided out-of-fold predictions where no row's decision saw its own fold.

    For each fold, a fresh rule from ``factory`` is fitted on the other folds'
    rows and applied to the fold's rows. ``metric(y, decided)`` is then the
    honest score of tuning the decision, which the in-sample ``score_`` of a
    rule fitted on all rows overstates.

    Parameters
    ----------
    y : ndarray
        Targets in the task's shape.
    pred : ndarray
        Out-of-fold predictions in the task's shape.
    folds : array-like of shape (n,)
        The validation fold of each row.
    metric : Metric or str
    factory : callable
        ``factory() -> Decision``, a new unfitted rule per fold, e.g.
        ``Thresholds`` or ``functools.partial(Cutpoints, n_grades=5)``.

    Returns
    -------
    decided : ndarray
        The held-out decided predictions, in row order, in ``pred``'s shape.
    fold_params : dict
        Fold id -> the ``params`` of the rule that decided that fold.
    """
    y, pred = np.asarray(y), np.asarray(pred, dtype=np.float64)
    folds = np.asarray(folds).reshape(-1)
    if not len(y) == len(pred) == len(folds):
        raise ValueError(f"nested_decision: y, pred and folds have {len(y)}, {len(pred)} and {len(folds)} rows; "
                         "pass one fold id per row")
    try:
        splits = iter_splits(folds)
    except ValueError as exc:
        raise ValueError(f"nested_decision: {exc}") from None
    decided = np.empty(pred.shape, dtype=np.float64)
    fold_params = {}
    for fold, train, held_out in splits:
        rule = factory()
        if not isinstance(rule, Decision):
            raise TypeError(f"factory() returned {type(rule).__name__}; it must return a new Decision, "
                            "e.g. factory=Thresholds")
        rule.fit(y[train], pred[train], metric)
        decided[held_out] = rule.apply(pred[held_out])
        fold_params[fold] = rule.params
    return decided, fold_params
