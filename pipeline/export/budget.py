"""``make export BUDGET=2h TEST_IMAGES=50000``: what to keep of an ensemble so that it predicts within a time.

An export runs every (run, fold model, TTA view) on every test image; ``cost.csv`` says what each costs per image,
and what each fold model costs once (loading) and per image (decoding: each fold model's pass reads the images).
When the whole costs more than the budget for that many images, pieces are dropped one at a time, each time the
one that loses the least estimated score per second it saves (a drop that reaches the budget is taken instead when
it loses no more than that one), and the blend is refitted on what is kept.

What a drop costs is estimated in two parts, each where it can be measured:

* **Runs and TTA views change the OOF rows**: a view's OOF predictions are stored on their own
  (:mod:`pipeline.store.views`), so the blend of the kept runs and views is scored on the training labels.
  Weight and mean blends keep their fitted weights over the kept runs (renormalised); a stacker is ranked by the
  mean of the kept runs while searching, and refitted once at the end.
* **Fold models change only the test rows**: an OOF row is predicted by one fold model whatever the test set sees,
  so averaging k - j fold models instead of k cannot be scored on it.  Its cost is the expected score of the blend
  with the kept fold models less that with all of them, with labels drawn from the blend's own prediction with
  every fold model (:func:`pipeline.blend.averaging.reference_distribution`: temperature-scaled on its OOF rows, so
  as confident as it proved to be on rows it did not see), from matched random numbers for every plan.  Tasks with
  values (regression, ordinal) draw ``prediction + noise`` with the OOF residuals' spread.  For accuracy and log loss
  (multiclass, binary, no tuned decision) the expectation is exact (:data:`EXPECTED_SCORES`): with 16 draws of 3,000
  rows the draws' noise was larger than the effect of one fold model on CIFAR-10.

The two parts add up.  Pure: arrays and tables in, a plan out; :func:`load_run_predictions` reads the store.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline import blend
from pipeline.blend.averaging import DRAWABLE_TASKS, draw_labels, reference_distribution
from pipeline.core.durations import parse_budget  # noqa: F401 - re-exported: BUDGET's forms
from pipeline.core.errors import PipelineError
from pipeline.task.metrics import Metric

log = logging.getLogger(__name__)


class BudgetError(PipelineError, ValueError):
    """The budget cannot be met or its inputs are inconsistent; the message names the minimum or the fix."""


@dataclass(frozen=True)
class RunPredictions:
    """One run's stored predictions, split as a budget can drop them.

    Attributes
    ----------
    name : str
    views : tuple of str
        The TTA views, in the run's order (the first is the plain view).
    folds : tuple of int
        The fold models.
    oof_views : ndarray of shape (n_views, n_train, n_cols) or None
        Each view's OOF predictions; None where only the first view and the mean are known.
    oof_plain, oof_mean : ndarray of shape (n_train, n_cols)
        The first view's OOF predictions and the mean over every view.
    fold_tests : ndarray of shape (n_folds, n_test, n_cols)
        Each fold model's test predictions, mean over every view.
    fold_test_views : ndarray of shape (n_folds, n_views, n_test, n_cols) or None
    """

    name: str
    views: tuple[str, ...]
    folds: tuple[int, ...]
    oof_views: np.ndarray | None
    oof_plain: np.ndarray
    oof_mean: np.ndarray
    fold_tests: np.ndarray
    fold_test_views: np.ndarray | None = None

    def oof(self, views: tuple[str, ...]) -> np.ndarray | None:
        """The OOF predictions with only ``views`` (their mean); None where they are not known."""
        if tuple(views) == self.views:
            return self.oof_mean
        if self.oof_views is not None:
            return self.oof_views[[self.views.index(v) for v in views]].mean(axis=0)
        return self.oof_plain if tuple(views) == self.views[:1] else None

    def test(self, folds: tuple[int, ...], views: tuple[str, ...]) -> np.ndarray:
        """The test predictions of the kept fold models (their mean), each with the kept views where stored per
        view, else with every view."""
        at = [self.folds.index(f) for f in folds]
        if tuple(views) == self.views or self.fold_test_views is None:
            return self.fold_tests[at].mean(axis=0)
        return self.fold_test_views[at][:, [self.views.index(v) for v in views]].mean(axis=(0, 1))


@dataclass(frozen=True)
class Piece:
    """What is kept of one run: its TTA views and fold models."""

    views: tuple[str, ...]
    folds: tuple[int, ...]


#: run name -> what is kept of it, in the blend's run order; a run not in it is dropped
Plan = dict[str, Piece]


def full_plan(runs: list[RunPredictions]) -> Plan:
    return {r.name: Piece(r.views, r.folds) for r in runs}


def plan_key(plan: Plan) -> tuple:
    return tuple(sorted(plan.items()))


def _expected_accuracy(reference: np.ndarray, pred: np.ndarray, task: str) -> float:
    if task == "multiclass":
        return float(reference[np.arange(len(pred)), pred.argmax(axis=1)].mean())
    p, q = reference.reshape(len(reference), -1)[:, -1], pred.reshape(len(pred), -1)[:, -1]
    return float(np.where(q >= 0.5, p, 1 - p).mean())


def _expected_log_loss(reference: np.ndarray, pred: np.ndarray, task: str) -> float:
    eps = 1e-15
    if task == "multiclass":
        q = pred / pred.sum(axis=1, keepdims=True)
        return float(-(reference * np.log(np.clip(q, eps, 1.0))).sum(axis=1).mean())
    p, q = reference.reshape(len(reference), -1)[:, -1], np.clip(pred.reshape(len(pred), -1)[:, -1], eps, 1 - eps)
    return float(-(p * np.log(q) + (1 - p) * np.log(1 - q)).mean())


#: metrics whose expectation over labels drawn from a distribution is exact without drawing (multiclass, binary):
#: the mean over rows of a function linear in each row's label distribution
EXPECTED_SCORES = {"accuracy": _expected_accuracy, "log_loss": _expected_log_loss}


class CostTable:
    """What a plan costs, from ``cost.csv``: ms per image of each (run, fold model, view), and per fold model its
    loading and the decoding of each test image (``load_seconds``, ``decode_ms_per_image``), plus ``startup``.

    Raises
    ------
    BudgetError
        A piece of the ensemble has no measured cost.
    """

    def __init__(self, costs: pd.DataFrame, runs: list[RunPredictions], startup: float = 0.0):
        self.ms = {(str(r.model), int(r.fold), str(r.view)): float(r.ms_per_image) for r in costs.itertuples()}
        self.once = {(str(r.model), int(r.fold)): float(getattr(r, "load_seconds", 0.0)) for r in costs.itertuples()}
        self.decode = {(str(r.model), int(r.fold)): float(getattr(r, "decode_ms_per_image", 0.0))
                       for r in costs.itertuples()}
        self.startup = float(startup)
        for run in runs:
            for fold in run.folds:
                for view in run.views:
                    if (run.name, fold, view) not in self.ms:
                        raise BudgetError(f"cost.csv has no cost for run {run.name}, fold {fold}, view {view}; "
                                          "export again to measure it")

    def fold_seconds(self, run: str, fold: int, views, n_images: int) -> float:
        """One fold model with these views on ``n_images`` images: its passes, its loading, its decoding."""
        ms = sum(self.ms[(run, fold, v)] for v in views) + self.decode[(run, fold)]
        return ms * n_images / 1000 + self.once[(run, fold)]

    def seconds(self, plan: Plan, n_images: int) -> float:
        """The seconds a plan takes on ``n_images`` test images."""
        return self.startup + sum(self.fold_seconds(run, f, piece.views, n_images)
                                  for run, piece in plan.items() for f in piece.folds)


class ScoreEstimator:
    """The estimated score of a plan relative to the full ensemble (module docstring), in "higher is better" units.

    Parameters
    ----------
    runs : list of RunPredictions
        In the blend's order.
    blend_state : dict or None
        The stored blend (:meth:`pipeline.blend.BlendMethod.state`); None for a single model.
    y : ndarray
        Training labels.
    metric : Metric
    task : str
    decide : callable, optional
        The stored decision (thresholds, cut points), applied before scoring.
    n_draws : int
        Label draws for the fold models' part.
    seed : int
    """

    def __init__(self, runs: list[RunPredictions], blend_state: dict | None, y: np.ndarray, metric: Metric, task: str,
                 decide=None, n_draws: int = 16, seed: int = 0):
        self.runs = {r.name: r for r in runs}
        self.order = [r.name for r in runs]
        self.state, self.y, self.metric, self.task = blend_state, np.asarray(y), metric, task
        self.decide = decide or (lambda pred: pred)
        # the exact expectation holds for the metric applied to the probabilities themselves, not to decided labels
        self.exact = decide is None and task in ("multiclass", "binary")
        self._references: dict = {}
        self.sign = 1.0 if metric.greater_is_better else -1.0
        self._gains: dict = {}
        self._methods: dict = {}
        self.n_draws, self.seed = n_draws, seed
        self._draws: dict = {}
        self.oof_full = self._score(self.y, self.oof_pred(full_plan(runs)))

    def _score(self, y, pred) -> float:
        return self.sign * self.metric(y, self.decide(pred))

    def _method(self, kept: tuple[str, ...]):
        """The blend over the kept runs without a refit: weights or means over them (renormalised); a stacker is
        ranked by the plain mean of the kept runs (it is refitted once on the final plan)."""
        if self.state is None:
            return None
        if kept not in self._methods:
            state = self.state
            if blend.BLEND_METHODS[state["method"]].kind == "stacker":
                stack = np.stack([self.runs[n].oof_mean for n in kept])
                method = blend.make_blend("mean").fit(stack, self.y, self.metric, task=self.task)
            else:
                at = [self.order.index(name) for name in kept]
                weights = None if state["weights"] is None else [state["weights"][i] for i in at]
                method = blend.BlendMethod.from_state({**state, "n_models": len(kept), "weights": weights})
            self._methods[kept] = method
        return self._methods[kept]

    def _blend(self, kept: tuple[str, ...], preds: np.ndarray) -> np.ndarray:
        method = self._method(kept)
        return preds[0] if method is None else method.predict(preds)

    def oof_pred(self, plan: Plan) -> np.ndarray:
        kept = tuple(n for n in self.order if n in plan)
        return self._blend(kept, np.stack([self.runs[n].oof(plan[n].views) for n in kept]))

    def test_pred(self, plan: Plan, all_folds: bool = False) -> np.ndarray:
        kept = tuple(n for n in self.order if n in plan)
        tests = [self.runs[n].test(self.runs[n].folds if all_folds else plan[n].folds, plan[n].views) for n in kept]
        return self._blend(kept, np.stack(tests))

    def _key(self, plan: Plan) -> tuple:
        return tuple((n, plan[n].views) for n in self.order if n in plan)

    def reference(self, plan: Plan) -> np.ndarray | None:
        """The label distribution of the test rows for this plan: its own blend with every fold model,
        temperature-scaled on its OOF rows (what averaging its fold models is worth is judged against what it
        predicts, not against another ensemble); None for tasks with values."""
        key = self._key(plan)
        if key not in self._references:
            self._references[key] = None
            if self.task in DRAWABLE_TASKS:
                self._references[key] = reference_distribution(self.test_pred(plan, all_folds=True),
                                                               self.oof_pred(plan), self.y, self.task)
        return self._references[key]

    def draws(self, plan: Plan) -> list[np.ndarray]:
        """Test labels drawn from :meth:`reference`, from the same random numbers for every plan (matched draws).
        Tasks with values draw the plan's prediction plus noise of the spread its OOF rows missed by."""
        key = self._key(plan)
        if key not in self._draws:
            rng = np.random.default_rng(self.seed)
            reference = self.reference(plan)
            if reference is not None:
                draws = [draw_labels(reference, self.task, rng) for _ in range(self.n_draws)]
            else:
                test_all, oof = self.test_pred(plan, all_folds=True), self.oof_pred(plan)
                spread = float(np.std(self.y.reshape(oof.shape) - oof))
                draws = [test_all + rng.normal(0.0, spread, size=test_all.shape) for _ in range(self.n_draws)]
                if self.task == "ordinal":  # grades: whole numbers within the training labels' range
                    draws = [np.clip(np.rint(d), self.y.min(), self.y.max()).reshape(-1) for d in draws]
            self._draws[key] = draws
        return self._draws[key]

    def folds_part(self, plan: Plan) -> float:
        """The expected score with the plan's fold models less that with all of them (higher is better)."""
        kept, every = self.test_pred(plan), self.test_pred(plan, all_folds=True)
        exact = EXPECTED_SCORES.get(self.metric.name) if self.exact else None
        if exact is not None:  # a mean over rows of what each row's label distribution gives: no draws needed
            reference = self.reference(plan)
            return self.sign * (exact(reference, kept, self.task) - exact(reference, every, self.task))
        return float(np.mean([self._score(d, kept) - self._score(d, every) for d in self.draws(plan)]))

    def gain(self, plan: Plan) -> float:
        """The plan's estimated score less the full ensemble's (<= 0 mostly), higher is better."""
        key = plan_key(plan)
        if key not in self._gains:
            self._gains[key] = self._score(self.y, self.oof_pred(plan)) - self.oof_full + self.folds_part(plan)
        return self._gains[key]

    def in_metric_units(self, gain: float) -> float:
        return self.sign * gain


