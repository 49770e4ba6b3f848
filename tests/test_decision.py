"""Decision rules fitted on out-of-fold predictions: thresholds, cut points, nesting."""

import functools
import json
from typing import ClassVar

import numpy as np
import pytest
from sklearn import metrics as skm

from pipeline.task.decision import DEFAULT_GRID, Cutpoints, Decision, Thresholds, decision_for, nested_decision
from pipeline.task.metrics import Metric, get_metric


def planted_binary(n=5000, cut=0.3, flip=0.1, seed=0):
    """y is 1 above ``cut`` with ``flip`` label noise: the accuracy-best threshold is ``cut``."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(0, 1, n)
    y = (p >= cut).astype(np.int64)
    flipped = rng.uniform(size=n) < flip
    return np.where(flipped, 1 - y, y), p


def planted_ordinal(n=3000, n_grades=5, seed=0):
    """A regression head that shrank towards the mean: value = 0.6 * grade + 0.8 + noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_grades, n)
    return y, 0.6 * y + 0.8 + rng.normal(0, 0.3, n)


# ------------------------------------------------------------------ Thresholds

def test_thresholds_recover_planted_threshold_and_beat_default():
    y, p = planted_binary()
    accuracy = get_metric("accuracy")
    rule = Thresholds().fit(y, p, accuracy)
    assert abs(rule.thresholds_[0] - 0.3) <= 0.02 + 1e-9
    assert rule.score_ > accuracy(y, p) + 0.05  # 0.5 misses the rows in [0.3, 0.5)
    assert accuracy(y, rule.apply(p)) == pytest.approx(rule.score_)
    f1 = get_metric("f1")
    assert Thresholds().fit(y, p, f1).score_ > f1(y, p)


@pytest.mark.parametrize("shape", [(-1,), (-1, 1)])
def test_thresholds_apply_keeps_shape(shape):
    y, p = planted_binary(n=600)
    p = p.reshape(shape)
    rule = Thresholds().fit(y, p, "f1")
    decided = rule.apply(p)
    assert decided.shape == p.shape and decided.dtype == np.float64
    assert set(np.unique(decided)) <= {0.0, 1.0}
    assert get_metric("f1")(y, decided) == pytest.approx(rule.score_)
    assert rule.apply(p[:10]).shape == p[:10].shape
    json.dumps(rule.params)


def test_multilabel_thresholds_per_column():
    rng = np.random.default_rng(1)
    n = 2000
    P = rng.uniform(0, 1, (n, 3))
    P[:, 2] = 0.99  # above the whole grid: no threshold changes this column's decisions
    Y = np.column_stack([P[:, 0] >= 0.3, P[:, 1] >= 0.7, rng.uniform(size=n) < 0.5]).astype(np.int64)
    for name in ("f1_macro", "f1_micro", "accuracy"):
        rule = Thresholds().fit(Y, P, name)
        t = rule.thresholds_
        assert abs(t[0] - 0.3) <= 0.02 + 1e-9 and abs(t[1] - 0.7) <= 0.02 + 1e-9, (name, t)
        # the constant column: every threshold decides alike, so the tie keeps 0.5
        assert t[2] == 0.5, (name, t)
        decided = rule.apply(P)
        assert decided.shape == P.shape
        assert get_metric(name)(Y, decided) == pytest.approx(rule.score_)
        assert rule.score_ > get_metric(name)(Y, P)
    assert len(rule.params["thresholds"]) == 3


def test_thresholds_useless_column_stays_at_half_and_fit_is_deterministic():
    rng = np.random.default_rng(2)
    y, p = rng.integers(0, 2, 500), np.full(500, 0.7)
    assert Thresholds().fit(y, p, "accuracy").thresholds_.tolist() == [0.5]
    y, p = planted_binary(n=1000, seed=3)
    assert Thresholds().fit(y, p, "f1").params == Thresholds().fit(y, p, "f1").params


def test_thresholds_use_only_the_grid():
    y, p = planted_binary(n=1000)
    assert Thresholds().fit(y, p, "accuracy").thresholds_[0] in DEFAULT_GRID
    assert Thresholds(grid=[0.25, 0.6]).fit(y, p, "accuracy").thresholds_[0] == 0.25


