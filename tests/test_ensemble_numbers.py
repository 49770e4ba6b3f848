"""The numbers `make ensemble` prints and writes, recomputed outside the stage from the files it read and wrote.

The other ensemble tests check formats (ids, columns, a chosen row). Here every figure a user reads is
rebuilt by hand: the stored OOF predictions and the folds file are read with pandas, each blend is
scored again with :func:`pipeline.blend.nested_score`, the private score is recomputed from
``solution.csv`` and the written file, and a mean's submission is compared to a numpy average.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.blend import BLEND_METHODS, nested_score
from pipeline.cli import main
from pipeline.config import load_config
from pipeline.task.metrics import get_metric
from test_ensemble import _import, _synthetic

CLASSES = [str(c) for c in range(10)]


def _stored_oof(config, names: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(preds, y, folds) read straight from the files: runs/<name>/oof.parquet, train.csv and folds/<name>.csv."""
    train = pd.read_csv(config.data_dir / "train.csv", dtype=str)
    folds = pd.read_csv(config.folds_csv, dtype={"id": str}).set_index("id").loc[train["id"], "fold"].to_numpy()
    preds = []
    for name in names:
        oof = pd.read_parquet(config.runs_dir / name / "oof.parquet")
        oof = oof.assign(id=oof["id"].astype(str)).set_index("id").loc[train["id"]]
        np.testing.assert_array_equal(oof["fold"].to_numpy(), folds)  # the run was made on these folds
        preds.append(oof[CLASSES].to_numpy(dtype=np.float64))
    return np.stack(preds), train["label"].astype(int).to_numpy(), folds


def _rows(board: pd.DataFrame) -> dict[str, dict]:
    return {s.rstrip(" *"): r for s, r in zip(board["submission"], board.to_dict("records"))}


# the params make ensemble gives each method on this config (pipeline.ensemble.candidates.method_params, read by hand):
# optuna gets the trial budget and the seed; a log-loss competition calibrates every blend
FITTED = ["optuna", "caruana", "slsqp", "hill_climb", "logreg_stacker"]


def _params(method: str, metric: str, config) -> dict:
    params = {"calibrate": True} if metric == "log_loss" else {}
    if method == "optuna":
        params.update(n_trials=config.ensemble.optuna_trials, seed=config.ensemble.seed)
    return params


@pytest.mark.parametrize("metric", ["accuracy", "log_loss"])
def test_leaderboard_nested_cv_and_private_lb_are_recomputed_from_the_stored_files(small_competition, write_config,
                                                                                   tmp_path, metric):
    if metric == "log_loss":
        # a probability per class in the submission, so the private log loss can be recomputed from the file
        sample = pd.read_csv(small_competition / "sample_submission.csv", dtype=str)
        pd.DataFrame({"id": sample["id"], **{c: 0.1 for c in CLASSES}}).to_csv(
            small_competition / "sample_submission.csv", index=False)
    config_path = write_config(small_competition, {"competition": {"metric": metric},
                                                   "ensemble": {"methods": ["mean", *FITTED]}})
    assert main(["folds", "--config", str(config_path)]) == 0
    config = load_config(config_path)
    names = ["a_strong", "b_weaker", "c_noise"]
    for name, strength, seed in zip(names, (2.0, 1.0, 0.2), (1, 2, 3)):
        assert _import(config_path, tmp_path, name, *_synthetic(config, strength, seed)) == 0
    assert main(["ensemble", "--config", str(config_path)]) == 0
    board = pd.read_csv(config.submissions_dir / "leaderboard.csv")
    rows = _rows(board)
    assert set(rows) == {f"single-{n}" for n in names} | {"mean", *FITTED}

    preds, y, folds = _stored_oof(config, names)
    scorer = get_metric(metric)
    better = (lambda a, b: a >= b) if scorer.greater_is_better else (lambda a, b: a <= b)
    for i, name in enumerate(names):
        row = rows[f"single-{name}"]
        assert row["CV"] == pytest.approx(scorer(y, preds[i]), rel=1e-12, abs=1e-12)
        assert np.isnan(row["nested CV"])  # a single model fits nothing on the OOF rows: no nested figure
    for method in ["mean", *FITTED]:
        res = nested_score(method, preds, y, folds, scorer, params=_params(method, metric, config), task="multiclass")
        row = rows[method]
        assert row["nested CV"] == pytest.approx(res.nested, rel=1e-9, abs=1e-12), method
        assert row["CV"] == pytest.approx(res.in_sample, rel=1e-9, abs=1e-12), method
        if BLEND_METHODS[method].kind != "mean":
            # a blend fitted on the OOF rows scores no better on rows it did not see than on rows it was fitted on
            assert better(row["CV"], row["nested CV"]), (method, row["CV"], row["nested CV"])
    # and the two columns are different numbers: some fitted blend is strictly optimistic in-sample
    assert any(not better(rows[m]["nested CV"], rows[m]["CV"]) for m in FITTED)

    # private LB: solution.csv scored against the file the row wrote (named with its nested CV)
    solution = pd.read_csv(config.data_dir / "solution.csv", dtype=str)
    truth = solution["label"].astype(int).to_numpy()
    for method in ["mean", *FITTED]:
        written = pd.read_csv(config.submissions_dir / f"{method}_cv{rows[method]['nested CV']:.4f}.csv", dtype=str)
        assert list(written["id"]) == list(solution["id"])
        if metric == "accuracy":
            private = np.mean(written["label"].astype(int).to_numpy() == truth)
        else:
            probs = written[CLASSES].to_numpy(dtype=np.float64)
            probs = probs / probs.sum(axis=1, keepdims=True)
            private = -np.mean(np.log(np.clip(probs[np.arange(len(truth)), truth], 1e-15, 1.0)))
        assert rows[method]["private LB"] == pytest.approx(private, rel=1e-9, abs=1e-12), method
    # submission.csv is the chosen row's file
    chosen = board.loc[board["submission"].str.endswith(" *"), "submission"].iat[0].rstrip(" *")
    if not chosen.startswith("single-"):
        pd.testing.assert_frame_equal(pd.read_csv(config.submissions_dir / "submission.csv", dtype=str), pd.read_csv(
            config.submissions_dir / f"{chosen}_cv{rows[chosen]['nested CV']:.4f}.csv", dtype=str))


