"""What averaging k fold models gains on the test set (pipeline.blend.averaging): the squared-error identity, the
estimate against the gain measured on labels drawn from a known truth, and the refusals."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.blend import ambiguity, averaging_gain, reference_distribution
from pipeline.blend.averaging import draw_labels
from pipeline.task.metrics import Metric, get_metric


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _brier(y: np.ndarray, pred: np.ndarray) -> float:
    return float(((pred - np.eye(pred.shape[1])[y]) ** 2).sum(axis=1).mean())


BRIER = Metric("brier_for_tests", _brier, False, "proba", tasks=("multiclass",))


def _world(n_rows=4000, n_classes=5, n_folds=5, fold_noise=1.5, seed=0):
    """A true class distribution per row, and k fold models that see it through independent noise."""
    rng = np.random.default_rng(seed)
    truth_logits = rng.normal(scale=2.0, size=(n_rows, n_classes))
    truth = _softmax(truth_logits)
    folds = _softmax(truth_logits[None] + rng.normal(scale=fold_noise, size=(n_folds, n_rows, n_classes)))
    return rng, truth, folds


def test_squared_error_of_the_mean_is_one_model_less_the_ambiguity_on_every_label():
    rng, _, folds = _world(n_rows=300)
    y = rng.integers(0, folds.shape[2], size=folds.shape[1])
    each = np.mean([_brier(y, p) for p in folds])
    assert _brier(y, folds.mean(axis=0)) == pytest.approx(each - ambiguity(folds), rel=1e-12)
    # so the estimated gain is the ambiguity itself, whatever the reference and however few the draws
    for reference in (np.full(folds.shape[1:], 1 / folds.shape[2]), folds[0]):
        gain = averaging_gain(folds, BRIER, reference, "multiclass", n_draws=1, seed=3)
        assert gain == pytest.approx(ambiguity(folds), rel=1e-9)


@pytest.mark.parametrize("metric", ["accuracy", "log_loss"])
def test_the_estimate_matches_the_gain_measured_on_true_labels(metric):
    rng, truth, folds = _world()
    metric = get_metric(metric)
    sign = 1.0 if metric.greater_is_better else -1.0
    measured = []
    for _ in range(20):  # labels drawn from the truth, as a hidden test set would be
        y = draw_labels(truth, "multiclass", rng)
        measured.append(sign * (metric(y, folds.mean(axis=0)) - np.mean([metric(y, p) for p in folds])))
    estimate = averaging_gain(folds, metric, truth, "multiclass", n_draws=32)
    assert estimate > 0
    assert estimate == pytest.approx(np.mean(measured), rel=0.1)


def test_fold_models_that_agree_gain_nothing():
    _, truth, folds = _world(n_rows=500)
    same = np.repeat(folds[:1], 5, axis=0)
    assert ambiguity(same) == pytest.approx(0.0, abs=1e-25)
    assert averaging_gain(same, "accuracy", truth, "multiclass") == pytest.approx(0.0, abs=1e-12)
    assert averaging_gain(same[:1], "log_loss", truth, "multiclass") == 0.0


def test_an_over_confident_candidate_is_not_credited_with_its_own_confidence():
    # the same noisy fold models, sharpened 4x: under their own (sharp) probabilities the disagreeing rows look
    # certain; under the shared reference the gain is what the labels would give
    rng, truth, folds = _world(n_rows=3000, fold_noise=2.0)
    sharp = _softmax(4 * np.log(folds))
    metric = get_metric("log_loss")
    own = averaging_gain(sharp, metric, sharp.mean(axis=0), "multiclass")
    shared = averaging_gain(sharp, metric, truth, "multiclass")
    measured = np.mean(
        [
            metric(y, np.mean(sharp, axis=0)) - np.mean([metric(y, p) for p in sharp])
            for y in (draw_labels(truth, "multiclass", rng) for _ in range(10))
        ]
    )
    assert shared == pytest.approx(-measured, rel=0.05)
    assert abs(own + measured) > 3 * abs(shared + measured)


def test_the_reference_is_temperature_scaled_on_the_held_out_rows():
    rng, truth, _ = _world(n_rows=4000)
    y = draw_labels(truth, "multiclass", rng)
    over_confident = _softmax(3 * np.log(truth))
    reference = reference_distribution(over_confident, over_confident, y, "multiclass")
    # scaled back towards the truth it was sharpened from (the temperature undoes the factor 3)
    assert np.abs(reference - truth).mean() < 0.2 * np.abs(over_confident - truth).mean()


@pytest.mark.parametrize("task, shape", [("binary", (400, 1)), ("multilabel", (400, 3))])
def test_labels_are_drawn_for_probability_tasks(task, shape):
    reference = np.full(shape, 0.3)
    labels = draw_labels(reference, task, np.random.default_rng(0))
    assert labels.shape == ((shape[0],) if task == "binary" else shape)
    assert labels.mean() == pytest.approx(0.3, abs=0.06)
    folds = np.random.default_rng(1).uniform(0.05, 0.95, size=(3, *shape))
    gain = averaging_gain(folds, "log_loss", reference, task, n_draws=4)
    assert np.isfinite(gain)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda f, r: averaging_gain(f[0], "accuracy", r, "multiclass"), r"shape \(n_folds, n_rows, n_cols\)"),
        (lambda f, r: averaging_gain(f, "accuracy", r[:10], "multiclass"), "reference has 10 rows, fold_preds 50"),
        (lambda f, r: averaging_gain(f, "accuracy", r, "multiclass", n_draws=0), "n_draws must be >= 1; got 0"),
        (lambda f, r: averaging_gain(f, "rmse", r, "regression"), "task 'regression' has no label distribution"),
        (lambda f, r: reference_distribution(r, r, np.zeros(50), "ordinal"), "task 'ordinal' has no label"),
    ],
)
def test_bad_inputs_are_refused(call, message):
    _, truth, folds = _world(n_rows=50)
    with pytest.raises(ValueError, match=message):
        call(folds, truth)
