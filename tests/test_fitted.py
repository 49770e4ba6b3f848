"""The fitted ensemble kept as JSON: every registered blend and decision round-trips to the same predictions."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_blend import TASKS, fast, make_data, task_metric

from pipeline.blend import BLEND_METHODS, BlendMethod, applicable, make_blend
from pipeline.task.decision import Cutpoints, Thresholds, decision_from_params

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
    y = (
        (pred > 0.4).astype(int)
        if isinstance(rule, Thresholds)
        else np.clip(np.rint(pred[:, 0] + 0.3), 0, 4).astype(int)
    )
    metric = "f1_micro" if isinstance(rule, Thresholds) else "qwk"
    rule.fit(y, pred, metric)
    loaded = decision_from_params(json.loads(json.dumps(rule.params)))
    np.testing.assert_array_equal(loaded.apply(pred), rule.apply(pred))


# -- the ensemble keeps its fitted blends, and they recompute its files ----------------------


def test_stored_blends_reproduce_every_submission_file(small_config, tmp_path, capsys):
    from test_ensemble import _fold_files, _import, _synthetic

    from pipeline.cli import main
    from pipeline.config import load_config
    from pipeline.ensemble.fitted import fitted_dir, load_fitted, reproduce_submission

    assert main(["folds", "--config", str(small_config)]) == 0
    config = load_config(small_config)
    rng = np.random.default_rng(7)
    for name, seed, strength in (("a", 1, 2.0), ("b", 2, 1.5), ("imported", 3, 1.0)):
        oof, test = _synthetic(config, strength, seed)
        values = test.drop(columns="id").to_numpy()
        folds = values[None] * rng.uniform(0.3, 3.0, size=(config.folds.n_splits, *values.shape))
        folds /= folds.sum(axis=2, keepdims=True)
        test[test.columns[1:]] = folds.mean(axis=0)
        assert _import(small_config, tmp_path, name, oof, test) == 0
        if name != "imported":
            _fold_files(config, name, folds)
    methods = "ensemble.methods=[mean, geometric_mean, caruana, logreg_stacker, lgbm_stacker]"
    params = ("ensemble.method_params={lgbm_stacker: {n_estimators: 10, min_child_samples: 3, n_jobs: 1}, "
              "logreg_stacker: {C: 0.1}}")
    assert main(["ensemble", "--config", str(small_config), methods, params]) == 0
    index = json.loads((fitted_dir(config) / "index.json").read_text())
    assert set(index["candidates"]) >= {
        "mean",
        "geometric_mean",
        "caruana",
        "logreg_stacker",
        "lgbm_stacker",
        "single-a",
    }
    for text in (fitted_dir(config)).glob("*.json"):
        assert "pickle" not in text.read_text()
    checked = 0
    for name in ["submission", *index["candidates"]]:
        record = load_fitted(config, name)
        if name != "submission" and record.submission_file is None:
            continue  # a single model that was not the best: no file of its own
        frame, path = reproduce_submission(config, name)
        # the same text, byte for byte: the same numbers through the same writer
        assert frame.to_csv(index=False) == path.read_text(), name
        checked += 1
    assert checked >= 6
    assert load_fitted(config, "lgbm_stacker").apply == "per_fold"
    assert load_fitted(config, "geometric_mean").blend.method == "geometric_mean"
