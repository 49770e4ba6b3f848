"""Tests of pipeline.blend: the contract of every registered method, planted
answers on synthetic OOF predictions, honest (nested) scoring, and errors.

Contract tests are parametrised over ``BLEND_METHODS`` itself, so a newly
registered method is tested without editing this file; ``FAST`` only lowers
the cost of the slow ones.
"""

from __future__ import annotations

import dataclasses
import time
from typing import ClassVar

import numpy as np
import pytest

from pipeline import blend as B
from pipeline.blend import (BLEND_METHODS, TASK_OUTPUT, BlendMethod, NestedResult, NotApplicable, applicable,
                            apply_temperature, blend_each_fold, fit_temperature, make_blend, nested_score,
                            not_applicable_reason, prune_correlated, register_blend, select_method,
                            single_model_scores)
from pipeline.task.metrics import Metric, get_metric

# Cheaper settings for the slow methods; everything else runs on defaults.
FAST = {
    "optuna": {"n_trials": 12},
    # sklearn's C multiplies the summed loss: the default (0.001) is set for
    # competition-sized OOF sets and over-regularises these few hundred rows
    "logreg_stacker": {"C": 0.1},
    # n_jobs=1: with both cores busy (pytest + anything else) LightGBM's OpenMP
    # threads spin against each other, measured at 10-20 s instead of 0.1 s a fit
    "lgbm_stacker": {"n_estimators": 25, "min_child_samples": 5, "n_jobs": 1},
}
METHODS = list(BLEND_METHODS)
# task -> n_cols of its synthetic predictions
TASKS = {"multiclass": 10, "binary": 1, "multilabel": 4, "regression": 1, "ordinal": 1}
NEW_TASKS = ["multilabel", "regression", "ordinal"]
VALUE_TASKS = ["regression", "ordinal"]
# means that read predictions as probabilities: not for values
PROBABILITY_ONLY = {"rank_mean", "geometric_mean", "power_mean", "logit_mean"}


def fast(name: str, **extra) -> dict:
    return {**FAST.get(name, {}), **extra}


def _probs(z: np.ndarray) -> np.ndarray:
    """Logits (..., C) -> probabilities; C == 1 means binary sigmoid."""
    if z.shape[-1] == 1:
        return 1.0 / (1.0 + np.exp(-z))
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _signal(y: np.ndarray, n_cols: int) -> np.ndarray:
    """Unit logit pointing at the true class, shape (n_rows, n_cols)."""
    if n_cols == 1:
        return (2.0 * y - 1.0)[:, None]
    return np.eye(n_cols)[y]


def synth(strengths, n_rows: int, n_cols: int, seed: int = 0, noise: float = 1.0):
    """OOF predictions of models with the given signal strengths.

    Returns
    -------
    preds : (n_models, n_rows, n_cols), y : (n_rows,)
    """
    rng = np.random.default_rng(seed)
    n_classes = 2 if n_cols == 1 else n_cols
    y = rng.integers(0, n_classes, n_rows)
    s = np.asarray(strengths, dtype=float)[:, None, None]
    z = s * _signal(y, n_cols)[None] + noise * rng.normal(size=(len(s), n_rows, n_cols))
    return _probs(z), y


# Metrics for the new tasks are built here, not taken from the registry: pipeline.task.metrics is
# being extended for those tasks separately, and these tests pin the blend's side only.
def local_metric(name, fn, greater_is_better, needs, tasks):
    """A Metric, whether or not this version of Metric declares its tasks."""
    if "tasks" in {f.name for f in dataclasses.fields(Metric)}:
        return Metric(name, fn, greater_is_better, needs, tasks=tasks)
    return Metric(name, fn, greater_is_better, "proba" if needs == "value" else needs)


def _bce(y, p):
    p = np.clip(p, 1e-15, 1 - 1e-15)
    return -np.mean(np.where(y == 1, np.log(p), np.log(1 - p)))


def _rmse(y, p):
    return np.sqrt(np.mean((y.reshape(-1) - p.reshape(-1)) ** 2))


