"""Every built-in metric against scikit-learn's value on every task it serves; user metrics."""

import numpy as np
import pytest
from sklearn import metrics as skm

from pipeline.task import metrics as metrics_module
from pipeline.task.metrics import (BUILTIN_METRICS, METRICS, TASKS, Metric, UserMetricError, check_metric_task,
                                   get_metric, load_user_metric, metrics_for)

rng = np.random.default_rng(0)
N, C, L, K = 300, 5, 4, 5
Y_MULTI = rng.integers(0, C, N)
P_MULTI = rng.dirichlet(np.ones(C), N)
P_MULTI[np.arange(N), Y_MULTI] += rng.uniform(0, 1, N)  # better than chance, not perfect
P_MULTI /= P_MULTI.sum(axis=1, keepdims=True)
Y_BIN = rng.integers(0, 2, N)
P_BIN = np.clip(0.5 * Y_BIN + rng.uniform(0, 0.6, N), 0, 1)
P_BIN[:20] = 0.5  # ties: AUC and AP must treat them as sklearn does; 0.5 exactly decides positive
Y_ML = (rng.uniform(size=(N, L)) < np.array([0.1, 0.3, 0.5, 0.7])).astype(np.int64)
# coarse grid of values: many ties inside each column
P_ML = np.round(np.clip(0.35 * Y_ML + rng.uniform(0, 0.65, (N, L)), 0, 1) * 20) / 20
Y_REG = rng.normal(3.0, 2.0, N)
P_REG = Y_REG + rng.normal(0, 1.0, N)
Y_ORD = rng.integers(0, K, N)
P_ORD = Y_ORD + rng.normal(0, 0.8, N)  # some below 0 and above K-1
P_ORD[:10] = np.arange(10) * 0.5  # exact halves: round half up
DATA = {
    "multiclass": (Y_MULTI, P_MULTI),
    "binary": (Y_BIN, P_BIN),
    "multilabel": (Y_ML, P_ML),
    "regression": (Y_REG, P_REG),
    "ordinal": (Y_ORD, P_ORD),
}


def _ml_log_loss(y, p):
    return np.mean([skm.log_loss(y[:, j], p[:, j], labels=[0, 1]) for j in range(y.shape[1])])


def _grades(p):
    return np.maximum(np.floor(p + 0.5), 0).astype(int)


# metric -> task -> sklearn's value on that task's (y, pred)
SKLEARN = {
    "accuracy": {
        "multiclass": lambda y, p: skm.accuracy_score(y, p.argmax(1)),
        "binary": lambda y, p: skm.accuracy_score(y, p >= 0.5),
        "multilabel": lambda y, p: skm.accuracy_score(y, (p >= 0.5).astype(int)),
        "ordinal": lambda y, p: skm.accuracy_score(y, _grades(p)),
    },
    "log_loss": {
        "multiclass": lambda y, p: skm.log_loss(y, p, labels=range(C)),
        "binary": lambda y, p: skm.log_loss(y, p),
        "multilabel": _ml_log_loss,
    },
    "roc_auc": {
        "binary": skm.roc_auc_score,
        "multiclass": lambda y, p: skm.roc_auc_score(y, p, multi_class="ovr", average="macro"),
        "multilabel": lambda y, p: skm.roc_auc_score(y, p, average="macro"),
    },
    "f1": {"binary": lambda y, p: skm.f1_score(y, p >= 0.5)},
    "f1_micro": {
        "multiclass": lambda y, p: skm.f1_score(y, p.argmax(1), average="micro"),
        "binary": lambda y, p: skm.f1_score(y, p >= 0.5, average="micro"),
        "multilabel": lambda y, p: skm.f1_score(y, (p >= 0.5).astype(int), average="micro"),
    },
    "f1_macro": {
        "multiclass": lambda y, p: skm.f1_score(y, p.argmax(1), average="macro"),
        "binary": lambda y, p: skm.f1_score(y, p >= 0.5, average="macro"),
        "multilabel": lambda y, p: skm.f1_score(y, (p >= 0.5).astype(int), average="macro"),
    },
    "map": {
        "multilabel": lambda y, p: skm.average_precision_score(y, p, average="macro"),
        "binary": skm.average_precision_score,
    },
    "qwk": {
        "ordinal": lambda y, p: skm.cohen_kappa_score(y, _grades(p), weights="quadratic"),
        "multiclass": lambda y, p: skm.cohen_kappa_score(y, p.argmax(1), weights="quadratic"),
    },
    "rmse": {
        "regression": lambda y, p: skm.mean_squared_error(y, p) ** 0.5,
        "ordinal": lambda y, p: skm.mean_squared_error(y, p) ** 0.5,
    },
    "mae": {"regression": skm.mean_absolute_error, "ordinal": skm.mean_absolute_error},
}
PAIRS = [(name, task) for name in BUILTIN_METRICS for task in get_metric(name).tasks]


