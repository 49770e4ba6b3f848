"""The ensemble stage on stored predictions: imports, honest choice, submissions, stacker features."""

from __future__ import annotations

import dataclasses
import re
import shutil

import numpy as np
import pandas as pd
import pytest

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.data import load_competition
from pipeline.folds import read_folds


def _synthetic(config, strength: float, seed: int):
    """OOF and test probabilities that know the true class with the given strength."""
    competition = load_competition(config, check_image_files=False)
    folds, _ = read_folds(config, competition)
    rng = np.random.default_rng(seed)
    truth_test = competition.solution_labels()

    def probs(labels):
        logits = rng.normal(size=(len(labels), 10)) + strength * np.eye(10)[labels]
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    oof = pd.DataFrame(probs(competition.y), columns=[str(c) for c in competition.classes])
    oof.insert(0, "fold", folds)
    oof.insert(0, "id", competition.train_ids)
    test = pd.DataFrame(probs(truth_test), columns=[str(c) for c in competition.classes])
    test.insert(0, "id", competition.test_ids)
    return oof, test


def _import(config_path, tmp_path, name, oof, test, suffix=".csv"):
    oof_path, test_path = tmp_path / f"{name}_oof{suffix}", tmp_path / f"{name}_test{suffix}"
    for frame, path in ((oof, oof_path), (test, test_path)):
        frame.to_csv(path, index=False) if suffix == ".csv" else frame.to_parquet(path, index=False)
    return main(
        ["import-oof", "--config", str(config_path), "--name", name, "--oof", str(oof_path), "--test", str(test_path)]
    )


@pytest.fixture()
def with_folds(small_config):
    assert main(["folds", "--config", str(small_config)]) == 0
    return small_config


def test_imported_runs_are_blended_and_scored(with_folds, tmp_path, capsys):
    config = load_config(with_folds)
    for name, strength, seed, suffix in (
        ("notebook_a", 2.0, 1, ".csv"),
        ("notebook_b", 2.0, 2, ".parquet"),
        ("weak", 0.5, 3, ".csv"),
    ):
        assert _import(with_folds, tmp_path, name, *_synthetic(config, strength, seed), suffix=suffix) == 0
    assert "imported notebook_a: CV" in capsys.readouterr().out
    assert (
        main(
            ["ensemble", "--config", str(with_folds), "ensemble.methods=[mean, optuna, caruana, slsqp, logreg_stacker]"]
        )
        == 0
    )
    board = pd.read_csv(config.submissions_dir / "leaderboard.csv")
    names = [s.rstrip(" *") for s in board["submission"]]
    assert {
        "single-notebook_a",
        "single-notebook_b",
        "single-weak",
        "mean",
        "optuna",
        "caruana",
        "slsqp",
        "logreg_stacker",
    } == set(names)
    blends = board[board["kind"] != "single"]
    assert blends["nested CV"].notna().all() and blends["private LB"].between(0, 1).all()
    chosen = board[board["submission"].str.endswith(" *")]
    assert len(chosen) == 1
    # the choice is made on nested scores (not in-sample ones): within one standard error of the best
    nested = board["nested CV"].fillna(board["CV"])
    best = nested.max()
    row = chosen.index[0]
    assert nested[row] == best or best - nested[row] <= board.loc[row, "SE"] + 1e-12


@pytest.mark.parametrize(
    "spoil, message",
    [
        (lambda oof, test: (oof.drop(columns="fold"), test), "needs a 'fold' column"),
        (lambda oof, test: (oof.assign(fold=(oof["fold"] + 1) % 3), test), "fold assignment differs from ours"),
        (lambda oof, test: (oof.iloc[1:], test), r"ids differ from the competition's \(59 rows vs 60\)"),
        (lambda oof, test: (oof, test.drop(columns="3")), r"no column for class\(es\) \['3'\]"),
        (lambda oof, test: (oof.assign(**{"0": np.nan}), test), "NaN or inf"),
        (lambda oof, test: (oof.assign(**{"0": 3.0}), test), r"outside \[0, 1\].*not logits"),
        (lambda oof, test: (oof, test.assign(**{"0": 0.5})), "do not sum to 1"),
    ],
)
def test_bad_imports_are_refused(with_folds, tmp_path, capsys, spoil, message):
    config = load_config(with_folds)
    assert _import(with_folds, tmp_path, "bad", *spoil(*_synthetic(config, 2.0, 0))) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (config.runs_dir / "bad").exists()