def _column_auc(y, p):
    from scipy.stats import rankdata

    y, p = y.reshape(len(y), -1), p.reshape(len(p), -1)
    aucs = []
    for k in range(y.shape[1]):
        pos = y[:, k] == 1
        n_pos, n_neg = pos.sum(), (~pos).sum()
        r = rankdata(p[:, k])
        aucs.append((r[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    return np.mean(aucs)


# "log_loss" on purpose: the multilabel fast path is keyed on the name and checked against the value
BCE = local_metric("log_loss", _bce, False, "proba", ("multilabel",))
RMSE = local_metric("rmse", _rmse, False, "value", ("regression", "ordinal"))
AUC = local_metric("column_auc", _column_auc, True, "proba", ("multilabel", "binary"))


def task_metric(task: str) -> Metric:
    return {"multilabel": BCE, "regression": RMSE, "ordinal": RMSE}.get(task) or get_metric("log_loss")


def make_data(task: str, strengths, n_rows: int, seed: int = 0, noise: float = 1.0):
    """Synthetic OOF predictions for any task: stronger models track the target more closely.

    Returns
    -------
    preds : (n_models, n_rows, n_cols), y : the task's targets
    """
    if task in ("multiclass", "binary"):
        return synth(strengths, n_rows, TASKS[task], seed=seed, noise=noise)
    rng = np.random.default_rng(seed)
    s = np.asarray(strengths, dtype=float)[:, None, None]
    if task == "multilabel":
        y = (rng.random((n_rows, TASKS[task])) < 0.35).astype(np.int64)
        z = s * (2.0 * y - 1.0)[None] + noise * rng.normal(size=(len(s),) + y.shape)
        return _probs_sigmoid(z), y
    if task == "regression":
        y = rng.normal(2.0, 3.0, n_rows)
    else:
        y = rng.integers(0, 5, n_rows)
    # error sd inversely proportional to strength, on the target's scale (values well outside [0, 1])
    preds = y[None, :, None] + 2.0 * noise * rng.normal(size=(len(s), n_rows, 1)) / s
    return preds, y


def _probs_sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def assert_valid_output(pred: np.ndarray, task: str, n_rows: int) -> None:
    """Shape and kind of a blend's prediction for the task."""
    n_cols = TASKS[task]
    assert pred.shape == (n_rows, n_cols)
    assert np.all(np.isfinite(pred))
    if TASK_OUTPUT[task] != "value":
        assert pred.min() >= 0.0 and pred.max() <= 1.0
    if TASK_OUTPUT[task] == "simplex":
        np.testing.assert_allclose(pred.sum(axis=1), 1.0, atol=1e-9)


def assert_valid_proba(pred: np.ndarray, n_rows: int, n_cols: int) -> None:
    assert pred.shape == (n_rows, n_cols)
    assert np.all(np.isfinite(pred))
    assert pred.min() >= 0.0 and pred.max() <= 1.0
    if n_cols > 1:
        np.testing.assert_allclose(pred.sum(axis=1), 1.0, atol=1e-9)


# --------------------------------------------------------------------------- #
# Contract of every registered method
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("name", METHODS)
def test_contract(name, task):
    preds, y = make_data(task, [0.5, 1.0, 1.5, 2.0], n_rows=300, seed=1)
    test_preds, _ = make_data(task, [0.5, 1.0, 1.5, 2.0], n_rows=40, seed=2)
    metric = task_metric(task)
    method = make_blend(name, **fast(name))
    assert isinstance(method, BlendMethod)
    assert method.kind in {"mean", "weights", "stacker"}
    assert method.name == name
    explicit = None if task in ("multiclass", "binary") else task  # today's callers pass no task

    # applicable() says beforehand exactly what fit does
    assert applicable(name, task) == (not (name in PROBABILITY_ONLY and task in VALUE_TASKS))
    if not applicable(name, task):
        reason = not_applicable_reason(name, task)
        with pytest.raises(NotApplicable, match=rf"blend method '{name}' does not apply to {task} predictions") as err:
            method.fit(preds, y, metric, task=task)
        assert str(err.value) == reason and "use mean, optuna" in reason
        assert isinstance(err.value, ValueError)
        with pytest.raises(NotApplicable):
            nested_score(name, preds, y, np.arange(300) % 3, metric, task=task)
        return

    assert method.fit(preds, y, metric, task=explicit) is method
    assert method.task_ == task and method.output_ == TASK_OUTPUT[task]
    pred = method.predict(preds)
    assert_valid_output(pred, task, 300)
    assert_valid_output(method.predict(test_preds), task, 40)

    if method.kind == "stacker":
        assert method.weights_ is None
    else:
        w = method.weights_
        assert w.shape == (4,)
        assert np.all(w >= 0)
        assert w.sum() == pytest.approx(1.0)

    # deterministic: a second instance with the same parameters (and seed)
    again = make_blend(name, **fast(name)).fit(preds, y, metric, task=explicit).predict(preds)
    np.testing.assert_array_equal(pred, again)

    res = nested_score(name, preds, y, np.arange(300) % 3, metric, params=fast(name), task=explicit)
    assert np.isfinite(res.nested) and np.isfinite(res.in_sample)
    assert_valid_output(res.oof_pred, task, 300)


def test_applicable_table_and_errors():
    # only the probability means are out, and only for values
    table = {(n, t) for n in METHODS for t in TASKS if not applicable(n, t)}
    assert table == {(n, t) for n in PROBABILITY_ONLY for t in VALUE_TASKS}
    assert all(applicable(n, None) and not_applicable_reason(n, None) is None for n in METHODS)
    assert applicable(B.GeometricMean, "multilabel") and not applicable(B.GeometricMean, "ordinal")
    reason = not_applicable_reason("geometric_mean", "regression")
    assert reason == (
        "blend method 'geometric_mean' does not apply to regression predictions (values, not probabilities: "
        "it averages logarithms, undefined for values <= 0); use mean, optuna, caruana, hill_climb, slsqp, "
        "logreg_stacker or lgbm_stacker"
    )
    with pytest.raises(ValueError, match=r"task must be one of 'multiclass', .*'ordinal' or None.*got 'regresion'"):
        applicable("mean", "regresion")
    with pytest.raises(KeyError, match="unknown blend method 'nope'"):
        applicable("nope", "binary")
    with pytest.raises(ValueError, match="task must be one of"):
        make_blend("mean").fit(*make_data("regression", [1.0], 20), RMSE, task="values")


@pytest.mark.parametrize("name", METHODS)
def test_every_method_accepts_calibrate_and_label_metrics(name):
    preds, y = synth([0.5, 1.0, 2.0], n_rows=200, n_cols=5, seed=3)
    pred = make_blend(name, **fast(name, calibrate=True)).fit(preds, y, "accuracy").predict(preds)
    assert_valid_proba(pred, 200, 5)


@pytest.mark.parametrize("name", METHODS)
def test_calibrate_lowers_every_methods_log_loss_on_under_confident_models(name):
    # three noisy views of calibrated probabilities, each softened (temperature 2.5-3.5): every blend of them is
    # under-confident, and a temperature below 1 must lower the log loss, in-sample and on held-out folds
    rng = np.random.default_rng(15)
    n_rows, c = 600, 4
    z = rng.normal(0, 2.0, size=(n_rows, c))
    y = (rng.random(n_rows)[:, None] > np.cumsum(_probs(z), axis=1)).sum(axis=1)
    soft = np.stack([apply_temperature(_probs(z + rng.normal(0, 0.7, size=z.shape)), t) for t in (2.5, 3.0, 3.5)])
    m = get_metric("log_loss")
    # the stackers learn a sharpening themselves when they fit closely (the tests' C=0.1; 25 trees at rate 0.05 also
    # overfit 480 rows, so their in-sample temperature does not carry to held-out rows); held back, as on a
    # competition-sized OOF set, the models' softness passes through
    params = {"logreg_stacker": {"C": 0.001},
              "lgbm_stacker": {**FAST["lgbm_stacker"], "learning_rate": 0.02}}.get(name, fast(name))
    plain = make_blend(name, **params).fit(soft, y, m)
    cal = make_blend(name, **params, calibrate=True).fit(soft, y, m)
    assert plain.temperature_ == 1.0 and cal.temperature_ < 0.95
    assert m(y, cal.predict(soft)) < m(y, plain.predict(soft)) - 1e-3
    res = nested_score(name, soft, y, np.arange(n_rows) % 5, m, params={**params, "calibrate": True})
    assert res.nested_calibrated < res.nested_uncalibrated and res.nested == res.nested_calibrated
    assert res.fitted.temperature_ < 0.95


# --------------------------------------------------------------------------- #
# Planted answers
# --------------------------------------------------------------------------- #

WEIGHT_METHODS = [n for n in METHODS if BLEND_METHODS[n].kind == "weights"]


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("name", WEIGHT_METHODS)
def test_one_good_model_gets_most_weight(name, task):
    # model 3 is strong, the others barely informative
    preds, y = make_data(task, [0.3, 0.3, 0.3, 3.0, 0.3, 0.3], n_rows=400, seed=4)
    w = make_blend(name, **fast(name)).fit(preds, y, task_metric(task), task=task).weights_
    assert int(np.argmax(w)) == 3
    assert w[3] >= 0.5, w


@pytest.mark.parametrize("task", NEW_TASKS)
@pytest.mark.parametrize("name", [n for n in METHODS if BLEND_METHODS[n].kind != "mean"])
def test_fitted_methods_find_the_good_model_on_new_tasks(name, task):
    # one good model among noise: every fitted method (stackers included) must beat the plain mean out of sample
    preds, y = make_data(task, [0.3, 0.3, 3.0, 0.3], n_rows=300, seed=24)
    folds = np.arange(300) % 3
    metric = task_metric(task)
    res = nested_score(name, preds, y, folds, metric, params=fast(name), task=task)
    mean = nested_score("mean", preds, y, folds, metric, task=task)
    assert metric.is_better(res.nested, mean.nested), (res.nested, mean.nested)


def _complementary(n_cols: int, seed: int = 5):
    """Two models, each strong on its own half of the rows and noise elsewhere."""
    rng = np.random.default_rng(seed)
    n_rows = 600
    n_classes = 2 if n_cols == 1 else n_cols
    y = rng.integers(0, n_classes, n_rows)
    half = rng.permutation(n_rows) < n_rows // 2
    sig = 4.0 * _signal(y, n_cols)
    za = np.where(half[:, None], sig, 0.0) + rng.normal(size=(n_rows, n_cols))
    zb = np.where(~half[:, None], sig, 0.0) + rng.normal(size=(n_rows, n_cols))
    return _probs(np.stack([za, zb])), y


def _complementary_task(task: str, seed: int = 5):
    """_complementary for the new tasks: each model accurate on its own half of the rows."""
    if task in ("multiclass", "binary"):
        return _complementary(TASKS[task], seed)
    rng = np.random.default_rng(seed)
    n_rows = 600
    half = (rng.permutation(n_rows) < n_rows // 2)[:, None]
    if task == "multilabel":
        y = (rng.random((n_rows, TASKS[task])) < 0.35).astype(np.int64)
        sig = 4.0 * (2.0 * y - 1.0)
        za = np.where(half, sig, 0.0) + rng.normal(size=y.shape)
        zb = np.where(~half, sig, 0.0) + rng.normal(size=y.shape)
        return _probs_sigmoid(np.stack([za, zb])), y
    y = rng.normal(2.0, 3.0, n_rows) if task == "regression" else rng.integers(0, 5, n_rows)
    truth = y[:, None].astype(float)
    a = truth + np.where(half, 0.3, 3.0) * rng.normal(size=(n_rows, 1))
    b = truth + np.where(~half, 0.3, 3.0) * rng.normal(size=(n_rows, 1))
    return np.stack([a, b]), y


# rank averages are not calibrated probabilities, so rank_mean is held to rank metrics (AUC, below), not log loss
COMPLEMENTARY_CASES = (
    [
        (name, task, metric)
        for name in METHODS
        for task in ("multiclass", "binary")
        for metric in ("log_loss", "accuracy")
        if not (name == "rank_mean" and metric == "log_loss")
    ]
    + [
        (name, task, "task")
        for name in METHODS
        for task in NEW_TASKS
        if applicable(name, task) and not (name == "rank_mean" and task == "multilabel")
    ]
    + [("rank_mean", "multilabel", "auc")]
)


@pytest.mark.parametrize("name, task, metric", COMPLEMENTARY_CASES)
def test_complementary_models_blend_beats_both(name, task, metric):
    m = {"task": task_metric(task), "auc": AUC}.get(metric) or get_metric(metric)
    preds, y = _complementary_task(task)
    singles = single_model_scores(preds, y, m, task=task)
    blended = m(y, make_blend(name, **fast(name)).fit(preds, y, m, task=task).predict(preds))
    assert all(m.is_better(blended, s) for s in singles), (blended, singles)


def test_rank_mean_beats_singles_on_auc():
    m = get_metric("roc_auc")
    preds, y = _complementary(1)
    blended = m(y, make_blend("rank_mean").fit(preds, y, m).predict(preds))
    assert blended > single_model_scores(preds, y, m).max()


def test_stacker_uses_extra_features():
    # the extra feature carries what the models miss: the label itself, noisily
    preds, y = synth([0.3, 0.3], n_rows=500, n_cols=1, seed=6)
    extra = (y + np.random.default_rng(0).normal(0, 0.3, len(y)))[:, None]
    m = get_metric("log_loss")
    for name in ["logreg_stacker", "lgbm_stacker"]:
        without = m(y, make_blend(name, **fast(name)).fit(preds, y, m).predict(preds))
        method = make_blend(name, **fast(name)).fit(preds, y, m, extra=extra)
        assert m(y, method.predict(preds, extra=extra)) < without - 0.1
        with pytest.raises(ValueError, match="fitted with 1 extra features"):
            method.predict(preds)


def test_mean_kinds_ignore_extra():
    preds, y = synth([1.0, 2.0], n_rows=100, n_cols=3, seed=7)
    extra = np.ones((100, 2))
    a = make_blend("mean").fit(preds, y, "log_loss", extra=extra).predict(preds, extra=extra)
    np.testing.assert_allclose(a, preds.mean(axis=0))


# --------------------------------------------------------------------------- #
# Method specifics
# --------------------------------------------------------------------------- #


def test_caruana_ties_prefer_a_chosen_model_and_keep_best_prefix():
    # accuracy makes ties exact.  Model 1 is model 0 fixed on 20 rows, so step 1
    # picks model 1; averaging either model into it then keeps those rows right
    # (0.55/0.45 + 0.45/0.55 still favours the truth), a tie that must go to the
    # model already chosen (1), not to the lower index (0).
    rng = np.random.default_rng(8)
    n_rows = 200
    y = rng.integers(0, 2, n_rows)
    right = np.where(rng.random(n_rows) < 0.7, y, 1 - y)
    m1 = np.full((n_rows, 2), 0.4)
    m1[np.arange(n_rows), right] = 0.6
    m0 = m1.copy()
    fixed = np.flatnonzero(right == y)[:20]
    m0[fixed, y[fixed]], m0[fixed, 1 - y[fixed]] = 0.45, 0.55
    weak = _probs(np.random.default_rng(9).normal(size=(n_rows, 2)))
    stack = np.stack([m0, m1, weak])
    method = make_blend("caruana", n_steps=6).fit(stack, y, "accuracy")
    trajectory = method.trajectories_[0]
    assert trajectory[0] == 1
    assert 0 not in trajectory
    length = method.best_lengths_[0]
    counts = np.bincount(trajectory[:length], minlength=3)
    np.testing.assert_allclose(method.weights_, counts / length)
    np.testing.assert_array_equal(method.weights_, [0.0, 1.0, 0.0])  # shortest best prefix


def test_caruana_sorted_init_and_bags():
    preds, y = synth([0.5, 2.0, 1.0, 1.5, 0.2, 0.8], n_rows=300, n_cols=5, seed=9)
    method = make_blend("caruana", sorted_init=2, n_steps=3).fit(preds, y, "log_loss")
    singles = single_model_scores(preds, y, "log_loss")
    assert method.trajectories_[0][:2] == list(np.argsort(singles)[:2])

    bagged = make_blend("caruana", n_bags=5, bag_fraction=0.5, seed=3).fit(preds, y, "log_loss")
    assert len(bagged.trajectories_) == 5
    assert all(len(set(t)) <= 3 for t in bagged.trajectories_)  # 3 of 6 models per bag
    assert bagged.weights_.sum() == pytest.approx(1.0)
    again = make_blend("caruana", n_bags=5, bag_fraction=0.5, seed=3).fit(preds, y, "log_loss")
    np.testing.assert_array_equal(bagged.weights_, again.weights_)


def test_hill_climb_allow_negative_gives_valid_probabilities():
    preds, y = synth([2.0, 1.9, 0.5, 1.0], n_rows=300, n_cols=6, seed=10)
    m = get_metric("log_loss")
    method = make_blend("hill_climb", allow_negative=True, step=0.1).fit(preds, y, m)
    assert method.weights_.sum() == pytest.approx(1.0)
    pred = method.predict(preds)
    assert_valid_proba(pred, 300, 6)
    assert m(y, pred) <= single_model_scores(preds, y, m).min() + 1e-12


def test_slsqp_uses_log_loss_surrogate_for_label_metrics():
    preds, y = synth([1.0, 2.0], n_rows=200, n_cols=3, seed=11)
    assert make_blend("slsqp").fit(preds, y, "accuracy").surrogate_ == "log_loss"
    assert make_blend("slsqp").fit(preds, y, "log_loss").surrogate_ is None


@pytest.mark.parametrize("n_cols", [1, 7])
def test_fast_log_loss_objective_equals_metric(n_cols):
    preds, y = synth([0.5, 1.0, 3.0], n_rows=250, n_cols=n_cols, seed=12)
    m = get_metric("log_loss")
    obj = B.LinearLoss(preds, y, m)
    assert obj.fast
    w = np.array([0.2, 0.3, 0.5])
    assert obj.weights_loss(w) == pytest.approx(m.loss(y, np.tensordot(w, preds, axes=1)), rel=1e-12)
    base = np.tensordot(w, obj.stack, axes=1)
    got = obj.affine_losses(base, 0.25)
    want = [m.loss(y, 0.75 * np.tensordot(w, preds, axes=1) + 0.25 * p) for p in preds]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    np.testing.assert_allclose(obj.affine_losses(base, 0.25, np.array([2, 0])), [want[2], want[0]], rtol=1e-12)
    # float32 candidate scans (caruana, hill_climb) stay well inside their 1e-6 rounding
    obj32 = B.LinearLoss(preds, y, m, dtype=np.float32)
    np.testing.assert_allclose(obj32.affine_losses(base.astype(np.float32), 0.25), want, rtol=1e-6)


def test_hill_climb_pruning_is_exact():
    # a model with a non-negative slope at a=0 never improves the blend for a > 0
    preds, y = synth([0.5, 1.0, 3.0, 2.0, 0.2], n_rows=300, n_cols=4, seed=22)
    obj = B.LinearLoss(preds, y, get_metric("log_loss"))
    base = np.tensordot([0.1, 0.1, 0.5, 0.2, 0.1], obj.stack, axes=1)
    keep = set(obj.descent_models(base).tolist())
    current = obj.loss(base)
    grid = np.arange(1, 11) * 0.05
    full = np.array([obj.affine_losses(base, a) for a in grid])  # (n_grid, n_models)
    for i in set(range(5)) - keep:
        assert np.all(full[:, i] >= current - 1e-12)
    # the early-stopping scan finds the move of the full grid scan
    move, loss = B.HillClimb._best_move_convex(obj, base, current, grid)
    g, i = np.unravel_index(np.argmin(full), full.shape)
    assert move == (i, pytest.approx(grid[g])) and loss == pytest.approx(full[g, i])


def test_power_mean_special_cases():
    preds, y = synth([1.0, 2.0, 0.5], n_rows=50, n_cols=4, seed=13)
    one = make_blend("power_mean", power=1).fit(preds, y, "log_loss").predict(preds)
    np.testing.assert_allclose(one, preds.mean(axis=0), rtol=1e-12)
    zero = make_blend("power_mean", power=0).fit(preds, y, "log_loss").predict(preds)
    geo = make_blend("geometric_mean").fit(preds, y, "log_loss").predict(preds)
    np.testing.assert_allclose(zero, geo)


# --------------------------------------------------------------------------- #
# Temperature
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("n_cols", [1, 5])
def test_fit_temperature_undoes_a_planted_temperature(n_cols):
    rng = np.random.default_rng(14)
    z = rng.normal(0, 2.0, size=(4000, n_cols))
    p = _probs(z)
    # labels drawn from p, so p is calibrated
    if n_cols == 1:
        y = (rng.random(4000) < p[:, 0]).astype(int)
    else:
        y = (rng.random(4000)[:, None] > np.cumsum(p, axis=1)).sum(axis=1)
    np.testing.assert_allclose(apply_temperature(p, 1.0), p, atol=1e-12)
    sharpened = apply_temperature(p, 0.5)
    assert fit_temperature(sharpened, y) == pytest.approx(2.0, rel=0.15)


def test_calibrate_keeps_a_temperature_only_when_it_helps():
    rng = np.random.default_rng(15)
    n_rows, c = 1000, 4
    z = rng.normal(0, 2.0, size=(n_rows, c))
    p = _probs(z)
    y = (rng.random(n_rows)[:, None] > np.cumsum(p, axis=1)).sum(axis=1)
    # three under-confident copies: their mean needs a temperature below 1
    soft = np.stack([apply_temperature(p, t) for t in (2.5, 3.0, 3.5)])
    m = get_metric("log_loss")
    plain = make_blend("mean").fit(soft, y, m)
    cal = make_blend("mean", calibrate=True).fit(soft, y, m)
    assert plain.temperature_ == 1.0
    assert cal.temperature_ < 1.0
    assert m(y, cal.predict(soft)) < m(y, plain.predict(soft))
    # not for label metrics
    assert make_blend("mean", calibrate=True).fit(soft, y, "accuracy").temperature_ == 1.0
    # and not when it does not help: the calibrated probabilities themselves
    assert make_blend("mean", calibrate=True).fit(p[None], y, m).temperature_ == pytest.approx(1.0, rel=0.1)


# --------------------------------------------------------------------------- #
# Nested (honest) scoring and selection
# --------------------------------------------------------------------------- #

FITTED_METHODS = [n for n in METHODS if BLEND_METHODS[n].kind != "mean"]


@pytest.mark.parametrize("name", FITTED_METHODS)
def test_nested_is_not_better_than_in_sample_on_pure_noise(name):
    # 20 models of pure noise: anything a blender fits is overfitting
    rng = np.random.default_rng(16)
    n_rows, c = 200, 3
    y = rng.integers(0, c, n_rows)
    preds = _probs(rng.normal(0, 1.0, size=(20, n_rows, c)))
    folds = np.arange(n_rows) % 4
    res = nested_score(name, preds, y, folds, "log_loss", params=fast(name))
    assert res.nested >= res.in_sample
    assert res.gap == pytest.approx(res.nested - res.in_sample)
    assert res.gap > 0


def test_nested_result_fields_and_row_order():
    preds, y = synth([0.5, 1.0, 2.0], n_rows=120, n_cols=3, seed=17)
    folds = np.random.default_rng(0).integers(0, 4, 120)
    res = nested_score("mean", preds, y, folds, "log_loss")
    assert isinstance(res, NestedResult)
    # a mean has nothing to fit: the held-out rows, put back in order, are the mean
    np.testing.assert_allclose(res.oof_pred, preds.mean(axis=0))
    assert res.nested == pytest.approx(res.in_sample)
    assert res.gap == pytest.approx(0.0)
    assert res.weight_std == 0.0
    assert sorted(res.fold_scores) == [0, 1, 2, 3]
    m = get_metric("log_loss")
    for f, s in res.fold_scores.items():
        assert s == pytest.approx(m(y[folds == f], preds.mean(axis=0)[folds == f]))
    assert res.seconds >= 0
    assert res.fitted.weights_ is res.weights

    w = nested_score("caruana", preds, y, folds, "accuracy")
    assert w.weight_std is not None and w.weights.shape == (3,)
    assert w.gap == pytest.approx(w.in_sample - w.nested)  # accuracy: higher is better
    s = nested_score("logreg_stacker", preds, y, folds, "log_loss")
    assert s.weight_std is None and s.weights is None


def test_nested_score_accepts_a_factory_and_a_new_registration():
    @register_blend("_test_best_single")
    class BestSingle(BlendMethod):
        kind = "weights"

        def _fit(self, preds, y, metric, extra):
            losses = [metric.loss(y, p) for p in preds]
            self.weights_ = np.eye(len(preds))[int(np.argmin(losses))]

    try:
        preds, y = synth([0.5, 2.0], n_rows=80, n_cols=2, seed=18)
        folds = np.arange(80) % 2
        res = nested_score(BestSingle, preds, y, folds, "log_loss")
        assert res.method == "_test_best_single"
        np.testing.assert_array_equal(res.weights, [0.0, 1.0])
        assert make_blend("_test_best_single").name == "_test_best_single"
        with pytest.raises(ValueError, match="already registered"):
            register_blend("_test_best_single")(BestSingle)
    finally:
        del BLEND_METHODS["_test_best_single"]


def _result(name, nested):
    return NestedResult(
        method=name,
        params={},
        in_sample=nested,
        nested=nested,
        gap=0.0,
        fold_scores={},
        weight_std=None,
        weights=None,
        oof_pred=np.zeros((1, 1)),
        seconds=0.0,
        fitted=None,
    )


@pytest.mark.parametrize(
    "scores, metric, expected",
    [
        ({"optuna": 0.40, "mean": 0.45, "caruana": 0.41}, "log_loss", "optuna"),
        # a tie goes to the entry listed first: callers list the simpler candidates first
        ({"mean": 0.40, "optuna": 0.40, "caruana": 0.40}, "log_loss", "mean"),
        ({"hill_climb": 0.90, "lgbm_stacker": 0.90}, "accuracy", "hill_climb"),
        ({"mean": 0.80, "logreg_stacker": 0.85}, "accuracy", "logreg_stacker"),
        ({"single-a": 0.5, "slsqp": 0.5}, "roc_auc", "single-a"),  # make ensemble lists single models first
        ({"caruana": 0.40, "mean": 0.40}, "log_loss", "caruana"),  # the given order decides, not the registry's
        # compared rounded to 6 decimals, so float noise does not decide:
        ({"mean": 0.4000004, "caruana": 0.3999996}, "log_loss", "mean"),  # 8e-7 apart, both 0.4: a tie
        ({"mean": 0.9000004, "caruana": 0.9000001}, "accuracy", "mean"),  # 3e-7 apart, both 0.9: a tie
        ({"mean": 0.400001, "caruana": 0.4}, "log_loss", "caruana"),  # 1e-6 apart: not a tie
        ({"mean": 0.9000005, "caruana": 0.900001}, "accuracy", "caruana"),  # rounding, not a tolerance
        ({"mean": float("nan"), "caruana": 0.9}, "log_loss", "caruana"),  # NaN is worst, for either direction
        ({"mean": float("nan"), "caruana": 0.1}, "accuracy", "caruana"),
        ({"mean": float("nan"), "caruana": float("inf")}, "log_loss", "caruana"),
    ],
)
def test_select_method(scores, metric, expected):
    # the "best" rule; one_se agrees on plain scores (no per-fold scores: no standard error to be within)
    results = {k: _result(k, v) for k, v in scores.items()}
    assert select_method(results, metric, rule="best") == expected
    assert select_method(scores, metric, rule="best") == expected
    assert select_method(scores, metric) == expected


def test_select_method_takes_any_keys_in_their_order():
    # make ensemble keys its candidates by position (a method listed twice shares its name)
    scores = [0.8, 0.9000004, 0.8999996, 0.85]
    assert select_method(dict(enumerate(scores)), "accuracy") == 1
    assert select_method(dict(enumerate(scores[::-1])), "accuracy") == 1  # still the first of the tie
    with pytest.raises(ValueError, match="at least one result"):
        select_method({}, "accuracy")


def test_optuna_persistent_study_continues(tmp_path):
    import optuna

    storage = f"sqlite:///{tmp_path / 'blend.db'}"
    preds, y = synth([0.5, 1.0, 2.0], n_rows=100, n_cols=3, seed=19)
    first = make_blend("optuna", n_trials=4, storage=storage, study_name="s").fit(preds, y, "log_loss")
    assert len(first.study_.trials) == 4
    second = make_blend("optuna", n_trials=3, storage=storage, study_name="s").fit(preds, y, "log_loss")
    assert len(second.study_.trials) == 7
    assert len(optuna.load_study(study_name="s", storage=storage).trials) == 7
    # a study built for other predictions is not silently continued
    with pytest.raises(ValueError, match="was created for"):
        make_blend("optuna", n_trials=1, storage=storage, study_name="s").fit(preds[:2], y, "log_loss")
    # nested refits keep throwaway studies in memory; only the all-rows study is stored, and a rerun continues it
    for expected in (2, 4):
        nested_score(
            "optuna",
            preds,
            y,
            np.arange(100) % 2,
            "log_loss",
            params={"n_trials": 2, "storage": storage, "study_name": "n"},
        )
        assert set(optuna.get_all_study_names(storage)) == {"s", "n"}
        assert len(optuna.load_study(study_name="n", storage=storage).trials) == expected


# --------------------------------------------------------------------------- #
# Pruning
# --------------------------------------------------------------------------- #


def _twin(preds, y, toward_truth: float, seed: int = 1):
    """A near copy of ``preds[0]``: a little noise, and ``toward_truth`` of each row's mass moved to its true class."""
    rng = np.random.default_rng(seed)
    twin = np.clip(preds[0] + rng.normal(0, 1e-3, preds[0].shape), 1e-6, None)
    twin /= twin.sum(axis=1, keepdims=True)
    onehot = np.eye(twin.shape[1])[y]
    return (1 - toward_truth) * twin + toward_truth * onehot


@pytest.mark.parametrize("metric", ["log_loss", "accuracy"])
def test_prune_correlated_scores_the_twins_from_y_and_keeps_the_better(metric):
    """Without scores, with y and a metric: each model scored on y (either direction), the better twin kept."""
    preds, y = synth([1.0, 1.5], n_rows=400, n_cols=4, seed=21)
    better = _twin(preds, y, toward_truth=0.02)  # still a twin (correlation > 0.995), and better on y
    stack = np.stack([preds[0], preds[1], better])
    kept, pruned = prune_correlated(stack, metric=metric, y=y)  # the default threshold, 0.995
    assert kept.tolist() == [1, 2] and [p[:2] for p in pruned] == [(0, 2)] and pruned[0][2] >= 0.995
    # the same twins without y: visited by index, the first kept
    assert prune_correlated(stack)[0].tolist() == [0, 1]


def test_prune_correlated_constant_models_are_duplicates_only_when_identical():
    preds, _ = synth([1.0], n_rows=50, n_cols=4, seed=23)
    flat = np.full_like(preds[0], 0.25)
    other = np.tile([0.4, 0.2, 0.2, 0.2], (50, 1))
    stack = np.stack([flat, preds[0], flat.copy(), other])
    kept, pruned = prune_correlated(stack, 0.5)
    # the second uniform model duplicates the first (correlation 1 by identity); the other constant and the real
    # model duplicate nothing, whatever the low threshold
    assert kept.tolist() == [0, 1, 3] and pruned == [(2, 0, 1.0)]


def test_prune_correlated_visits_a_model_without_a_score_last():
    preds, y = synth([1.0, 1.5], n_rows=400, n_cols=4, seed=24)
    twin = _twin(preds, y, toward_truth=0.0)
    stack = np.stack([preds[0], preds[1], twin])
    kept, pruned = prune_correlated(stack, 0.995, np.array([np.nan, 0.7, 0.6]), "log_loss")
    assert kept.tolist() == [1, 2] and pruned[0][:2] == (0, 2)  # the unscored twin gives way, not the scored one


def test_prune_correlated_default_threshold_is_0995():
    preds, y = synth([1.0, 1.5], n_rows=400, n_cols=4, seed=22)
    loose = _twin(preds, y, toward_truth=0.25)  # correlated, but below 0.995
    stack = np.stack([preds[0], loose])
    corr = float(np.corrcoef(stack[0].ravel(), stack[1].ravel())[0, 1])
    assert 0.9 < corr < 0.995
    assert prune_correlated(stack)[0].tolist() == [0, 1]  # kept at the default
    kept, pruned = prune_correlated(stack, corr - 0.001)  # pruned just under its correlation
    assert kept.tolist() == [0] and pruned[0][:2] == (1, 0) and pruned[0][2] == pytest.approx(corr)


def test_prune_correlated_keeps_the_better_duplicate():
    preds, y = synth([1.0, 1.5], n_rows=300, n_cols=4, seed=20)
    rng = np.random.default_rng(0)
    dup = np.clip(preds[0] + rng.normal(0, 1e-4, preds[0].shape), 0, None)
    dup /= dup.sum(axis=1, keepdims=True)
    stack = np.stack([preds[0], preds[1], dup])
    scores = np.array([0.50, 0.60, 0.45])  # log loss: model 2 beats its twin
    kept, pruned = prune_correlated(stack, 0.995, scores, "log_loss")
    assert kept.tolist() == [1, 2]
    assert len(pruned) == 1 and pruned[0][:2] == (0, 2) and pruned[0][2] > 0.995
    # no scores: the lower index is kept
    kept, pruned = prune_correlated(stack, 0.995)
    assert kept.tolist() == [0, 1] and pruned[0][:2] == (2, 0)
    # higher-is-better metric, scores computed from y
    kept, _ = prune_correlated(stack, 0.995, metric="accuracy", y=y)
    assert len(kept) == 2 and 1 in kept
    with pytest.raises(ValueError, match="needs metric"):
        prune_correlated(stack, 0.995, scores)


# --------------------------------------------------------------------------- #
# Errors
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    "name, params, exc, match",
    [
        ("nope", {}, KeyError, r"unknown blend method 'nope'.*known methods: mean, rank_mean"),
        (
            "mean",
            {"power": 2},
            ValueError,
            r"unknown parameter\(s\) 'power' for blend method 'mean'.*valid parameters: calibrate",
        ),
        ("optuna", {"n_trial": 5, "sead": 1}, ValueError, r"'n_trial', 'sead'.*valid parameters: .*n_trials"),
        ("optuna", {"n_trials": 0}, ValueError, r"n_trials must be an int >= 1"),
        ("caruana", {"n_steps": 0}, ValueError, r"n_steps must be an int >= 1"),
        ("caruana", {"bag_fraction": 1.5}, ValueError, r"bag_fraction must be in \(0, 1\]"),
        ("hill_climb", {"step": 0}, ValueError, r"step must be in \(0, 1\]"),
        ("logreg_stacker", {"C": -1}, ValueError, r"C must be > 0"),
    ],
)
def test_make_blend_errors(name, params, exc, match):
    with pytest.raises(exc, match=match):
        make_blend(name, **params)


_P, _Y = synth([1.0, 2.0], n_rows=20, n_cols=3, seed=21)


def _with(arr, index, value):
    arr = arr.copy()
    arr[index] = value
    return arr


@pytest.mark.parametrize(
    "preds, y, extra, match",
    [
        (_P[0], _Y, None, r"preds must be 3-D \(n_models, n_rows, n_cols\); got shape \(20, 3\)"),
        (_with(_P, (1, 5, 2), np.nan), _Y, None, r"1 NaN/inf values, first at model 1, row 5, column 2"),
        (_with(_P, (0, 3, 0), np.inf), _Y, None, r"NaN/inf"),
        (_P * 5 - 2, _Y, None, r"probabilities in \[0, 1\].*apply softmax"),
        (_P * 0.5, _Y, None, r"rows must sum to 1; model 0 row \d+ sums to 0.5"),
        (_P, _Y[:-1], None, r"y has 19 labels but preds has 20 rows"),
        (_P, _Y + 3, None, r"y must hold labels 0..2"),
        (_P, _Y + 0.5, None, r"integer class labels"),
        (_P, _Y, np.ones((19, 2)), r"extra must have shape \(n_rows=20, n_features\)"),
        (_P, _Y, _with(np.ones((20, 2)), (4, 1), np.nan), r"extra contains NaN/inf, first at row 4, feature 1"),
    ],
)
def test_fit_validation_errors(preds, y, extra, match):
    with pytest.raises(ValueError, match=match):
        make_blend("mean").fit(preds, y, "log_loss", extra=extra)


def test_predict_errors():
    with pytest.raises(RuntimeError, match="not fitted"):
        make_blend("mean").predict(_P)
    method = make_blend("slsqp").fit(_P, _Y, "log_loss")
    with pytest.raises(ValueError, match="preds has 1 models but the blend was fitted on 2"):
        method.predict(_P[:1])
    with pytest.raises(ValueError, match="preds has 4 columns but the blend was fitted on 3"):
        method.predict(np.full((2, 5, 4), 0.25))
    with pytest.raises(ValueError, match="at least 2 folds"):
        nested_score("mean", _P, _Y, np.zeros(20), "log_loss")


def test_near_normalised_rows_are_renormalised():
    preds = _P * (1 + 1e-4)  # float16/csv round-off, within tolerance
    pred = make_blend("mean").fit(preds, _Y, "log_loss").predict(preds)
    np.testing.assert_allclose(pred.sum(axis=1), 1.0)


# --------------------------------------------------------------------------- #
# Tasks: validation, objectives, stackers
# --------------------------------------------------------------------------- #

_ML, _YML = make_data("multilabel", [1.0, 2.0], n_rows=20, seed=30)
_REG, _YREG = make_data("regression", [1.0, 2.0], n_rows=20, seed=31)
_ORD, _YORD = make_data("ordinal", [1.0, 2.0], n_rows=20, seed=32)


@pytest.mark.parametrize(
    "task, preds, y, match",
    [
        ("multilabel", _ML, _YML[:, :3], r"multilabel y has 3 label columns but preds has 4"),
        ("multilabel", _ML, _YML[:, 0], r"multilabel y must be a 2-D 0/1 indicator"),
        ("multilabel", _ML, _with(_YML, (3, 2), 2), r"only 0 and 1; first bad value 2 at row 3, label 2"),
        ("multilabel", _ML * 3 - 1, _YML, r"multilabel preds must be probabilities in \[0, 1\].*sigmoid to each label"),
        ("regression", _REG, _with(_YREG, 4, np.nan), r"regression y must be finite; row 4 is nan"),
        ("regression", _REG, np.ones((20, 2)), r"regression y must be 1-D real values"),
        ("regression", np.concatenate([_REG, _REG], axis=2), _YREG, r"regression preds must have exactly 1 column"),
        ("regression", _with(_REG, (1, 2, 0), np.inf), _YREG, r"NaN/inf values, first at model 1, row 2"),
        ("ordinal", _ORD, _YORD - 1, r"ordinal y must hold grade indices 0, 1, 2, ...; got a minimum of -1"),
        ("ordinal", _ORD, _YORD + 0.5, r"ordinal y must hold integer grades"),
        ("multiclass", _P[:, :, :1], _Y % 2, r"multiclass preds need one column per class.*task='binary'"),
        ("binary", _P, _Y, r"binary preds must have exactly 1 column"),
    ],
)
def test_task_validation_errors(task, preds, y, match):
    with pytest.raises(ValueError, match=match):
        make_blend("mean").fit(preds, y, task_metric(task), task=task)


def test_tasks_accept_their_own_shapes():
    # multilabel rows need not sum to 1; values need not lie in [0, 1]; y may be (n, 1) for values
    assert not np.allclose(_ML.sum(axis=2), 1.0)
    make_blend("mean").fit(_ML, _YML.astype(bool), BCE, task="multilabel")
    assert _REG.min() < 0 and _REG.max() > 1
    make_blend("mean").fit(_REG, _YREG[:, None], RMSE, task="regression")
    make_blend("mean").fit(_ORD, _YORD.astype(float), RMSE, task="ordinal")
    # without a task, values read as bad probabilities, and the message points at the task argument
    with pytest.raises(ValueError, match=r"pass task='regression' or task='ordinal'"):
        make_blend("mean").fit(_REG, _YREG, RMSE)
    # predict validates as the fit's task did
    method = make_blend("mean").fit(_REG, _YREG, RMSE, task="regression")
    np.testing.assert_allclose(method.predict(_REG), _REG.mean(axis=0))
    with pytest.raises(ValueError, match="preds has 1 models"):
        method.predict(_REG[:1])


def test_multilabel_fast_log_loss_equals_the_metric():
    preds, y = make_data("multilabel", [0.5, 1.0, 3.0], n_rows=250, seed=33)
    obj = B.LinearLoss(preds, y, BCE, task="multilabel")
    assert obj.fast and obj.stack.shape == (3, 250 * 4)
    w = np.array([0.2, 0.3, 0.5])
    assert obj.weights_loss(w) == pytest.approx(BCE.loss(y, np.tensordot(w, preds, axes=1)), rel=1e-12)
    base = np.tensordot(w, obj.stack, axes=1)
    want = [BCE.loss(y, 0.75 * np.tensordot(w, preds, axes=1) + 0.25 * p) for p in preds]
    np.testing.assert_allclose(obj.affine_losses(base, 0.25), want, rtol=1e-12)
    # a "log_loss" summed over labels is another convention: scored the generic way, never mis-scaled
    summed = local_metric("log_loss", lambda t, p: _bce(t, p) * t.shape[1], False, "proba", ("multilabel",))
    generic = B.LinearLoss(preds, y, summed, task="multilabel")
    assert generic.mode == "metric" and not generic.fast
    assert generic.weights_loss(w) == pytest.approx(summed.loss(y, np.tensordot(w, preds, axes=1)))
    # values are always scored by the metric itself, whatever its name
    reg, yr = make_data("regression", [1.0, 2.0], n_rows=50, seed=34)
    assert B.LinearLoss(reg, yr, RMSE, task="regression").mode == "metric"
    named = local_metric("log_loss", _rmse, False, "value", ("regression",))
    assert B.LinearLoss(reg, yr, named, task="regression").mode == "metric"


def test_slsqp_surrogates_per_task():
    from scipy.optimize import check_grad

    preds, y = make_data("regression", [0.5, 1.0, 2.0], n_rows=200, seed=35)
    obj = B.LinearLoss(preds, y, RMSE, task="regression", force_log_loss=True)
    assert obj.mode == "sq"
    # the squared error in units of the equal-weight blend's RMSE: 1 at equal weights
    assert obj.weights_loss(np.full(3, 1 / 3)) == pytest.approx(1.0)
    method = make_blend("slsqp").fit(preds, y, RMSE, task="regression")
    assert method.surrogate_ is None  # rmse has the squared error's minimiser
    # SLSQP's own analytic gradient is the loss's gradient
    w0 = np.array([0.2, 0.3, 0.5])
    stack = obj.stack
    err = check_grad(obj.weights_loss, lambda w: 2.0 * (stack @ (w @ stack)) / stack.shape[1], w0)
    assert err < 1e-6
    # it minimises the squared error on the simplex: no simplex point nearby does better
    best = m_best = RMSE(y, method.predict(preds))
    rng = np.random.default_rng(0)
    for _ in range(200):
        w = np.clip(method.weights_ + rng.normal(0, 0.02, 3), 0, None)
        m_best = min(m_best, RMSE(y, np.tensordot(w / w.sum(), preds, axes=1)))
    assert best <= m_best + 1e-9
    mae = local_metric(
        "mae", lambda t, p: np.mean(np.abs(t.reshape(-1) - p.reshape(-1))), False, "value", ("regression",)
    )
    assert make_blend("slsqp").fit(preds, y, mae, task="regression").surrogate_ == "squared_error"
    ml, yml = make_data("multilabel", [0.5, 2.0], n_rows=200, seed=36)
    assert make_blend("slsqp").fit(ml, yml, AUC, task="multilabel").surrogate_ == "log_loss"
    assert make_blend("slsqp").fit(ml, yml, BCE, task="multilabel").surrogate_ is None


def test_negative_weights_do_not_clip_values():
    preds, y = make_data("regression", [2.0, 1.9, 0.5, 1.0], n_rows=300, seed=37)
    preds = preds + np.array([3.0, 3.0, 0.0, 0.0])[:, None, None]  # two biased models: a negative weight helps
    method = make_blend("hill_climb", allow_negative=True, step=0.1).fit(preds, y, RMSE, task="regression")
    pred = method.predict(preds)
    np.testing.assert_allclose(pred, np.tensordot(method.weights_, preds, axes=1))
    assert RMSE(y, pred) <= single_model_scores(preds, y, RMSE, task="regression").min() + 1e-12
    # multilabel probabilities are clipped per element, never renormalised
    ml, yml = make_data("multilabel", [2.0, 1.9, 0.5], n_rows=300, seed=38)
    out = make_blend("hill_climb", allow_negative=True, step=0.1).fit(ml, yml, BCE, task="multilabel").predict(ml)
    assert_valid_output(out, "multilabel", 300)


def test_probability_means_work_per_label_on_multilabel():
    preds, y = make_data("multilabel", [1.0, 2.0, 0.5], n_rows=60, seed=39)

    def fit(name):
        return make_blend(name).fit(preds, y, BCE, task="multilabel").predict(preds)

    z = np.log(preds) - np.log1p(-preds)
    np.testing.assert_allclose(fit("logit_mean"), 1.0 / (1.0 + np.exp(-z.mean(axis=0))))
    np.testing.assert_allclose(fit("geometric_mean"), np.exp(np.log(preds).mean(axis=0)))
    from scipy.stats import rankdata

    np.testing.assert_allclose(fit("rank_mean"), ((rankdata(preds, axis=1) - 1) / 59).mean(axis=0))


def test_multilabel_stacker_label_with_one_class_in_the_fitting_rows():
    preds, y = make_data("multilabel", [1.0, 2.0, 3.0], n_rows=200, seed=40)
    y[:, 2] = 0
    y[:5, 2] = 1  # label 2 is positive in fold 0 only: the other folds' refits never see a positive
    folds = np.arange(200) // 50
    for name in ("logreg_stacker", "lgbm_stacker"):
        res = nested_score(name, preds, y, folds, BCE, params=fast(name), task="multilabel")
        assert np.isfinite(res.nested)
        method = make_blend(name, **fast(name)).fit(preds[:, 50:], y[50:], BCE, task="multilabel")
        assert method.label_models_[2] is None and method.label_models_[0] is not None
        # the unlearnable label follows the models' mean rather than a certain 0
        np.testing.assert_allclose(method.predict(preds)[:, 2], preds[:, :, 2].mean(axis=0))


@pytest.mark.parametrize("label_features", ["own", "all"])
def test_multilabel_stacker_label_features(label_features):
    preds, y = make_data("multilabel", [0.3, 3.0], n_rows=200, seed=41)
    method = make_blend("logreg_stacker", C=10.0, label_features=label_features).fit(preds, y, BCE, task="multilabel")
    n_inputs = {"own": 2, "all": 8}[label_features]
    assert all(m[-1].coef_.shape == (1, n_inputs) for m in method.label_models_)
    # lightly penalised, it at least recovers the good model (in-sample)
    assert BCE(y, method.predict(preds)) < single_model_scores(preds, y, BCE, task="multilabel").min()
    with pytest.raises(ValueError, match="label_features must be 'own' or 'all'; got 'each'"):
        make_blend("lgbm_stacker", label_features="each")


def test_value_stackers_correct_the_mean():
    preds, y = make_data("regression", [1.0, 1.0, 3.0], n_rows=300, seed=42)
    preds = preds.copy()
    preds[1] += 5.0  # a biased model: a linear stacker removes the bias, the mean cannot
    ridge = make_blend("logreg_stacker", C=1.0).fit(preds, y, RMSE, task="regression")
    assert RMSE(y, ridge.predict(preds)) < single_model_scores(preds, y, RMSE, task="regression").min()
    # an overwhelming penalty leaves the mean of the kept models (plus the unpenalised intercept)
    strong = make_blend("logreg_stacker", C=1e-9).fit(preds, y, RMSE, task="regression").predict(preds)
    mean = preds.mean(axis=0)
    np.testing.assert_allclose(strong - mean, np.mean(y - mean[:, 0]), atol=1e-6)
    # max_models keeps the best by the task's metric (model 2, then 0; the biased one is out)
    two = make_blend("lgbm_stacker", **fast("lgbm_stacker", max_models=2)).fit(preds, y, RMSE, task="regression")
    assert two.models_.tolist() == [0, 2]
    ml, yml = make_data("multilabel", [0.3, 3.0, 1.0], n_rows=200, seed=43)
    assert make_blend("logreg_stacker", max_models=1).fit(ml, yml, BCE, task="multilabel").models_.tolist() == [1]


@pytest.mark.parametrize("task", NEW_TASKS)
def test_calibrate_is_ignored_quietly_outside_multiclass_and_binary(task):
    preds, y = make_data(task, [0.5, 1.0], n_rows=100, seed=44)
    metric = task_metric(task)  # multilabel: named log_loss, which calibrates multiclass and binary
    method = make_blend("mean", calibrate=True).fit(preds, y, metric, task=task)
    assert method.temperature_ == 1.0
    np.testing.assert_allclose(method.predict(preds), preds.mean(axis=0))


def test_prune_and_single_scores_take_a_task():
    preds, y = make_data("regression", [1.0, 2.0], n_rows=300, seed=45)
    dup = preds[1] + 0.5  # correlation 1, but biased: the worse of the pair
    stack = np.concatenate([preds, dup[None]])
    singles = single_model_scores(stack, y, RMSE, task="regression")
    assert singles[1] < singles[0]
    kept, pruned = prune_correlated(stack, 0.995, metric=RMSE, y=y, task="regression")
    assert kept.tolist() == [0, 1] and pruned[0][:2] == (2, 1)
    ml, yml = make_data("multilabel", [1.0, 2.0], n_rows=300, seed=46)
    kept, _ = prune_correlated(np.concatenate([ml, ml[:1]]), 0.995, metric=BCE, y=yml, task="multilabel")
    assert kept.tolist() == [0, 1]


# --------------------------------------------------------------------------- #
# Decisions inside nested scoring
# --------------------------------------------------------------------------- #


class RecordingDecision:
    """Rounds values to grades, and records what it was fitted on and applied to."""

    log: ClassVar[list] = []  # every instance fitted, in order

    def fit(self, y, pred, metric):
        self.fit_y = np.array(y)
        self.fit_pred = np.array(pred)
        self.applied = []
        RecordingDecision.log.append(self)
        return self

    def apply(self, pred):
        self.applied.append(np.array(pred))
        return np.round(pred)


class Threshold:
    """Binary: the threshold on P(positive) that maximises the metric, from a grid."""

    def fit(self, y, pred, metric):
        grid = np.linspace(0.05, 0.95, 19)
        scores = [metric(y, (pred >= t).astype(float)) for t in grid]
        self.t = grid[int(np.argmax(scores) if metric.greater_is_better else np.argmin(scores))]
        return self

    def apply(self, pred):
        return (pred >= self.t).astype(float)


class Memorise:
    """Remembers each training row's label by its prediction: perfect in-sample, useless elsewhere."""

    def fit(self, y, pred, metric):
        self.table = {row.tobytes(): label for row, label in zip(pred, y)}
        return self

    def apply(self, pred):
        return np.array([[float(self.table.get(row.tobytes(), 0.0))] for row in pred])


@pytest.mark.parametrize("name", ["mean", "caruana", "logreg_stacker"])
def test_decision_never_sees_the_held_out_rows(name):
    # regression targets are distinct per row, so the rows a decision was fitted on can be identified
    preds, y = make_data("ordinal", [1.0, 2.0, 0.5], n_rows=120, seed=47)
    y = y + np.arange(120) * 1e-3  # read as regression: unique
    folds = np.random.default_rng(0).integers(0, 4, 120)
    RecordingDecision.log = []
    res = nested_score(name, preds, y, folds, RMSE, params=fast(name), task="regression", decision=RecordingDecision)
    log = RecordingDecision.log
    assert len(log) == 5  # one per fold, then the all-rows one
    for f, dec in zip(range(4), log):
        np.testing.assert_array_equal(dec.fit_y, y[folds != f])  # training rows only, in order
        assert len(dec.applied) == 1 and len(dec.applied[0]) == (folds == f).sum()
        # fitted on the fold method's in-sample predictions of its own training rows
        train = preds[:, folds != f]
        refit = make_blend(name, **fast(name)).fit(train, y[folds != f], RMSE, task="regression")
        np.testing.assert_allclose(dec.fit_pred, refit.predict(train))
        np.testing.assert_array_equal(res.oof_pred[folds == f], np.round(dec.applied[0]))
    assert res.decision is log[-1]
    np.testing.assert_array_equal(log[-1].fit_y, y)
    np.testing.assert_allclose(log[-1].fit_pred, res.fitted.predict(preds))
    assert res.in_sample == pytest.approx(RMSE(y, np.round(res.fitted.predict(preds))))
    assert res.nested == pytest.approx(RMSE(y, res.oof_pred))
    assert res.fold_scores[2] == pytest.approx(RMSE(y[folds == 2], res.oof_pred[folds == 2]))


def test_threshold_decision_on_binary():
    preds, y = synth([0.5, 1.5], n_rows=400, n_cols=1, seed=48)
    f1 = local_metric(
        "f1",
        lambda t, p: (
            2 * np.sum((p.reshape(-1) >= 0.5) & (t == 1)) / max(1, np.sum(p.reshape(-1) >= 0.5) + np.sum(t == 1))
        ),
        True,
        "label",
        ("binary",),
    )
    folds = np.arange(400) % 4
    plain = nested_score("slsqp", preds, y, folds, f1)
    decided = nested_score("slsqp", preds, y, folds, f1, decision=Threshold)
    assert set(np.unique(decided.oof_pred)) <= {0.0, 1.0}
    assert isinstance(decided.decision, Threshold) and plain.decision is None
    assert np.isfinite(decided.nested) and decided.gap == pytest.approx(decided.in_sample - decided.nested)



def test_threshold_decision_beats_half_on_models_that_under_predict_the_positive_class():
    # the same models, their logits shifted down by 1.5: at 0.5 most positives are missed, and a tuned threshold
    # (fitted on the training rows of each fold) must recover them on the held-out rows too
    preds, y = synth([0.5, 1.5], n_rows=400, n_cols=1, seed=48)
    preds = _probs(np.log(preds / (1 - preds)) - 1.5)
    f1 = local_metric("f1", lambda t, p: 2 * np.sum((p.reshape(-1) >= 0.5) & (t == 1)) /
                      max(1, np.sum(p.reshape(-1) >= 0.5) + np.sum(t == 1)), True, "label", ("binary",))
    folds = np.arange(400) % 4
    plain = nested_score("slsqp", preds, y, folds, f1)
    decided = nested_score("slsqp", preds, y, folds, f1, decision=Threshold)
    assert decided.decision.t < 0.5
    at_half = f1(y, decided.fitted.predict(preds))        # the same blend's predictions, cut at 0.5
    assert decided.in_sample > at_half + 0.1
    assert decided.nested > plain.nested + 0.1             # out of sample too


def test_mean_shortcut_nests_the_decision():
    # a memorising decision is perfect on the rows it saw: honest nesting must expose it
    preds, y = synth([0.5, 1.0], n_rows=200, n_cols=1, seed=49)
    acc = get_metric("accuracy")
    folds = np.arange(200) % 4
    res = nested_score("mean", preds, y, folds, acc, decision=Memorise)
    assert res.in_sample == 1.0
    assert res.nested < 0.75 and res.gap > 0.25
    assert res.fitted.weights_ is res.weights and isinstance(res.decision, Memorise)
    # and without a decision the shortcut still scores once, with no gap
    assert nested_score("mean", preds, y, folds, acc).gap == 0.0


def test_decision_errors():
    preds, y = synth([0.5, 1.0], n_rows=40, n_cols=1, seed=50)
    folds = np.arange(40) % 2

    class WrongShape(Threshold):
        def apply(self, pred):
            return super().apply(pred)[:, 0]

    with pytest.raises(ValueError, match=r"WrongShape.apply returned shape \(20,\) for predictions of shape \(20, 1\)"):
        nested_score("mean", preds, y, folds, "accuracy", decision=WrongShape)
    with pytest.raises(TypeError, match="zero-argument factory"):
        nested_score("caruana", preds, y, folds, "accuracy", decision=Threshold())
    with pytest.raises(TypeError, match=r"fit\(y, pred, metric\) and apply\(pred\)"):
        nested_score("caruana", preds, y, folds, "accuracy", decision=lambda: object())


def test_multilabel_own_label_inputs_with_extra():
    # label l's model reads every kept model's logit of label l, then the extra features
    preds, y = make_data("multilabel", [0.5, 1.0, 2.0], n_rows=100, seed=51)
    extra = np.random.default_rng(1).normal(size=(100, 2))
    method = make_blend("logreg_stacker", max_models=2).fit(preds, y, BCE, extra=extra, task="multilabel")
    x = method._label_inputs(method._features(preds, extra), 3, 4)
    logit = np.log(preds) - np.log1p(-preds)
    np.testing.assert_allclose(x, np.column_stack([logit[1, :, 3], logit[2, :, 3], extra]), rtol=1e-6)


# --------------------------------------------------------------------------- #
# The test set: per fold model, then averaged (issue 18)
# --------------------------------------------------------------------------- #


def test_per_fold_application_equals_the_hand_computed_blend():
    # 2 models x 2 fold models x 2 test rows, binary: the geometric mean of fold k's two models, then the mean over k
    fold_preds = np.array([[[[0.9], [0.2]], [[0.5], [0.4]]], [[[0.6], [0.1]], [[0.7], [0.8]]]])
    y = np.array([1, 0, 1, 0])
    oof = np.array([[[0.8], [0.3], [0.6], [0.2]], [[0.7], [0.2], [0.9], [0.4]]])
    geo = make_blend("geometric_mean").fit(oof, y, "log_loss")
    fold0 = np.sqrt([0.9 * 0.6, 0.2 * 0.1])
    fold1 = np.sqrt([0.5 * 0.7, 0.4 * 0.8])
    np.testing.assert_allclose(B.predict_per_fold(geo, fold_preds)[:, 0], (fold0 + fold1) / 2)
    # the former way: the geometric mean of the fold means, a different number for a nonlinear blend
    means = fold_preds.mean(axis=1)[:, :, 0]
    np.testing.assert_allclose(B.predict_fold_mean(geo, fold_preds)[:, 0], np.sqrt(means[0] * means[1]))
    assert not np.allclose(B.predict_per_fold(geo, fold_preds), B.predict_fold_mean(geo, fold_preds))
    # a linear blend without a temperature gives the same predictions either way
    lin = make_blend("mean").fit(oof, y, "log_loss")
    np.testing.assert_allclose(B.predict_per_fold(lin, fold_preds), B.predict_fold_mean(lin, fold_preds))
    # a temperature is applied where it was fitted: to each fold's blend, before the mean over folds
    lin.temperature_ = 0.5
    expected = np.mean([apply_temperature(fold_preds[:, k].mean(axis=0), 0.5) for k in range(2)], axis=0)
    np.testing.assert_allclose(B.predict_per_fold(lin, fold_preds), expected)
    np.testing.assert_allclose(
        B.predict_test(lin, fold_preds.mean(axis=1), None, "per_fold"), B.predict_fold_mean(lin, fold_preds)
    )  # nothing per fold stored: the fold means
    with pytest.raises(ValueError, match="apply mode"):
        B.predict_test(lin, fold_preds.mean(axis=1), fold_preds, "mean")


def test_per_fold_application_keeps_multiclass_rows_on_the_simplex():
    rng = np.random.default_rng(3)
    fold_preds = _probs(rng.normal(0, 2, size=(3, 4, 7, 5)).reshape(-1, 5)).reshape(3, 4, 7, 5)
    oof = _probs(rng.normal(0, 2, size=(3 * 40, 5))).reshape(3, 40, 5)
    y = rng.integers(0, 5, 40)
    for name in ("logit_mean", "slsqp", "logreg_stacker"):
        pred = B.predict_per_fold(make_blend(name, **fast(name)).fit(oof, y, "log_loss"), fold_preds)
        assert pred.shape == (7, 5)
        np.testing.assert_allclose(pred.sum(axis=1), 1.0)


# --------------------------------------------------------------------------- #
# The one-standard-error rule
# --------------------------------------------------------------------------- #


def test_one_se_rule_picks_the_simplest_candidate_within_one_standard_error():
    S = B.Scored
    best = S(0.400, {0: 0.38, 1: 0.42, 2: 0.40, 3: 0.41, 4: 0.39}, simplicity=2)  # slsqp-like: the best score
    # the mean is 0.001 worse; its per-fold differences to the best: +0.006, -0.003, +0.004, -0.004, +0.002
    close_mean = S(0.401, {0: 0.386, 1: 0.417, 2: 0.404, 3: 0.406, 4: 0.392}, simplicity=0)
    diffs = np.array([0.006, -0.003, 0.004, -0.004, 0.002])
    se = diffs.std(ddof=1) / np.sqrt(5)
    assert se > 0.001  # so the mean is within one SE
    stacker = S(0.401, {0: 0.381, 1: 0.421, 2: 0.401, 3: 0.411, 4: 0.391}, simplicity=3)
    results = {"slsqp": best, "mean": close_mean, "logreg_stacker": stacker}
    assert select_method(results, "log_loss") == "mean"
    assert select_method(results, "log_loss", rule="best") == "slsqp"
    errors = B.standard_errors(results, "log_loss")
    assert errors["mean"] == pytest.approx(se)
    assert errors["logreg_stacker"] == pytest.approx(0.0, abs=1e-12)  # always exactly 0.001 worse
    assert errors["slsqp"] == pytest.approx(np.std([0.38, 0.42, 0.40, 0.41, 0.39], ddof=1) / np.sqrt(5))
    # the stacker is 0.001 worse on every fold: SE 0, so it is not within, though closer than the mean
    assert select_method({"slsqp": best, "logreg_stacker": stacker}, "log_loss") == "slsqp"
    # a mean worse on every fold by more than its spread is not within either
    far_mean = S(0.410, {f: v + 0.010 + 0.001 * (f % 2) for f, v in best.fold_scores.items()}, simplicity=0)
    assert select_method({"slsqp": best, "mean": far_mean}, "log_loss") == "slsqp"
    # equally simple candidates within one SE: the better nested score; for a higher-is-better metric too
    # (a single model ranks with the weight searches: the weight vector with one weight 1)
    acc = {
        "caruana": S(0.90, {0: 0.91, 1: 0.89}, 2),
        "optuna": S(0.91, {0: 0.93, 1: 0.89}, 2),
        "single-a": S(0.905, {0: 0.90, 1: 0.91}, 2),
        "mean": S(0.90, {0: 0.92, 1: 0.88}, 0),
    }
    assert select_method(acc, "accuracy") == "optuna"  # the mean is 0.01 worse on both folds: SE 0, not within
    acc["mean"] = S(0.90, {0: 0.93, 1: 0.87}, 0)  # differences 0 and -0.02: SE 0.01, 0.01 worse: within
    assert select_method(acc, "accuracy") == "mean"
    with pytest.raises(ValueError, match="selection rule"):
        select_method(results, "log_loss", rule="lowest")


def test_one_se_rule_reads_nested_results_and_the_registry_simplicity():
    from benchmarks.blend import synthetic_oof

    preds, y = synthetic_oof(5, 300, 3, seed=21)
    folds = np.arange(300) % 5
    results = {
        name: nested_score(name, preds, y, folds, "log_loss", params=fast(name))
        for name in ("mean", "caruana", "slsqp")
    }
    chosen = select_method(results, "log_loss")
    errors = B.standard_errors(results, "log_loss")
    best = min(results, key=lambda k: results[k].nested)
    assert results[chosen].nested - results[best].nested <= errors[chosen] + 1e-9
    simpler = [k for k in results if BLEND_METHODS[k].simplicity < BLEND_METHODS[chosen].simplicity]
    assert all(results[k].nested - results[best].nested > errors[k] for k in simpler)


# --------------------------------------------------------------------------- #
# Temperature kept by nested CV; optuna's budget
# --------------------------------------------------------------------------- #


def test_temperature_is_kept_only_when_nested_cv_says_it_helps():
    rng = np.random.default_rng(22)
    n_rows, c = 600, 3
    p = _probs(rng.normal(0, 1.5, size=(n_rows, c)))
    y = (rng.random(n_rows)[:, None] > np.cumsum(p, axis=1)).sum(axis=1)
    folds = np.arange(n_rows) % 5
    m = get_metric("log_loss")
    # calibrated models: the in-sample fit still finds a temperature that helps on its own rows, by a hair
    calibrated = np.stack([p, apply_temperature(p, 1.02)])
    res = nested_score("mean", calibrated, y, folds, m, params={"calibrate": True})
    assert res.nested_calibrated is not None and res.nested_uncalibrated is not None
    # ... which does not carry to held-out rows: nested CV drops it
    assert res.temperature_in_sample != 1.0 and res.nested_calibrated >= res.nested_uncalibrated
    assert res.fitted.temperature_ == 1.0 and res.nested == res.nested_uncalibrated
    # under-confident models: the temperature helps out of sample too, and is kept
    soft = np.stack([apply_temperature(p, t) for t in (2.5, 3.0)])
    res = nested_score("mean", soft, y, folds, m, params={"calibrate": True})
    assert res.nested_calibrated < res.nested_uncalibrated
    assert res.fitted.temperature_ < 1.0 and res.nested == res.nested_calibrated
    # the former rule keeps whatever the in-sample fit kept
    old = nested_score("mean", calibrated, y, folds, m, params={"calibrate": True}, calibration="in_sample")
    assert old.fitted.temperature_ == old.temperature_in_sample


def test_optuna_default_budget_and_continuing_a_study():
    from benchmarks.blend import synthetic_oof
    from pipeline.config import EnsembleConfig

    assert EnsembleConfig().optuna_trials == 100
    preds, y = synthetic_oof(6, 300, 3, seed=4)
    first = make_blend("optuna", n_trials=10).fit(preds, y, "log_loss")
    record = first.trials_record()
    assert len(record) == 10
    again = make_blend("optuna", n_trials=5, previous_trials=record).fit(preds, y, "log_loss")
    assert len(again.study_.trials) == 15  # continued: the 10 earlier trials, then 5 more
    assert again.study_.best_value <= first.study_.best_value
    with pytest.raises(ValueError, match="other models"):
        make_blend("optuna", n_trials=1, previous_trials=record).fit(preds[:4], y, "log_loss")


# --------------------------------------------------------------------------- #
# The real-data benchmark's selection variants (benchmarks.real) against the one rule

_S = B.Scored
_BEST = {0: 0.38, 1: 0.42, 2: 0.40, 3: 0.41, 4: 0.39}


@pytest.mark.parametrize(
    "others, within",
    [
        # worse by 0.001 with per-fold differences of spread > 0.001: within
        ({"mean": _S(0.401, {0: 0.386, 1: 0.417, 2: 0.404, 3: 0.406, 4: 0.392}, 0)}, {"slsqp", "mean"}),
        # worse by exactly 0.001 on every fold: SE 0, not within
        ({"stacker": _S(0.401, {f: v + 0.001 for f, v in _BEST.items()}, 3)}, {"slsqp"}),
        # the same nested score as the best (a tie): within, whatever its spread
        (
            {"single-a": _S(0.400, {f: v + (0.01 if f % 2 else -0.01) for f, v in _BEST.items()}, 2)},
            {"slsqp", "single-a"},
        ),
    ],
)
def test_bench_one_se_set_is_the_rules(others, within):
    from benchmarks.real import _within_one_se

    results = {"slsqp": _S(0.400, _BEST, 2), **others}
    assert set(_within_one_se(results, None)) == within
    order = list(results)  # ties go to the earlier candidate, as in select_method
    simplest = min(within, key=lambda k: (results[k].simplicity, results[k].nested, order.index(k)))
    assert select_method(results, "log_loss") == simplest


@pytest.mark.parametrize(
    "others, own_set, weights_first",
    [
        # a mean within the paired SE: one_se takes it, weights-before-means keeps the best weight search
        ({"mean": _S(0.401, {0: 0.386, 1: 0.417, 2: 0.404, 3: 0.406, 4: 0.392}, 0)}, {"slsqp", "mean"}, "slsqp"),
        # worse by 0.005 on every fold: outside the paired set (SE 0), inside the best's own SE (0.0071)
        ({"stacker": _S(0.405, {f: v + 0.005 for f, v in _BEST.items()}, 3)}, {"slsqp", "stacker"}, "slsqp"),
        # worse by 0.008: outside both
        ({"single-a": _S(0.408, {f: v + 0.008 for f, v in _BEST.items()}, 2)}, {"slsqp"}, "slsqp"),
    ],
)
def test_bench_issue31_selection_sets(others, own_set, weights_first):
    from benchmarks.real import _weights_before_means, _within_one_se, _within_own_se

    results = {"slsqp": _S(0.400, _BEST, 2), **others}
    assert np.std(list(_BEST.values()), ddof=1) / np.sqrt(5) == pytest.approx(0.00707, abs=1e-5)
    assert set(_within_own_se(results)) == own_set
    assert _weights_before_means(results, _within_one_se(results, None)) == weights_first
    # a weight search in the set is taken even over a mean with a better nested score; a mean alone is kept
    assert _weights_before_means({"mean": _S(0.39, _BEST, 0), **results}, ["mean", "slsqp"]) == "slsqp"
    assert _weights_before_means({"mean": _S(0.39, _BEST, 0)}, ["mean"]) == "mean"


def test_bench_selection_variants_score_what_they_submit():
    from benchmarks.blend import synthetic_oof
    from benchmarks.real import Library, _fold_scores, selection_variants

    preds, y = synthetic_oof(4, 200, 3, seed=3)
    test_preds, y_test = synthetic_oof(4, 80, 3, seed=4)
    folds = np.arange(200) % 5
    metric = get_metric("log_loss")
    lib = Library(
        "toy/s0", [f"m{i}" for i in range(4)], preds, y, folds, np.repeat(test_preds[:, None], 5, axis=1), y_test
    )
    scored, nested, tests = {}, {}, {}
    for i in range(4):
        key = f"single-m{i}"
        scored[key] = _S(metric(y, preds[i]), _fold_scores(metric, y, preds[i], folds), 2)
        nested[key], tests[key] = preds[i], test_preds[i]
    res = nested_score("mean", preds, y, folds, metric)
    scored["mean"] = _S(res.nested, res.fold_scores, 0)
    nested["mean"], tests["mean"] = res.oof_pred, res.fitted.predict(test_preds)
    best_single = min((k for k in scored if k != "mean"), key=lambda k: scored[k].nested)
    fold_tests = {f"single-m{i}": lib.fold_tests[i] for i in range(4)}
    fold_tests["mean"] = blend_each_fold(res.fitted, lib.fold_tests)
    variants = selection_variants(scored, nested, tests, best_single, lib, fold_tests)
    assert variants["one_se (main)"]["chosen"] == select_method(scored, metric)
    # every fold model predicts the same here: nothing to gain from averaging, so the expected score is the nested one
    assert variants["expected, one_se"]["chosen"] == variants["one_se (main)"]["chosen"]
    assert variants["expected, best"]["chosen"] == variants["best"]["chosen"]
    assert variants["best"]["chosen"] == select_method(scored, metric, rule="best")
    for name, v in variants.items():
        assert np.isfinite(v["test"]) and np.isfinite(v["nested"]), name
        if v["chosen"] in scored:
            assert v["nested"] == pytest.approx(scored[v["chosen"]].nested)
            assert v["test"] == pytest.approx(metric(y_test, tests[v["chosen"]]))


def test_bench_repeated_kfold_library_is_the_mean_of_its_splits(tmp_path, monkeypatch):
    """``--repeats 2``: each OOF row and fold slice is the mean of two splits' predictions, refitted by hand here."""
    import benchmarks.real as real
    from sklearn.model_selection import StratifiedKFold
    from sklearn.naive_bayes import GaussianNB

    monkeypatch.setattr(real, "model_zoo", lambda seed: {"naive_bayes": GaussianNB()})
    one = real.build_library("digits", 3, tmp_path)
    two = real.build_library("digits", 3, tmp_path, repeats=2)
    assert (two.repeats, one.repeats) == (2, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits_s3.npz", "digits_s3_repeat1.npz"]
    np.testing.assert_array_equal(two.folds, one.folds)  # the nested CV keeps the first split's folds
    np.testing.assert_array_equal(two.y, one.y)
    x_train, x_test, y, _ = real._split_data("digits", 3)
    np.testing.assert_array_equal(y, one.y)
    oof, fold_tests = np.zeros_like(one.oof[0]), np.zeros_like(one.fold_tests[0])
    for k, (fit, held) in enumerate(StratifiedKFold(5, shuffle=True, random_state=3001).split(x_train, y)):
        model = GaussianNB().fit(x_train[fit], y[fit])
        oof[held] = real._proba(model, x_train[held], 10)
        fold_tests[k] = real._proba(model, x_test, 10)
    assert not np.allclose(oof, one.oof[0])  # the second split is another split
    np.testing.assert_allclose(two.oof[0], (one.oof[0] + oof) / 2, atol=1e-12)
    np.testing.assert_allclose(two.fold_tests[0], (one.fold_tests[0] + fold_tests) / 2, atol=1e-12)
    # read back from the cache, the same library
    again = real.build_library("digits", 3, tmp_path, repeats=2)
    np.testing.assert_array_equal(again.oof, two.oof)
    with pytest.raises(SystemExit):
        real.main(["--repeats", "0", "--cache", str(tmp_path)])


# --------------------------------------------------------------------------- #
# nested_score against the same refits made by hand with the public API


@pytest.mark.parametrize("name, metric", [("caruana", "log_loss"), ("slsqp", "accuracy"),
                                          ("logreg_stacker", "log_loss")])
def test_nested_score_is_the_fold_refits_made_by_hand(name, metric):
    preds, y = synth([0.5, 1.0, 1.5], n_rows=240, n_cols=3, seed=31)
    # a feature that knows the class of a third of the rows: only a stacker reads it, and only if it is passed
    rng = np.random.default_rng(31)
    extra = np.eye(3)[y] * (rng.random(240) < 0.33)[:, None]  # one-hot where known, zeros elsewhere
    folds = np.arange(240) % 4
    params = fast(name)
    m = get_metric(metric)
    by_hand = np.empty((240, 3))
    weights, fold_scores = [], {}
    for f in range(4):
        train, test = folds != f, folds == f
        method = make_blend(name, **params).fit(preds[:, train], y[train], m, extra=extra[train])
        by_hand[test] = method.predict(preds[:, test], extra[test])
        fold_scores[f] = m(y[test], by_hand[test])
        if method.weights_ is not None:
            weights.append(method.weights_)
    full = make_blend(name, **params).fit(preds, y, m, extra=extra)

    started = time.perf_counter()
    res = nested_score(name, preds, y, folds, metric, extra=extra, params=params)
    elapsed = time.perf_counter() - started

    np.testing.assert_allclose(res.oof_pred, by_hand, atol=1e-9)
    assert res.nested == pytest.approx(m(y, by_hand), abs=1e-12)
    assert res.fold_scores == pytest.approx(fold_scores, abs=1e-12)
    assert res.in_sample == pytest.approx(m(y, full.predict(preds, extra)), abs=1e-12)
    assert res.method == name and res.params == full.params
    assert 0 < res.seconds <= elapsed
    if weights:
        # the mean over models of each weight's spread across the four refits
        assert res.weight_std == pytest.approx(float(np.std(np.stack(weights), axis=0).mean()), abs=1e-12)
        np.testing.assert_allclose(res.weights, full.weights_)
    else:
        assert res.weight_std is None and res.weights is None
        # the feature reached every refit: without it the stacker scores worse on the held-out rows
        blind = nested_score(name, preds, y, folds, metric, params=params)
        assert m.loss(y, res.oof_pred) < m.loss(y, blind.oof_pred) - 0.05


def test_nested_score_gives_a_persistent_study_to_the_all_rows_fit_only():
    # the fold refits are throwaway: a stored study (storage, study_name, earlier trials) would mix their trials
    # with the all-rows fit's, so they start fresh in memory and only the all-rows fit continues the study
    preds, y = synth([0.5, 1.0], n_rows=80, n_cols=2, seed=32)
    record = make_blend("optuna", n_trials=3).fit(preds, y, "log_loss").trials_record()
    given = []

    def factory(**params):
        given.append(params)
        return make_blend("optuna", **params)

    nested_score(factory, preds, y, np.arange(80) % 2, "log_loss",
                 params={"n_trials": 2, "previous_trials": record, "study_name": "kept"})
    *refits, last = given
    assert len(refits) == 2
    for params in refits:
        assert params["previous_trials"] is None and params["storage"] is None and params["study_name"] is None
        assert params["n_trials"] == 2
    assert last == {"n_trials": 2, "previous_trials": record, "study_name": "kept"}


def test_nested_score_names_an_inapplicable_method_before_fitting():
    preds, y = synth([0.5, 1.0], n_rows=40, n_cols=1, seed=33)
    values = preds[..., :1] * 3.0
    reason = not_applicable_reason("rank_mean", "regression")
    with pytest.raises(NotApplicable) as info:
        nested_score("rank_mean", values, y * 1.5, np.arange(40) % 2, "rmse", task="regression")
    assert str(info.value) == reason
    # before the arrays are checked: a method that cannot apply is the first thing to fix
    with pytest.raises(NotApplicable) as info:
        nested_score("rank_mean", values, y[:39] * 1.5, np.arange(40) % 2, "rmse", task="regression")
    assert str(info.value) == reason


def test_rank_mean_scores_each_held_out_row_ranked_among_all_rows():
    # rank_mean learns nothing from the labels, but a row's rank depends on the rows it is ranked with: the nested
    # figure ranks the held-out rows among all the rows, as the all-rows blend that predicts them does
    preds, y = synth([0.5, 1.0, 1.5], n_rows=90, n_cols=1, seed=34)
    folds = np.arange(90) % 3
    res = nested_score("rank_mean", preds, y, folds, "roc_auc")
    np.testing.assert_allclose(res.oof_pred, make_blend("rank_mean").fit(preds, y, "roc_auc").predict(preds))
    per_fold = make_blend("rank_mean").fit(preds[:, folds == 0], y[folds == 0], "roc_auc").predict(preds[:, folds == 0])
    assert not np.allclose(res.oof_pred[folds == 0], per_fold)  # the fold's own ranks differ


def test_nested_score_without_calibrate_reports_no_calibrated_figures():
    preds, y = synth([0.5, 1.0], n_rows=80, n_cols=3, seed=35)
    res = nested_score("caruana", preds, y, np.arange(80) % 2, "log_loss")
    assert res.nested_calibrated is None and res.nested_uncalibrated is None
    assert res.temperature_in_sample == 1.0 and res.fitted.temperature_ == 1.0


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"calibration": "always"}, ValueError, r"^calibration must be 'nested' or 'in_sample'; got 'always'$"),
    ({"folds": np.zeros(39)}, ValueError, r"^folds must have shape \(40,\), one fold id per OOF row; got \(39,\)$"),
    ({"extra": np.zeros((39, 2))}, ValueError, r"^extra must have shape \(n_rows=40, n_features\); got \(39, 2\)$"),
])
def test_nested_score_errors_name_the_bad_value(kwargs, exc, match):
    preds, y = synth([0.5, 1.0], n_rows=40, n_cols=1, seed=36)
    args = {"folds": np.arange(40) % 2, **kwargs}
    folds = args.pop("folds")
    with pytest.raises(exc, match=match):
        nested_score("logreg_stacker", preds, y, folds, "log_loss", **args)