@pytest.fixture
def registry():
    """Restore the registry after a test that registers user metrics."""
    saved, sources = dict(METRICS), dict(metrics_module._USER_SOURCES)
    yield
    METRICS.clear()
    METRICS.update(saved)
    metrics_module._USER_SOURCES.clear()
    metrics_module._USER_SOURCES.update(sources)


def test_every_metric_has_a_reference():
    assert set(SKLEARN) == set(BUILTIN_METRICS)
    for name in BUILTIN_METRICS:
        assert set(SKLEARN[name]) == set(get_metric(name).tasks), name


@pytest.mark.parametrize("name,task", PAIRS)
def test_metric_matches_sklearn(name, task):
    metric = get_metric(name)
    y, p = DATA[task]
    expected = SKLEARN[name][task](y, p)
    assert metric(y, p) == pytest.approx(expected, rel=1e-9)
    if p.ndim == 1:  # one-column predictions and targets read the same
        assert metric(y, p[:, None]) == pytest.approx(expected, rel=1e-9)
        assert metric(y[:, None], p[:, None]) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("name,task", PAIRS)
def test_direction(name, task):
    metric = get_metric(name)
    y, p = DATA[task]
    perfect = {
        "multiclass": np.eye(C)[Y_MULTI] * 0.98 + 0.004,
        "binary": Y_BIN * 0.98 + 0.01,
        "multilabel": Y_ML * 0.98 + 0.01,
        "regression": Y_REG,
        "ordinal": Y_ORD.astype(float),
    }[task]
    assert metric.is_better(metric(y, perfect), metric(y, p))


def test_f1_macro_skips_classes_absent_from_both_sides_like_sklearn():
    y = np.array([0, 0, 1, 1, 3, 3])
    p = np.eye(C)[[0, 1, 1, 1, 3, 0]]  # classes 2 and 4 never appear
    assert get_metric("f1_macro")(y, p) == pytest.approx(skm.f1_score(y, p.argmax(1), average="macro"))


@pytest.mark.filterwarnings("ignore:No positive class", "ignore:F-score is ill-defined")
def test_multilabel_column_without_positives_matches_sklearn():
    y, p = Y_ML.copy(), P_ML.copy()
    y[:, 0] = 0
    assert get_metric("map")(y, p) == pytest.approx(skm.average_precision_score(y, p, average="macro"))
    assert get_metric("f1_macro")(y, p) == pytest.approx(skm.f1_score(y, (p >= 0.5).astype(int), average="macro"))
    y[:, 1], p[:, 1] = 0, 0.1  # no true and no predicted positives: F1 0 (zero_division)
    assert get_metric("f1_macro")(y, p) == pytest.approx(skm.f1_score(y, (p >= 0.5).astype(int), average="macro"))


def test_qwk_weights_grade_values():
    # grade 2 absent from both sides: sklearn weights by position unless told the labels
    y = np.array([0, 1, 3, 4, 4, 1, 0, 3])
    p = np.array([0, 1, 4, 3, 4, 0, 1, 3], dtype=float)
    qwk = get_metric("qwk")(y, p)
    assert qwk == pytest.approx(skm.cohen_kappa_score(y, p.astype(int), weights="quadratic", labels=range(5)))
    assert np.isnan(get_metric("qwk")(np.zeros(4, int), np.zeros(4)))