@dataclass(frozen=True)
class Drop:
    """One step of the search: what was dropped, the seconds it saved, its estimated change in the metric's units."""

    what: str
    seconds_saved: float
    estimated_change: float


@dataclass(frozen=True)
class BudgetPlan:
    """What :func:`choose_within_budget` kept, what it dropped in order, and the times and estimates."""

    plan: Plan
    dropped: list[Drop]
    seconds_full: float
    seconds: float
    estimated_change: float  # metric units: the plan's estimated score less the full ensemble's
    budget_seconds: float = 0.0

    def table(self) -> list[dict]:
        """The drops as rows of a table (what ``make export`` prints)."""
        return drops_table(self.dropped)


def drops_table(drops: list[Drop]) -> list[dict]:
    """Drops as rows of a table: what, the seconds it saves, its estimated change."""
    return [{"dropped": d.what, "seconds saved": round(d.seconds_saved, 1),
             "estimated change": round(d.estimated_change, 5)} for d in drops]


def _moves(plan: Plan, runs: dict[str, RunPredictions]):
    """Every plan one drop away: (description, plan)."""
    for name, piece in plan.items():
        run = runs[name]
        if len(piece.views) > 1:
            for view in piece.views:
                views = tuple(v for v in piece.views if v != view)
                if run.oof(views) is not None:
                    yield f"TTA view {view} of {name}", {**plan, name: Piece(views, piece.folds)}
            if run.oof_views is None and piece.views == run.views and len(run.views) > 2:
                # a run stored before per-view files: only the plain view alone is known besides the mean
                dropped = ", ".join(run.views[1:])
                yield f"TTA views {dropped} of {name}", {**plan, name: Piece(run.views[:1], piece.folds)}
        if len(piece.folds) > 1:
            for fold in piece.folds:
                yield (f"fold model {fold} of {name}",
                       {**plan, name: Piece(piece.views, tuple(f for f in piece.folds if f != fold))})
        if len(plan) > 1:
            yield f"run {name}", {k: v for k, v in plan.items() if k != name}