class _FitOnly:
    def fit(self, y, pred, metric):
        return self


class _FitReturnsNone(Threshold):
    def fit(self, y, pred, metric):
        super().fit(y, pred, metric)  # fitted in place, returns nothing (allowed: the decision itself is kept)


class _FitReturnsAnother:
    """fit returns a new, fitted object; this one cannot apply (only what fit returned is used)."""

    def fit(self, y, pred, metric):
        return Threshold().fit(y, pred, metric)

    def apply(self, pred):
        raise AssertionError("the unfitted decision was applied")


def test_a_decision_is_what_its_fit_returns_or_itself():
    preds, y = synth([0.5, 1.0], n_rows=60, n_cols=1, seed=37)
    folds = np.arange(60) % 3
    reference = nested_score("slsqp", preds, y, folds, "accuracy", decision=Threshold)
    for decision in (_FitReturnsNone, _FitReturnsAnother):
        res = nested_score("slsqp", preds, y, folds, "accuracy", decision=decision)
        np.testing.assert_array_equal(res.oof_pred, reference.oof_pred)
        assert res.decision.t == reference.decision.t
    assert isinstance(nested_score("slsqp", preds, y, folds, "accuracy", decision=_FitReturnsNone).decision,
                      _FitReturnsNone)
    with pytest.raises(TypeError, match=r"fit\(y, pred, metric\) and apply\(pred\); got <.*_FitOnly"):
        nested_score("slsqp", preds, y, folds, "accuracy", decision=_FitOnly)