def test_ordinal_rounding_has_no_upper_clip():
    y = np.array([0, 1, 2])
    assert get_metric("accuracy")(y, np.array([-0.7, 1.49999, 2.5])) == pytest.approx(2 / 3)
    assert get_metric("accuracy")(y, np.array([-0.7, 1.5, 1.5])) == pytest.approx(2 / 3)


def test_unknown_metric_lists_known():
    with pytest.raises(KeyError, match="unknown metric 'acc'.*accuracy"):
        get_metric("acc")


def test_metrics_for():
    assert metrics_for("regression") == ["mae", "rmse"]
    assert metrics_for("ordinal") == ["accuracy", "mae", "qwk", "rmse"]
    assert "f1" in metrics_for("binary") and "f1" not in metrics_for("multiclass")
    for task in TASKS:
        assert all(task in get_metric(name).tasks for name in metrics_for(task))
    with pytest.raises(ValueError, match="unknown task 'image'; tasks are multiclass, binary"):
        metrics_for("image")


@pytest.mark.parametrize(
    "metric,task,error,match",
    [
        (
            "rmse",
            "multiclass",
            ValueError,
            r"metric 'rmse' does not apply to task 'multiclass'; metrics for multiclass: accuracy, f1_macro, "
            r"f1_micro, log_loss, qwk, roc_auc",
        ),
        (
            "f1",
            "multilabel",
            ValueError,
            r"metric 'f1' does not apply to task 'multilabel'; metrics for multilabel: .*f1_micro",
        ),
        ("qwk", "regress", ValueError, r"unknown task 'regress'"),
        ("kappa", "ordinal", KeyError, r"unknown metric 'kappa'"),
    ],
)
def test_check_metric_task_errors(metric, task, error, match):
    with pytest.raises(error, match=match):
        check_metric_task(metric, task)


def test_check_metric_task_returns_the_metric():
    assert check_metric_task("qwk", "ordinal") is get_metric("qwk")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"needs": "prob"}, r"needs='prob' is not one of 'proba', 'label', 'value'"),
        ({"tasks": ()}, r"tasks is empty"),
        ({"tasks": ("binary", "regresion")}, r"unknown task\(s\) 'regresion'"),
    ],
)
def test_metric_checks_its_fields(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Metric("m", lambda y, p: 0.0, True, **{"needs": "proba", "tasks": ("binary",), **kwargs})


# --------------------------------------------------------------- user metrics

METRIC_FILE = """
import numpy as np

THRESHOLD = 0.5


def brier(y_true, y_pred):
    return float(np.mean((y_pred.reshape(-1) - y_true.reshape(-1)) ** 2))


def other(y_true, y_pred):
    return 0.0
"""


@pytest.fixture
def metric_dir(tmp_path):
    (tmp_path / "my_metrics.py").write_text(METRIC_FILE)
    (tmp_path / "broken.py").write_text("def oops(:\n")
    (tmp_path / "raises.py").write_text("import no_such_package_for_metrics\n")
    return tmp_path


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"function": "my_metrics.py"}, r"function='my_metrics.py' does not name a function; write it as"),
        ({"function": "my_metrics.py:"}, r"does not name a function"),
        (
            {"function": "missing.py:brier"},
            r"metric file '.*missing.py' \(from function='missing.py:brier'\) does not exist",
        ),
        ({"function": "sub/missing.py:brier"}, r"missing.py' .* does not exist"),
        (
            {"function": "no_such_pkg_xyz.scores:brier"},
            r"cannot import module 'no_such_pkg_xyz.scores'.*ModuleNotFoundError",
        ),
        ({"function": "broken.py:oops"}, r"importing metric file '.*broken.py' failed with SyntaxError"),
        (
            {"function": "raises.py:f"},
            r"failed with ModuleNotFoundError: No module named 'no_such_package_for_metrics'",
        ),
        ({"function": "my_metrics.py:nope"}, r"'my_metrics.py' has no attribute 'nope'.*callables there: brier, other"),
        ({"function": "my_metrics.py:THRESHOLD"}, r"'my_metrics.py:THRESHOLD' is a float, not a function"),
        ({"needs": "labels"}, r"metric 'mine': needs='labels' is not one of"),
        ({"tasks": ("binary", "multi")}, r"metric 'mine': unknown task\(s\) 'multi'"),
        ({"tasks": []}, r"metric 'mine': tasks is empty"),
        ({"greater_is_better": "yes"}, r"greater_is_better='yes' for metric 'mine' must be true or false"),
        ({"name": "accuracy"}, r"metric name 'accuracy' is a built-in metric; give your metric another name"),
        ({"name": ""}, r"metric name '' must be a non-empty string"),
    ],
)
def test_load_user_metric_errors(registry, metric_dir, overrides, match):
    kwargs = {
        "name": "mine",
        "function": "my_metrics.py:brier",
        "greater_is_better": False,
        "needs": "proba",
        "tasks": ("binary",),
        "base_dir": metric_dir,
    }
    with pytest.raises(UserMetricError, match=match):
        load_user_metric(**{**kwargs, **overrides})
    assert "mine" not in METRICS