def test_thresholds_work_with_a_user_label_metric():
    # balanced accuracy, written by a user; not registered
    def balanced(y, pred):
        decided = pred.reshape(-1) >= 0.5
        return (np.mean(decided[y == 1]) + np.mean(~decided[y == 0])) / 2

    metric = Metric("balanced", balanced, True, "label", tasks=("binary",))
    y, p = planted_binary(n=3000, cut=0.8, flip=0.0)
    rule = Thresholds().fit(y, p, metric)
    assert rule.score_ == pytest.approx(skm.balanced_accuracy_score(y, rule.apply(p)))
    assert abs(rule.thresholds_[0] - 0.8) <= 0.02 + 1e-9


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: Thresholds().apply(np.zeros(3)), "not fitted yet; call fit"),
        (lambda: Thresholds().fit(np.zeros(3), np.zeros(4), "f1"), "y has 3 rows but pred has 4"),
        (
            lambda: Thresholds().fit(np.zeros((3, 2)), np.zeros((3, 3)), "f1_macro"),
            r"y has shape \(3, 2\) but pred \(3, 3\)",
        ),
        (
            lambda: Thresholds().fit(np.zeros(3), np.array([0.1, np.nan, 0.3]), "f1"),
            r"NaN or infinite values in row\(s\) \[1\]",
        ),
        (lambda: Thresholds().fit(np.zeros(3), np.zeros((3, 1, 1)), "f1"), r"pred has shape \(3, 1, 1\)"),
        (lambda: Thresholds().fit(np.zeros(4), np.zeros(4), "f1").apply(np.zeros((4, 2))), "2 column"),
        (lambda: Thresholds(grid=[]), "grid=.* must hold finite thresholds"),
        (lambda: Cutpoints(n_grades=1), "n_grades=1 must be an integer of at least 2"),
        (lambda: Cutpoints(step=0), "0 < step <= span"),
        (
            lambda: Cutpoints(n_grades=3).fit(np.array([0, 1, 3]), np.zeros(3), "qwk"),
            "holds grade 3 but n_grades=3; pass n_grades=4",
        ),
        (lambda: Cutpoints().fit(np.array([0, -1, 2]), np.zeros(3), "qwk"), "grade indices 0..K-1"),
        (lambda: Cutpoints().fit(np.zeros(3, int), np.zeros(3), "qwk"), "1 grade.* pass n_grades"),
        (lambda: Cutpoints().fit(np.array([0, 1]), np.zeros((2, 2)), "qwk"), r"pred has shape \(2, 2\)"),
    ],
)
def test_decision_errors(call, match):
    with pytest.raises((ValueError, RuntimeError), match=match):
        call()


# ------------------------------------------------------------------ Cutpoints


@pytest.mark.parametrize("shape", [(-1,), (-1, 1)])
def test_cutpoints_beat_rounding_on_shrunk_predictions(shape):
    y, value = planted_ordinal()
    value = value.reshape(shape)
    qwk = get_metric("qwk")
    rule = Cutpoints().fit(y, value, qwk)
    assert rule.n_grades_ == 5
    assert np.all(np.diff(rule.cutpoints_) > 0)
    assert rule.score_ > qwk(y, value) + 0.05
    # the planted midpoints between 0.6 k + 0.8 and 0.6 (k + 1) + 0.8
    assert np.allclose(rule.cutpoints_, 0.6 * np.arange(4) + 1.1, atol=0.1)
    decided = rule.apply(value)
    assert decided.shape == value.shape and decided.dtype == np.float64
    assert set(np.unique(decided)) <= set(range(5))
    assert qwk(y, decided) == pytest.approx(rule.score_)
    assert rule.score_ == pytest.approx(skm.cohen_kappa_score(y, decided.reshape(-1).astype(int), weights="quadratic"))
    assert json.loads(json.dumps(rule.params))["n_grades"] == 5


def test_cutpoints_follow_the_metric_direction_and_clip_to_the_grades():
    y, value = planted_ordinal(seed=4)
    mae = get_metric("mae")  # lower is better, scored here on decided grades
    rule = Cutpoints(n_grades=5).fit(y, value, mae)
    assert rule.score_ < mae(y, np.maximum(np.floor(value + 0.5), 0))
    assert rule.apply(np.array([-3.0, 99.0])).tolist() == [0.0, 4.0]
    assert Cutpoints(n_grades=7).fit(y, value, "qwk").n_grades_ == 7


def test_cutpoints_at_the_rounding_optimum_stay_put():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 4, 400)
    rule = Cutpoints().fit(y, y + rng.uniform(-0.2, 0.2, 400), "accuracy")
    assert rule.params["cutpoints"] == [0.5, 1.5, 2.5]


# ------------------------------------------------------------------ decision_for