# --------------------------------------------------------------------------- #
# The selection rule's inputs, standard errors and ties, by hand


def test_shift_scored_moves_the_score_and_every_fold_by_the_same_amount():
    moved = B.shift_scored(B.Scored(0.40, {0: 0.38, 1: 0.42}, simplicity=3), -0.05)
    assert moved.nested == pytest.approx(0.35) and moved.simplicity == 3
    assert moved.fold_scores == pytest.approx({0: 0.33, 1: 0.37})
    unknown = B.shift_scored(B.Scored(0.40, None, 0), 0.01)
    assert unknown.nested == pytest.approx(0.41) and unknown.fold_scores is None and unknown.simplicity == 0


def test_nested_results_rank_by_their_registered_simplicity():
    folds = np.array([0.38, 0.42, 0.40, 0.41, 0.39])

    def result(name, nested, differences):
        return dataclasses.replace(_result(name, nested), fold_scores=dict(enumerate(folds + differences)))

    # both within one SE of the stacker (the best; per-fold differences that vary): the mean (simplicity 0) first
    results = {"single-a": result("single-a", 0.4005, np.array([0.003, -0.002, 0.002, -0.002, 0.0015])),
               "mean": result("mean", 0.401, np.array([0.006, -0.003, 0.004, -0.004, 0.002])),
               "logreg_stacker": result("logreg_stacker", 0.400, np.zeros(5))}
    assert select_method(results, "log_loss") == "mean"
    # a name the registry does not know (a single model) ranks with the weight searches (2), before a stacker (3)
    del results["mean"]
    assert select_method(results, "log_loss") == "single-a"
    # a result with an empty mapping of fold scores has none: no standard error
    assert np.isnan(B.standard_errors({"a": _result("a", 0.4), "b": results["single-a"]}, "log_loss")["b"])