def test_import_refuses_to_overwrite(with_folds, tmp_path, capsys):
    config = load_config(with_folds)
    oof, test = _synthetic(config, 2.0, 0)
    assert _import(with_folds, tmp_path, "nb", oof, test) == 0
    assert _import(with_folds, tmp_path, "nb", oof, test) == 2
    assert "exists; choose another NAME or pass FORCE=1" in capsys.readouterr().err


def test_stackers_read_metadata_features(digits_dir, tmp_path, write_config, capsys):
    data = tmp_path / "digits_meta"
    shutil.copytree(digits_dir, data)
    train = pd.read_csv(data / "train.csv", dtype=str)
    sample = pd.read_csv(data / "sample_submission.csv", dtype=str)
    solution = pd.read_csv(data / "solution.csv", dtype=str).set_index("id")
    # a metadata column that carries the label (as an anatomical site can in melanoma data): weak models + it
    train.assign(meta=train["label"].astype(int)).to_csv(data / "train.csv", index=False)
    pd.DataFrame({"id": sample["id"], "meta": solution.loc[sample["id"], "label"].astype(int).to_numpy()}).to_csv(
        data / "test.csv", index=False
    )
    config_path = write_config(
        data,
        {
            "competition": {"test_csv": "test.csv"},
            "ensemble": {"stacker_features": ["meta"], "methods": ["mean", "lgbm_stacker"]},
        },
    )
    assert main(["folds", "--config", str(config_path)]) == 0
    config = load_config(config_path)
    for name, seed in (("a", 1), ("b", 2)):
        assert _import(config_path, tmp_path, name, *_synthetic(config, 0.5, seed)) == 0
    assert main(["ensemble", "--config", str(config_path)]) == 0
    board = pd.read_csv(config.submissions_dir / "leaderboard.csv")
    rows = {s.rstrip(" *"): r for s, r in zip(board["submission"], board.to_dict("records"))}
    assert rows["mean"]["nested CV"] < 0.5
    assert rows["lgbm_stacker"]["nested CV"] > 0.95 and rows["lgbm_stacker"]["private LB"] > 0.95


def test_stacker_features_need_a_test_table(small_competition, write_config):
    from pipeline.config import ConfigError

    with pytest.raises(ConfigError, match="stacker_features need competition.test_csv"):
        load_config(write_config(small_competition, {"ensemble": {"stacker_features": ["meta"]}}))


def test_folds_import_and_ensemble_need_no_images(small_config, tmp_path, capsys):
    # predictions made elsewhere are blended with only the CSVs and the store: the image folders are gone
    config = load_config(small_config)
    shutil.rmtree(config.data_dir / "train")
    shutil.rmtree(config.data_dir / "test")
    assert main(["folds", "--config", str(small_config)]) == 0
    for name, seed in (("a", 1), ("b", 2)):
        assert _import(small_config, tmp_path, name, *_synthetic(config, 2.0, seed)) == 0
    assert main(["ensemble", "--config", str(small_config), "ensemble.methods=[mean, caruana]"]) == 0
    assert (config.submissions_dir / "submission.csv").is_file()
    assert "missing" not in capsys.readouterr().err


def _fold_files(config, name: str, fold_tests: np.ndarray) -> None:
    """Per-fold test predictions as a trained run stores them (row-keyed, one column per class index)."""
    for k, probs in enumerate(fold_tests):
        frame = pd.DataFrame(probs, columns=[str(c) for c in range(probs.shape[1])])
        frame.insert(0, "row", np.arange(len(probs)))
        path = config.runs_dir / name / f"fold{k}" / "test.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(path, index=False)