def test_user_metric_from_file_end_to_end(registry, metric_dir, monkeypatch):
    metric = load_user_metric("brier", "my_metrics.py:brier", False, "proba", ["binary"], base_dir=metric_dir)
    assert get_metric("brier") is metric and metric.tasks == ("binary",)
    expected = skm.brier_score_loss(Y_BIN, P_BIN)
    assert metric(Y_BIN, P_BIN) == pytest.approx(expected)
    assert metric.is_better(metric(Y_BIN, Y_BIN * 0.9 + 0.05), metric(Y_BIN, P_BIN))
    assert "brier" in metrics_for("binary") and "brier" not in metrics_for("multiclass")
    assert check_metric_task("brier", "binary") is metric
    with pytest.raises(ValueError, match="metric 'brier' does not apply to task 'multilabel'"):
        check_metric_task("brier", "multilabel")
    # configs are loaded several times per process: the same definition is a no-op
    assert load_user_metric("brier", "my_metrics.py:brier", False, "proba", ["binary"], base_dir=metric_dir) is metric
    # an absolute path to the same file is the same definition
    assert load_user_metric("brier", f"{metric_dir / 'my_metrics.py'}:brier", False, "proba", "binary") is metric
    # relative paths start at the working directory without base_dir
    monkeypatch.chdir(metric_dir)
    assert load_user_metric("brier", "my_metrics.py:brier", False, "proba", ["binary"]) is metric
    # a new definition of a user name replaces the old one
    other = load_user_metric("brier", "my_metrics.py:other", False, "proba", ["binary", "multilabel"])
    assert get_metric("brier") is other and other(Y_BIN, P_BIN) == 0.0


def test_user_metric_from_package_module(registry, metric_dir, monkeypatch):
    monkeypatch.syspath_prepend(str(metric_dir))
    metric = load_user_metric("brier_mod", "my_metrics:brier", False, "proba", ("binary",))
    assert metric(Y_BIN, P_BIN) == pytest.approx(skm.brier_score_loss(Y_BIN, P_BIN))


def test_user_metrics_do_not_count_as_builtin(registry, metric_dir):
    load_user_metric("brier", "my_metrics.py:brier", False, "proba", ("binary",), base_dir=metric_dir)
    assert "brier" in METRICS and "brier" not in BUILTIN_METRICS


def test_builtin_name_with_its_own_function_is_accepted(registry):
    accuracy = get_metric("accuracy")
    assert load_user_metric("accuracy", "pipeline.task.scores:accuracy", True, "label", accuracy.tasks) is accuracy
    with pytest.raises(UserMetricError, match="is a built-in metric"):
        load_user_metric("accuracy", "pipeline.task.scores:f1_micro", True, "label", accuracy.tasks)