def test_standard_errors_are_taken_against_the_best_in_the_metrics_direction():
    high = B.Scored(0.90, {0: 0.91, 1: 0.89, 2: 0.90})
    low = B.Scored(0.80, {0: 0.80, 1: 0.82, 2: 0.78})
    errors = B.standard_errors({"low": low, "high": high}, "accuracy")
    assert errors["high"] == pytest.approx(np.std([0.91, 0.89, 0.90], ddof=1) / np.sqrt(3))  # the best: its own
    assert errors["low"] == pytest.approx(np.std([-0.11, -0.07, -0.12], ddof=1) / np.sqrt(3))  # against the best
    # the best is found as select_method finds it, rounded to 6 decimals: 8e-7 apart is a tie, the first wins
    first = B.Scored(0.4000004, {0: 0.30, 1: 0.50})
    second = B.Scored(0.3999996, {0: 0.35, 1: 0.45})
    for metric in ("log_loss", "accuracy"):
        errors = B.standard_errors({"first": first, "second": second}, metric)
        assert errors["first"] == pytest.approx(np.std([0.30, 0.50], ddof=1) / np.sqrt(2))
        assert errors["second"] == pytest.approx(np.std([0.05, -0.05], ddof=1) / np.sqrt(2))
    assert B.standard_errors({}, "accuracy") == {}