@pytest.mark.parametrize("sample_format", ["probabilities", "label"])
def test_a_mean_of_imported_runs_writes_the_hand_averaged_probabilities(small_competition, write_config, tmp_path,
                                                                         sample_format):
    sample = pd.read_csv(small_competition / "sample_submission.csv", dtype=str)
    if sample_format == "probabilities":
        pd.DataFrame({"id": sample["id"], **{c: 0.1 for c in CLASSES}}).to_csv(
            small_competition / "sample_submission.csv", index=False)
    config_path = write_config(small_competition, {"ensemble": {"methods": ["mean"]}})
    assert main(["folds", "--config", str(config_path)]) == 0
    config = load_config(config_path)
    rng = np.random.default_rng(11)
    tests = []
    for k, name in enumerate(["nb_one", "nb_two", "nb_three"]):
        oof, test = _synthetic(config, 1.5, seed=20 + k)
        # known probabilities, written in a shuffled row order: the import aligns them by id
        test[CLASSES] = rng.dirichlet(np.full(10, 0.5), size=len(test))
        tests.append(test.set_index("id").loc[sample["id"], CLASSES].to_numpy())
        assert _import(config_path, tmp_path, name, oof, test.sample(frac=1.0, random_state=k)) == 0
    assert main(["ensemble", "--config", str(config_path)]) == 0

    by_hand = (tests[0] + tests[1] + tests[2]) / 3.0
    rows = _rows(pd.read_csv(config.submissions_dir / "leaderboard.csv"))
    written = pd.read_csv(config.submissions_dir / f"mean_cv{rows['mean']['nested CV']:.4f}.csv", dtype={"id": str})
    assert list(written["id"]) == list(sample["id"])  # the sample's ids, in its order
    if sample_format == "probabilities":
        assert list(written.columns) == ["id", *CLASSES]
        np.testing.assert_allclose(written[CLASSES].to_numpy(), by_hand, rtol=0, atol=1e-12)
    else:
        assert list(written.columns) == ["id", "label"]
        np.testing.assert_array_equal(written["label"].to_numpy(), by_hand.argmax(axis=1))
    # the private score of the row is that of the averaged probabilities (accuracy of their top class)
    truth = pd.read_csv(config.data_dir / "solution.csv", dtype=str).set_index("id").loc[sample["id"], "label"]
    assert rows["mean"]["private LB"] == pytest.approx(np.mean(by_hand.argmax(axis=1) == truth.astype(int).to_numpy()))