def test_blends_are_applied_per_fold_model_and_both_ways_reported(with_folds, tmp_path, capsys):
    config = load_config(with_folds)
    rng = np.random.default_rng(7)
    n_folds = config.folds.n_splits
    for name, seed in (("a", 1), ("b", 2), ("imported", 3)):
        oof, test = _synthetic(config, 2.0, seed)
        values = test.drop(columns="id").to_numpy()
        # each fold model: the run's test predictions reweighted at random, renormalised; their mean is the run's test
        folds = values[None] * rng.uniform(0.3, 3.0, size=(n_folds, *values.shape))
        folds /= folds.sum(axis=2, keepdims=True)
        test[test.columns[1:]] = folds.mean(axis=0)
        assert _import(with_folds, tmp_path, name, oof, test) == 0
        if name != "imported":
            _fold_files(config, name, folds)
    capsys.readouterr()
    assert main(["ensemble", "--config", str(with_folds), "ensemble.methods=[mean, geometric_mean]"]) == 0
    out = capsys.readouterr()
    assert "no per-fold test predictions stored for imported" in out.out + out.err
    board = pd.read_csv(config.submissions_dir / "leaderboard.csv")
    rows = {s.rstrip(" *"): r for s, r in zip(board["submission"], board.to_dict("records"))}
    # the fold-mean application's private score is shown where it gives other predictions: the nonlinear mean only
    assert not np.isnan(rows["geometric_mean"]["private LB (fold_mean)"])
    assert np.isnan(rows["mean"]["private LB (fold_mean)"])
    # the former behaviour is one setting away, and then the per-fold figure is the other one shown
    assert (
        main(
            [
                "ensemble",
                "--config",
                str(with_folds),
                "ensemble.methods=[mean, geometric_mean]",
                "ensemble.apply=fold_mean",
            ]
        )
        == 0
    )
    again = pd.read_csv(config.submissions_dir / "leaderboard.csv")
    rows_again = {s.rstrip(" *"): r for s, r in zip(again["submission"], again.to_dict("records"))}
    assert rows_again["geometric_mean"]["private LB"] == pytest.approx(rows["geometric_mean"]["private LB (fold_mean)"])
    assert rows_again["geometric_mean"]["private LB (per_fold)"] == pytest.approx(rows["geometric_mean"]["private LB"])


def test_optuna_budget_is_printed_and_its_study_continued(with_folds, tmp_path, capsys):
    config = load_config(with_folds)
    for name, seed in (("a", 1), ("b", 2)):
        assert _import(with_folds, tmp_path, name, *_synthetic(config, 2.0, seed)) == 0
    capsys.readouterr()
    assert main(["ensemble", "--config", str(with_folds), "ensemble.methods=[optuna]"]) == 0
    out = capsys.readouterr()
    assert "optuna budget: 20 trials per fit, 4 fits (nested CV + all rows), 2 models x 60 rows" in out.out + out.err
    studies = list((config.runs_dir / "_ensemble").glob("optuna-*.json"))
    assert len(studies) == 1
    from pipeline.core import io

    assert len(io.read_json(studies[0])["trials"]) == 20
    assert main(["ensemble", "--config", str(with_folds), "ensemble.methods=[optuna]"]) == 0
    assert len(io.read_json(studies[0])["trials"]) == 40  # a rerun on the same runs continues the study


@pytest.mark.parametrize("greater", [True, False])
def test_a_tie_is_listed_and_marked_as_it_is_chosen(greater):
    from pipeline.ensemble import Candidate, choose_candidate, leaderboard_rows, tie_note
    from pipeline.task.metrics import get_metric

    metric = get_metric("accuracy" if greater else "log_loss")
    best, worse = (0.99652, 0.99) if greater else (0.1, 0.2)

    def cand(name, kind, nested):
        return Candidate(name=name, kind=kind, cv=nested, nested=nested, test=np.zeros((1, 2)))

    # the single model comes first in the candidates (the simplest), the blends tie with it
    candidates = [
        cand("single-b", "single", worse),
        cand("single-a", "single", best + 1e-9),
        cand("slsqp", "weights", best),
        cand("hill_climb", "weights", best),
        cand("nan", "weights", float("nan")),
    ]
    chosen = choose_candidate(candidates, metric)
    assert chosen.name == "single-a"  # a tie goes to the earlier listed: the single models come first
    rows = leaderboard_rows(candidates, metric, chosen)
    assert [r["submission"] for r in rows] == ["single-a *", "slsqp", "hill_climb", "single-b", "nan"]
    assert sum(r["submission"].endswith(" *") for r in rows) == 1
    assert "with slsqp, hill_climb; the rule above broke the tie" in tie_note(candidates, chosen)
    assert tie_note(candidates[:1], chosen) == ""