@pytest.mark.parametrize("best_folds, cand_folds", [
    ({0: 0.4, 1: 0.5}, None),           # the candidate has no per-fold scores
    (None, {0: 0.4, 1: 0.5}),           # the best has none
    ({0: 0.4, 1: 0.5}, {1: 0.5, 2: 0.6}),  # one fold in common: no spread to measure
])
def test_standard_error_is_nan_without_two_common_folds(best_folds, cand_folds):
    errors = B.standard_errors({"best": B.Scored(0.4, best_folds), "cand": B.Scored(0.5, cand_folds)}, "log_loss")
    assert np.isnan(errors["cand"])


def test_one_se_ties_and_nan_candidates():
    # without per-fold scores a candidate is within only on an equal (rounded) score, and then the simpler wins
    tied = {"slsqp": B.Scored(0.4, {0: 0.38, 1: 0.42}, 2), "mean": B.Scored(0.4000001, None, 0)}
    assert select_method(tied, "log_loss") == "mean"
    assert select_method({**tied, "mean": B.Scored(0.401, None, 0)}, "log_loss") == "slsqp"
    # every score NaN: the first listed
    assert select_method({"a": float("nan"), "b": float("nan")}, "log_loss") == "a"
    assert select_method({"a": float("nan"), "b": float("nan")}, "accuracy", rule="best") == "a"