@pytest.mark.parametrize(
    "task,metric,expected",
    [
        ("binary", "f1", Thresholds),
        ("binary", "accuracy", Thresholds),
        ("binary", "f1_macro", Thresholds),
        ("binary", "roc_auc", None),
        ("binary", "log_loss", None),
        ("binary", "map", None),
        ("multilabel", "f1_micro", Thresholds),
        ("multilabel", "f1_macro", Thresholds),
        ("multilabel", "accuracy", Thresholds),
        ("multilabel", "map", None),
        ("ordinal", "qwk", Cutpoints),
        ("ordinal", "accuracy", Cutpoints),
        ("ordinal", "rmse", None),
        ("ordinal", "mae", None),
        ("multiclass", "accuracy", None),
        ("multiclass", "qwk", None),
        ("multiclass", "log_loss", None),
        ("regression", "rmse", None),
        ("regression", "mae", None),
    ],
)
def test_decision_for(task, metric, expected):
    rule = decision_for(task, metric)
    assert rule is None if expected is None else type(rule) is expected
    rule = decision_for(task, get_metric(metric))
    assert rule is None if expected is None else type(rule) is expected


@pytest.mark.parametrize(
    "task,metric,match",
    [
        ("regression", "f1", "metric 'f1' does not apply to task 'regression'; metrics for regression: mae, rmse"),
        ("multilabel", "qwk", "metric 'qwk' does not apply to task 'multilabel'"),
        ("images", "f1", "unknown task 'images'"),
    ],
)
def test_decision_for_errors(task, metric, match):
    with pytest.raises(ValueError, match=match):
        decision_for(task, metric)
    with pytest.raises(ValueError, match=match.replace("; metrics for", r" \(its tasks: .*\); metrics for")):
        decision_for(task, get_metric(metric))


def test_decision_for_passes_n_grades():
    assert decision_for("ordinal", "qwk", n_grades=6).n_grades == 6


# ------------------------------------------------------------------ nested_decision


class Recorder(Decision):
    """Fits nothing; remembers the rows it saw (pred holds row ids) and decides identity."""

    made: ClassVar[list] = []

    def __init__(self):
        Recorder.made.append(self)

    def fit(self, y, pred, metric):
        self.fit_rows = set(pred.reshape(-1).astype(int).tolist())
        return self

    def apply(self, pred):
        self.applied_rows = set(pred.reshape(-1).astype(int).tolist())
        return pred.copy()

    @property
    def params(self):
        return {"n_fit": len(self.fit_rows)}


def test_nested_decision_never_fits_on_a_rows_own_fold():
    Recorder.made = []
    n = 50
    folds = np.arange(n) % 4
    rows = np.arange(n, dtype=float)
    decided, fold_params = nested_decision(np.zeros(n), rows[:, None], folds, "f1", Recorder)
    assert len(Recorder.made) == 4
    for rule in Recorder.made:
        held = set(np.flatnonzero(folds == folds[min(rule.applied_rows)]).tolist())
        assert rule.applied_rows == held  # one whole fold at a time
        assert rule.fit_rows == set(range(n)) - held  # fitted on exactly the other folds
    np.testing.assert_array_equal(decided, rows[:, None])  # back in row order, pred's shape
    assert fold_params == {f: {"n_fit": n - np.sum(folds == f)} for f in range(4)}


def test_nested_decision_is_honest_and_close_to_in_sample():
    y, p = planted_binary(n=4000, seed=6)
    folds = np.random.default_rng(6).integers(0, 5, len(y))
    decided, fold_params = nested_decision(y, p, folds, "accuracy", Thresholds)
    accuracy = get_metric("accuracy")
    in_sample = Thresholds().fit(y, p, "accuracy").score_
    nested = accuracy(y, decided)
    assert decided.shape == p.shape and set(fold_params) == {0, 1, 2, 3, 4}
    assert accuracy(y, p) < nested <= in_sample + 1e-12
    assert all(abs(params["thresholds"][0] - 0.3) <= 0.04 for params in fold_params.values())
    json.dumps(fold_params)


def test_nested_decision_with_cutpoints():
    y, value = planted_ordinal(seed=7)
    folds = np.arange(len(y)) % 3
    decided, fold_params = nested_decision(y, value, folds, "qwk", functools.partial(Cutpoints, n_grades=5))
    qwk = get_metric("qwk")
    assert qwk(y, decided) > qwk(y, value) + 0.05
    assert all(len(params["cutpoints"]) == 4 for params in fold_params.values())


@pytest.mark.parametrize(
    "folds,factory,error,match",
    [
        (np.zeros(10), Thresholds, ValueError, r"at least 2 folds; got fold ids \[0.0\]"),
        (np.arange(9) % 2, Thresholds, ValueError, "10, 10 and 9 rows"),
        (np.arange(10) % 2, lambda: "thresholds", TypeError, "factory\\(\\) returned str"),
    ],
)
def test_nested_decision_errors(folds, factory, error, match):
    with pytest.raises(error, match=match):
        nested_decision(np.zeros(10), np.zeros(10), folds, "f1", factory)
