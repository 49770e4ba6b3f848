"""The fitted ensemble kept as JSON: every registered blend and decision round-trips to the same predictions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.blend import BLEND_METHODS, BlendMethod, applicable, make_blend
from pipeline.decision import Cutpoints, Thresholds, decision_from_params
from test_blend import TASKS, fast, make_data, task_metric

CASES = [(name, task) for name in BLEND_METHODS for task in TASKS if applicable(name, task)]


@pytest.mark.parametrize("name, task", CASES)
def test_every_blend_state_round_trips_through_json(name, task):
    preds, y = make_data(task, [1.0, 2.0, 0.5], 240, seed=3)
    fitted = make_blend(name, **fast(name, calibrate=True)).fit(preds, y, task_metric(task), task=task)
    text = json.dumps(fitted.state())  # plain JSON: no pickle, no numpy objects
    loaded = BlendMethod.from_state(json.loads(text))
    assert type(loaded) is type(fitted)
    new_preds, _ = make_data(task, [1.0, 2.0, 0.5], 50, seed=4)
    # bit for bit: the same code on the same stored numbers
    np.testing.assert_array_equal(loaded.predict(new_preds), fitted.predict(new_preds))
    assert json.dumps(loaded.state()) == text


@pytest.mark.parametrize("name", ["logreg_stacker", "lgbm_stacker"])
def test_stacker_state_with_extra_features_round_trips(name):
    preds, y = make_data("multiclass", [1.0, 2.0], 240, seed=1)
    extra = np.random.default_rng(0).normal(size=(240, 2))
    fitted = make_blend(name, **fast(name)).fit(preds, y, "log_loss", extra=extra, task="multiclass")
    loaded = BlendMethod.from_state(json.loads(json.dumps(fitted.state())))
    np.testing.assert_array_equal(loaded.predict(preds[:, :30], extra[:30]), fitted.predict(preds[:, :30], extra[:30]))


def test_unfitted_and_foreign_states_are_refused():
    with pytest.raises(RuntimeError, match="not fitted"):
        make_blend("mean").state()
    with pytest.raises(ValueError, match="not a stored blend state"):
        BlendMethod.from_state({"weights": [1.0]})
    state = make_blend("mean").fit(*make_data("binary", [1.0, 1.0], 40), "log_loss", task="binary").state()
    with pytest.raises(ValueError, match="newer"):
        BlendMethod.from_state({**state, "version": 99})


@pytest.mark.parametrize("rule, pred", [
    (Thresholds(), np.random.default_rng(0).random((80, 3))),
    (Cutpoints(n_grades=5), np.random.default_rng(0).normal(2.0, 1.5, (80, 1))),
])
def test_decisions_round_trip_through_their_params(rule, pred):
    y = (pred > 0.4).astype(int) if isinstance(rule, Thresholds) else np.clip(np.rint(pred[:, 0] + 0.3), 0, 4).astype(int)
    metric = "f1_micro" if isinstance(rule, Thresholds) else "qwk"
    rule.fit(y, pred, metric)
    loaded = decision_from_params(json.loads(json.dumps(rule.params)))
    np.testing.assert_array_equal(loaded.apply(pred), rule.apply(pred))
