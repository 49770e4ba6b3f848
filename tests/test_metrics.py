"""Every registered metric against scikit-learn's value, multiclass and binary."""

import numpy as np
import pytest
from sklearn import metrics as skm

from pipeline.metrics import METRICS, get_metric

rng = np.random.default_rng(0)
N, C = 300, 5
Y_MULTI = rng.integers(0, C, N)
P_MULTI = rng.dirichlet(np.ones(C), N)
P_MULTI[np.arange(N), Y_MULTI] += rng.uniform(0, 1, N)  # better than chance, not perfect
P_MULTI /= P_MULTI.sum(axis=1, keepdims=True)
Y_BIN = rng.integers(0, 2, N)
P_BIN = np.clip(0.5 * Y_BIN + rng.uniform(0, 0.6, N), 0, 1)
P_BIN[:20] = 0.5  # ties: AUC must average their ranks as sklearn does

SKLEARN = {
    "accuracy": (lambda y, p: skm.accuracy_score(y, p.argmax(1)), lambda y, p: skm.accuracy_score(y, p >= 0.5)),
    "log_loss": (lambda y, p: skm.log_loss(y, p, labels=range(C)), lambda y, p: skm.log_loss(y, p)),
    "roc_auc": (lambda y, p: skm.roc_auc_score(y, p, multi_class="ovr", average="macro"), skm.roc_auc_score),
    "f1_macro": (lambda y, p: skm.f1_score(y, p.argmax(1), average="macro"), lambda y, p: skm.f1_score(y, p >= 0.5, average="macro")),
    "f1": (None, lambda y, p: skm.f1_score(y, p >= 0.5)),
}


def test_every_metric_has_a_reference():
    assert set(SKLEARN) == set(METRICS)


@pytest.mark.parametrize("name", sorted(METRICS))
def test_metric_matches_sklearn(name):
    metric = get_metric(name)
    multi_ref, bin_ref = SKLEARN[name]
    if multi_ref is not None:
        assert metric(Y_MULTI, P_MULTI) == pytest.approx(multi_ref(Y_MULTI, P_MULTI), rel=1e-9)
    assert metric(Y_BIN, P_BIN) == pytest.approx(bin_ref(Y_BIN, P_BIN), rel=1e-9)
    assert metric(Y_BIN, P_BIN[:, None]) == pytest.approx(bin_ref(Y_BIN, P_BIN), rel=1e-9)


@pytest.mark.parametrize("name", sorted(METRICS))
def test_direction(name):
    metric = get_metric(name)
    perfect = np.eye(C)[Y_MULTI] * 0.98 + 0.004
    if name == "f1":
        return
    assert metric.is_better(metric(Y_MULTI, perfect), metric(Y_MULTI, P_MULTI))


def test_unknown_metric_lists_known():
    with pytest.raises(KeyError, match="unknown metric 'acc'.*accuracy"):
        get_metric("acc")