# hill_climb has the best nested log loss; its own per-fold scores spread with SE 0.01 (std 0.02236 over 5 folds)
_HILL_FOLDS = {0: 0.37, 1: 0.39, 2: 0.40, 3: 0.41, 4: 0.43}


def _weights(nested, exact=False, folds=None):
    # a weight search whose per-fold scores move with hill_climb's: the paired SE against it is tiny
    folds = folds or {f: v + (nested - 0.40) for f, v in _HILL_FOLDS.items()}
    return B.Scored(nested, folds, 2, "weights", exact)


@pytest.mark.parametrize("candidates, metric, rule, chosen", [
    # the pick's exact sibling is 0.005 behind: within hill_climb's own SE (0.01), outside the paired one (0)
    ({"hill_climb": _weights(0.400), "slsqp": _weights(0.405, exact=True)}, "log_loss", "one_se", "slsqp"),
    # 0.015 behind: beyond the own SE, the pick stands
    ({"hill_climb": _weights(0.400), "slsqp": _weights(0.415, exact=True)}, "log_loss", "one_se", "hill_climb"),
    # an slsqp that is not exact (a surrogate loss, no convergence) stands for nothing
    ({"hill_climb": _weights(0.400), "slsqp": _weights(0.405)}, "log_loss", "one_se", "hill_climb"),
    # the literal best nested score knows no families
    ({"hill_climb": _weights(0.400), "slsqp": _weights(0.405, exact=True)}, "log_loss", "best", "hill_climb"),
    # a pick of another family (a stacker) keeps its place: an exact weight fit stands only for weight searches
    ({"lgbm_stacker": B.Scored(0.400, _HILL_FOLDS, 3, "stacker"), "slsqp": _weights(0.405, exact=True)},
     "log_loss", "one_se", "lgbm_stacker"),
    # a pick without per-fold scores has no own SE: an exact sibling takes over only on an equal score
    ({"optuna": B.Scored(0.400, None, 2, "weights"), "slsqp": _weights(0.4001, exact=True)}, "log_loss", "one_se",
     "optuna"),
    ({"optuna": B.Scored(0.400, None, 2, "weights"), "slsqp": _weights(0.400, exact=True)}, "log_loss", "one_se",
     "slsqp"),
    # higher is better: 0.005 below the pick is within its SE
    ({"caruana": _weights(0.900), "slsqp": _weights(0.895, exact=True)}, "accuracy", "one_se", "slsqp"),
    ({"caruana": _weights(0.900), "slsqp": _weights(0.885, exact=True)}, "accuracy", "one_se", "caruana"),
    # without the last step (stand_in=False, what make ensemble explains the choice with): the pick itself
    ({"hill_climb": _weights(0.400), "slsqp": _weights(0.405, exact=True)}, "log_loss", "one_se, no stand-in",
     "hill_climb"),
    # an exact pick stays, though another exact member of its family comes first
    ({"slsqp_a": _weights(0.401, exact=True), "slsqp_b": _weights(0.400, exact=True)}, "log_loss", "one_se",
     "slsqp_b"),
    # an exact sibling with a NaN score is skipped
    ({"hill_climb": _weights(0.400), "slsqp": _weights(float("nan"), exact=True)}, "log_loss", "one_se",
     "hill_climb"),
])
def test_an_exact_fit_stands_for_its_family_within_the_picks_own_se(candidates, metric, rule, chosen):
    stand_in = rule != "one_se, no stand-in"
    assert select_method(candidates, metric, rule=rule.split(",")[0], stand_in=stand_in) == chosen