@pytest.mark.parametrize("greater", [True, False])
def test_an_exact_fit_chosen_for_its_family_is_explained(greater):
    from pipeline.ensemble import Candidate, choose_candidate, stand_in_note
    from pipeline.task.metrics import get_metric

    metric = get_metric("accuracy" if greater else "log_loss")
    step = 0.005 if greater else -0.005  # hill_climb leads slsqp by one step in the metric's direction
    folds = {0: 0.37, 1: 0.39, 2: 0.40, 3: 0.41, 4: 0.43}  # hill_climb's own SE: 0.01

    def weights(name, nested, exact):
        return Candidate(name=name, kind="weights", cv=nested, nested=nested, test=np.zeros((1, 2)),
                         fold_scores={f: v + nested for f, v in folds.items()}, family="weights", exact=exact)

    candidates = [weights("hill_climb", 0.5 + step, False), weights("slsqp", 0.5, True)]
    chosen = choose_candidate(candidates, metric)
    assert chosen.name == "slsqp"
    note = stand_in_note(candidates, chosen, metric)
    assert note == (f"; slsqp stands for hill_climb, the rule's pick: both search the same weights, slsqp exactly "
                    f"(nested CV {0.5 + step:.6f} against 0.500000, a lead within hill_climb's own standard error "
                    "0.010000)")
    # the expected score moves every candidate alike here: the same pick, named in the score it compared
    for cand in candidates:
        cand.expected = cand.nested + (0.01 if greater else -0.01)
    assert choose_candidate(candidates, metric, score="expected") is chosen
    assert f"(expected test score {0.51 + step if greater else 0.49 + step:.6f} against" in stand_in_note(
        candidates, chosen, metric, score="expected")
    # a pick without per-fold scores gives way only on an equal score: no lead, no standard error to quote
    tied = [dataclasses.replace(candidates[0], nested=0.5, fold_scores=None, expected=None), candidates[1]]
    assert choose_candidate(tied, metric) is tied[1]
    assert stand_in_note(tied, tied[1], metric) == (
        "; slsqp stands for hill_climb, the rule's pick: both search the same weights, slsqp exactly "
        "(nested CV 0.500000 against 0.500000)")
    # the literal best rule, or no better sibling: nothing to explain
    assert choose_candidate(candidates, metric, rule="best").name == "hill_climb"
    assert stand_in_note(candidates, candidates[0], metric, rule="best") == ""
    assert stand_in_note(candidates[1:], chosen, metric) == ""


def test_ensemble_runs_blends_only_the_runs_named(with_folds, tmp_path, capsys):
    config = load_config(with_folds)
    for name, strength, seed in (("a", 2.0, 1), ("b", 2.0, 2), ("c", 1.0, 3)):
        assert _import(with_folds, tmp_path, name, *_synthetic(config, strength, seed)) == 0
    capsys.readouterr()
    assert main(["ensemble", "--config", str(with_folds), "ensemble.methods=[mean]", "ensemble.runs=[a, c]"]) == 0
    assert "left out b: not in ensemble.runs" in capsys.readouterr().out
    board = pd.read_csv(config.submissions_dir / "leaderboard.csv")
    assert {s.rstrip(" *") for s in board["submission"]} == {"single-a", "single-c", "mean"}