def single_drops(runs: list[RunPredictions], costs: CostTable, estimator: ScoreEstimator,
                 n_images: int) -> list[Drop]:
    """What each piece earns: every drop from the whole ensemble on its own, with the seconds it saves and its
    estimated change, most harmful first."""
    plan = full_plan(runs)
    seconds = costs.seconds(plan, n_images)
    drops = [Drop(what, seconds - costs.seconds(after, n_images), estimator.in_metric_units(estimator.gain(after)))
             for what, after in _moves(plan, {r.name: r for r in runs})]
    return sorted(drops, key=lambda d: estimator.sign * d.estimated_change)


def minimum_seconds(costs: CostTable, runs: list[RunPredictions], n_images: int) -> float:
    """The cheapest plan there is: one view of one fold model of one run (the first view where views are not stored
    one by one)."""
    cheapest = []
    for run in runs:
        views = run.views if run.oof_views is not None or len(run.views) == 1 else run.views[:1]
        cheapest.extend(costs.fold_seconds(run.name, f, [v], n_images) for f in run.folds for v in views)
    return costs.startup + min(cheapest)


def choose_within_budget(runs: list[RunPredictions], costs: CostTable, estimator: ScoreEstimator,
                         budget_seconds: float, n_images: int) -> BudgetPlan:
    """The plan that fits ``budget_seconds`` on ``n_images`` test images, by greedy drops (module docstring).

    Raises
    ------
    BudgetError
        The budget is below the cheapest piece; the message gives the minimum.
    """
    from pipeline.core.durations import format_duration

    if n_images < 1:
        raise BudgetError(f"TEST_IMAGES={n_images}: give the number of test images the notebook will predict (>= 1)")
    least = minimum_seconds(costs, runs, n_images)
    if budget_seconds < least:
        needed = math.ceil(least * 100) / 100 if least < 10 else math.ceil(least)
        raise BudgetError(
            f"BUDGET={format_duration(budget_seconds)} is below what one model costs: the cheapest fold model and "
            f"view need {least:.3g}s for {n_images} test images here; give at least "
            f"BUDGET={needed:g}s, or fewer TEST_IMAGES"
        )
    by_name = {r.name: r for r in runs}
    plan = full_plan(runs)
    full_seconds = seconds = costs.seconds(plan, n_images)
    dropped = []
    while seconds > budget_seconds:
        by_ratio = by_loss = None  # the least loss per second saved; among drops that reach the budget, the least loss
        for what, after in _moves(plan, by_name):
            after_seconds = costs.seconds(after, n_images)
            saved = seconds - after_seconds
            if saved <= 0:
                continue
            move = (what, after, after_seconds, estimator.gain(after) - estimator.gain(plan))
            if by_ratio is None or (move[3] / saved, saved) > (by_ratio[3] / (seconds - by_ratio[2]),
                                                                seconds - by_ratio[2]):
                by_ratio = move
            if after_seconds <= budget_seconds and (by_loss is None or move[3] > by_loss[3]):
                by_loss = move
        if by_ratio is None:  # cannot happen while the minimum fits; kept as a clear error rather than a loop
            raise BudgetError(f"nothing left to drop at {seconds:.0f}s for a budget of {budget_seconds:.0f}s")
        # a drop that ends the search is taken when it loses no more than the next drop by ratio alone would: that
        # one would be followed by more (dropping the whole best run to save one step lost 2.8 points on CIFAR-10)
        what, plan, after_seconds, delta = by_loss if by_loss is not None and by_loss[3] >= by_ratio[3] else by_ratio
        dropped.append(Drop(what, seconds - after_seconds, estimator.in_metric_units(delta)))
        seconds = after_seconds
    return BudgetPlan(plan, dropped, full_seconds, seconds, estimator.in_metric_units(estimator.gain(plan)),
                      budget_seconds)