def test_own_standard_error_is_the_spread_of_a_candidates_fold_scores():
    assert B.own_standard_error(B.Scored(0.4, _HILL_FOLDS)) == pytest.approx(np.std(list(_HILL_FOLDS.values()),
                                                                                    ddof=1) / np.sqrt(5))
    assert B.own_standard_error(B.Scored(0.4, {0: 0.3, 1: 0.5})) == pytest.approx(0.1)  # two folds are enough
    assert np.isnan(B.own_standard_error(B.Scored(0.4, {0: 0.4})))
    assert np.isnan(B.own_standard_error(B.Scored(0.4, None)))
    # a shifted candidate keeps its family and exactness
    moved = B.shift_scored(_weights(0.4, exact=True), 0.01)
    assert (moved.family, moved.exact, moved.nested) == ("weights", True, pytest.approx(0.41))


@pytest.mark.parametrize("name", METHODS)
def test_only_slsqp_on_its_own_loss_is_an_exact_fit(name):
    # exact_: the optimum of the metric over the parameters its family searches; slsqp's smooth loss is the metric
    # only for log loss (probabilities, binary and multilabel included) and squared error (values), a surrogate else
    cases = [("multiclass", "log_loss", True), ("binary", "log_loss", True), ("multilabel", "log_loss", True),
             ("regression", "rmse", True), ("multiclass", "accuracy", False), ("binary", "roc_auc", False),
             ("regression", "mae", False)]
    for task, metric, exact in cases:
        if not applicable(name, task):
            continue
        preds, y = make_data(task, [1.0, 2.0, 0.5], n_rows=120, seed=5)
        fitted = make_blend(name, **fast(name)).fit(preds, y, metric, task=task)
        assert fitted.exact_ is (name == "slsqp" and exact), (task, metric)
    assert make_blend(name).exact_ is False  # unfitted


def test_an_unconverged_slsqp_is_not_exact_and_a_refit_forgets_it():
    preds, y = make_data("multiclass", [1.0, 2.0, 0.5], n_rows=120, seed=5)
    blend = make_blend("slsqp", max_iter=1).fit(preds, y, "log_loss", task="multiclass")
    assert not blend.result_.success and blend.exact_ is False
    converged = make_blend("slsqp").fit(preds, y, "log_loss", task="multiclass")
    assert converged.exact_ is True
    assert converged.fit(preds, y, "accuracy", task="multiclass").exact_ is False  # refitted on a surrogate


@pytest.mark.parametrize("name, params, family", [
    ("slsqp", {}, "weights"),
    ("caruana", {"calibrate": True}, "weights + temperature"),
    ("hill_climb", {}, "weights"),
    # signed weights leave the simplex: slsqp's optimum there does not stand for them
    ("hill_climb", {"allow_negative": True}, "signed weights"),
    ("geometric_mean", {}, "mean"),
    ("logreg_stacker", {}, "stacker"),
])
def test_a_blends_family_is_what_it_searches(name, params, family):
    assert make_blend(name, **params).family() == family


def test_select_method_errors_are_quoted_whole():
    with pytest.raises(ValueError, match=r"^select_method needs at least one result$"):
        select_method({}, "log_loss")
    with pytest.raises(ValueError, match=r"^selection rule 'lowest': choose one of one_se, best$"):
        select_method({"a": 0.1}, "log_loss", rule="lowest")


def test_a_stacker_with_features_keeps_them_when_a_temperature_or_a_decision_is_refitted():
    rng = np.random.default_rng(7)
    n_rows = 300
    p = _probs(rng.normal(0, 1.5, size=(n_rows, 3)))
    y = (rng.random(n_rows)[:, None] > np.cumsum(p, axis=1)).sum(axis=1)
    preds, extra = np.stack([p, apply_temperature(p, 1.02)]), rng.normal(size=(n_rows, 2))
    folds = np.arange(n_rows) % 5
    m = get_metric("log_loss")
    # the in-sample rule sharpens the stacker, nested CV drops that temperature: the all-rows blend is predicted
    # again without it, with its features
    res = nested_score("logreg_stacker", preds, y, folds, m, extra=extra, params={"C": 0.1, "calibrate": True})
    assert res.temperature_in_sample < 0.95 and res.fitted.temperature_ == 1.0
    assert res.in_sample == pytest.approx(m(y, res.fitted.predict(preds, extra)), abs=1e-12)
    # a decision is fitted on the stacker's predictions of its training rows, features included
    binary, y2 = synth([0.5, 1.0], n_rows=120, n_cols=1, seed=38)
    features = rng.normal(size=(120, 2))
    decided = nested_score("logreg_stacker", binary, y2, np.arange(120) % 3, "accuracy", extra=features,
                           params=fast("logreg_stacker"), decision=Threshold)
    assert set(np.unique(decided.oof_pred)) <= {0.0, 1.0} and 0.5 < decided.nested <= 1.0


def test_rank_candidates_orders_by_nested_score_ties_in_given_order_nan_last():
    scores = {"a": 0.42, "b": float("nan"), "c": 0.40, "d": 0.4000004, "e": 0.45}
    assert B.rank_candidates(scores, "log_loss") == ["c", "d", "a", "e", "b"]  # c and d tie at 6 decimals
    assert B.rank_candidates(scores, "accuracy") == ["e", "a", "c", "d", "b"]
    assert B.rank_candidates({"x": B.Scored(0.3), "y": _result("y", 0.2)}, "log_loss") == ["y", "x"]
    nan = float("nan")
    assert B.rank_candidates({"a": nan, "b": 0.1, "c": nan}, "log_loss") == ["b", "a", "c"]  # NaNs in given order
    assert B.rank_candidates({"c": 0.4000004, "d": 0.3999996}, "log_loss") == ["c", "d"]  # a tie, though d is lower
    with pytest.raises(ValueError, match=r"^rank_candidates needs at least one result$"):
        B.rank_candidates({}, "log_loss")


def test_the_best_candidate_of_a_tie_is_the_first_in_both_directions():
    # 8e-7 apart rounds to the same 6 decimals: the first listed is the best, whichever is numerically better
    first, second = B.Scored(0.3999996, {0: 0.30, 1: 0.50}), B.Scored(0.4000004, {0: 0.35, 1: 0.45})
    for metric in ("accuracy", "log_loss"):
        errors = B.standard_errors({"first": first, "second": second}, metric)
        assert errors["first"] == pytest.approx(np.std([0.30, 0.50], ddof=1) / np.sqrt(2))  # its own spread
        assert select_method({"first": first, "second": second}, metric, rule="best") == "first"