@pytest.mark.parametrize(
    "runs, message",
    [
        ("[a, nope]", r"ensemble.runs names 'nope', which is not a run here; finished runs: a"),
        ("[]", r"ensemble.runs.*at least 1 item"),
    ],
)
def test_ensemble_runs_naming_no_usable_run_is_refused(with_folds, tmp_path, capsys, runs, message):
    config = load_config(with_folds)
    assert _import(with_folds, tmp_path, "a", *_synthetic(config, 2.0, 1)) == 0
    assert main(["ensemble", "--config", str(with_folds), f"ensemble.runs={runs}"]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not config.submissions_dir.exists() or not (config.submissions_dir / "submission.csv").exists()


def _runs_that_gain_from_averaging(with_folds, tmp_path) -> None:
    """Three imported runs with per-fold test predictions: "bagged" gains much from averaging, "a" and "b" nothing."""
    config = load_config(with_folds)
    competition = load_competition(config, check_image_files=False)
    folds, _ = read_folds(config, competition)
    truth_test = competition.solution_labels()
    rng = np.random.default_rng(0)
    n_folds = config.folds.n_splits

    def probs(labels, strength, noise, size=()):
        logits = rng.normal(scale=noise, size=(*size, len(labels), 10)) + strength * np.eye(10)[labels]
        e = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    columns = [str(c) for c in competition.classes]
    for name, strength, noise, shared in (("bagged", 3.0, 3.0, False), ("a", 2.0, 1.5, True), ("b", 2.0, 1.5, True)):
        oof = pd.DataFrame(probs(competition.y, strength, noise), columns=columns)
        oof.insert(0, "fold", folds)
        oof.insert(0, "id", competition.train_ids)
        fold_tests = (
            np.repeat(probs(truth_test, strength, noise)[None], n_folds, axis=0)
            if shared
            else probs(truth_test, strength, noise, size=(n_folds,))
        )
        test = pd.DataFrame(fold_tests.mean(axis=0), columns=columns)
        test.insert(0, "id", competition.test_ids)
        assert _import(with_folds, tmp_path, name, oof, test) == 0
        _fold_files(config, name, fold_tests)


def test_the_gain_of_averaging_fold_models_is_estimated_and_can_decide(with_folds, tmp_path, capsys):
    # "bagged": each fold model sees the class through heavy noise of its own, so its OOF rows (one model each) score
    # low and the mean of its fold models on the test set far higher; "a" and "b": less noise, the same in every fold
    # model, so averaging gains them nothing.
    config = load_config(with_folds)
    _runs_that_gain_from_averaging(with_folds, tmp_path)
    methods = ["ensemble.methods=[mean, slsqp]", "ensemble.selection=best"]
    assert main(["ensemble", "--config", str(with_folds), *methods]) == 0
    out = capsys.readouterr().out
    assert "'fold-avg gain' what averaging its k fold models is expected to gain on the test set" in out
    board = pd.read_csv(config.submissions_dir / "leaderboard.csv")
    rows = {s.rstrip(" *"): r for s, r in zip(board["submission"], board.to_dict("records"))}
    # fold models that agree gain nothing; the noisy one gains, and so does every blend that holds it
    for name in ("single-a", "single-b"):
        assert rows[name]["fold-avg gain"] == pytest.approx(0.0, abs=1e-12)
    for name in ("single-bagged", "mean", "slsqp"):
        assert rows[name]["fold-avg gain"] > 0.05
    nested = {name: r["nested CV"] if r["kind"] != "single" else r["CV"] for name, r in rows.items()}
    for name, row in rows.items():
        assert row["expected"] == pytest.approx(nested[name] + row["fold-avg gain"])
    by_nested = max(nested, key=nested.get)
    by_expected = max(rows, key=lambda name: rows[name]["expected"])
    assert by_nested != by_expected  # planted: the blend that gains most from averaging is not the best in nested CV
    assert board["submission"][0] == f"{by_nested} *"
    # choosing on the expected score picks the other, and says so
    expected = "ensemble.selection_score=expected"
    assert main(["ensemble", "--config", str(with_folds), *methods, expected, "--force"]) == 0
    assert "chosen by expected test score (nested CV plus each candidate's estimated gain" in capsys.readouterr().out
    assert pd.read_csv(config.submissions_dir / "leaderboard.csv")["submission"][0] == f"{by_expected} *"


def test_no_averaging_estimate_for_a_metric_of_probabilities(with_folds, tmp_path, capsys):
    # log loss is unbounded per row: a fold model's near-zero probability for a drawn label would dominate the estimate
    config = load_config(with_folds)
    _runs_that_gain_from_averaging(with_folds, tmp_path)
    args = ["ensemble.methods=[mean, slsqp]", "competition.metric=log_loss", "ensemble.selection_score=expected"]
    assert main(["ensemble", "--config", str(with_folds), *args]) == 0
    out = capsys.readouterr().out
    assert "selection_score=expected: no fold-averaging estimate for log_loss here" in out
    assert "chosen by nested CV (" in out
    # slsqp minimised log loss itself: an exact fit, so the rule's last step can act and the rule says so
    assert "; an exact fit of the same weights (slsqp on its own loss) stands for a weight search" in out
    assert "expected" not in pd.read_csv(config.submissions_dir / "leaderboard.csv").columns
    # for accuracy slsqp minimises a surrogate: no exact fit, nothing to say
    assert main(["ensemble", "--config", str(with_folds), "ensemble.methods=[mean, slsqp]", "--force"]) == 0
    out = capsys.readouterr().out
    assert "chosen by nested CV (" in out and "an exact fit" not in out