def load_run_predictions(layout, meta, n_train: int, n_test: int) -> RunPredictions:
    """A stored run's predictions per fold model and view (:mod:`pipeline.store.views`).

    Raises
    ------
    BudgetError
        A fold's files are missing (the run was imported, or its folder was edited).
    """
    from pipeline.store.views import fold_views, read_fold_predictions

    folds = tuple(sorted(int(f) for f in meta.folds_done))
    tta = [tuple((meta.folds or {}).get(str(f), {}).get("tta") or meta.tta or ["identity"]) for f in folds]
    views = tta[0]
    if any(t != views for t in tta):
        raise BudgetError(f"run {layout.name}: its fold models have different TTA views {sorted(set(tta))}; a "
                          "budget needs one list (retrain the folds with one train.tta)")
    n_cols = None
    oof_views = oof_plain = oof_mean = None
    per_view_known = True
    fold_tests, fold_test_views = [], []
    for fold in folds:
        valid = fold_views(layout, fold, "valid", list(views))
        if valid is None:
            rows, mean = read_fold_predictions(layout, fold, "valid")
            _, plain = read_fold_predictions(layout, fold, "valid_plain")
            per_view_known = False
            valid_views = None
        else:
            rows, valid_views = valid
            mean, plain = valid_views.mean(axis=0), valid_views[0]
        if n_cols is None:
            n_cols = mean.shape[1]
            oof_views = np.zeros((len(views), n_train, n_cols))
            oof_plain, oof_mean = np.zeros((n_train, n_cols)), np.zeros((n_train, n_cols))
        oof_mean[rows], oof_plain[rows] = mean, plain
        if valid_views is not None:
            oof_views[:, rows] = valid_views
        test = fold_views(layout, fold, "test", list(views))
        if test is None:
            test_rows, test_mean = read_fold_predictions(layout, fold, "test")
            fold_test_views = None
        else:
            test_rows, per_view = test
            test_mean = per_view.mean(axis=0)
            if fold_test_views is not None:
                fold_test_views.append(per_view[:, np.argsort(test_rows)])
        if len(test_rows) != n_test:
            raise BudgetError(f"run {layout.name}, fold {fold}: {len(test_rows)} test rows stored, the test set has "
                              f"{n_test}; rerun make predict MODEL={layout.name}")
        fold_tests.append(test_mean[np.argsort(test_rows)])
    return RunPredictions(
        name=layout.name, views=views, folds=folds, oof_views=oof_views if per_view_known else None,
        oof_plain=oof_plain, oof_mean=oof_mean, fold_tests=np.stack(fold_tests),
        fold_test_views=None if fold_test_views is None else np.stack(fold_test_views),
    )
