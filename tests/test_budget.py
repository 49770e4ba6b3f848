"""`make export BUDGET=`: what each piece earns, what fits the time, and the export of what is kept."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import build_small_competition, shrunk_demo_config

from pipeline import blend
from pipeline.cli import main
from pipeline.config import ConfigError, load_config
from pipeline.export.budget import (BudgetError, CostTable, Piece, RunPredictions, ScoreEstimator,
                                    choose_within_budget, full_plan, minimum_seconds)
from pipeline.task.metrics import get_metric


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _world(seed: int = 0, n: int = 3000, n_cols: int = 3, k: int = 5):
    """Rows whose true class probabilities are known: ``truth``; labels drawn from them."""
    rng = np.random.default_rng(seed)
    z_train, z_test = rng.normal(0, 2.0, (n, n_cols)), rng.normal(0, 2.0, (n, n_cols))
    truth_train, truth_test = _softmax(z_train), _softmax(z_test)
    y = np.array([rng.choice(n_cols, p=p) for p in truth_train])
    folds = np.arange(n) % k
    return rng, z_train, z_test, truth_test, y, folds


def _run(name: str, rng, z_train, z_test, folds, noise: float, views=("identity", "hflip"), view_noise=0.0,
         k: int = 5) -> RunPredictions:
    """A run of k fold models, each the truth's logits plus its own noise (larger ``noise``: more to gain from
    averaging them); each view adds its own noise of ``view_noise``."""
    n, n_cols = z_train.shape
    fold_noise_train = rng.normal(0, noise, (k, n, n_cols))
    fold_noise_test = rng.normal(0, noise, (k, n, n_cols))
    oof_views = np.zeros((len(views), n, n_cols))
    test_views = np.zeros((k, len(views), n, n_cols))
    for v in range(len(views)):
        shift_train, shift_test = rng.normal(0, view_noise, (n, n_cols)), rng.normal(0, view_noise, (n, n_cols))
        for f in range(k):
            rows = folds == f
            oof_views[v, rows] = _softmax(z_train[rows] + fold_noise_train[f, rows] + shift_train[rows])
            test_views[f, v] = _softmax(z_test + fold_noise_test[f] + shift_test)
    return RunPredictions(name, tuple(views), tuple(range(k)), oof_views, oof_views[0], oof_views.mean(axis=0),
                          test_views.mean(axis=1), test_views)


def _costs(runs: list[RunPredictions], ms: dict[str, float]) -> pd.DataFrame:
    rows = [{"model": r.name, "fold": f, "view": v, "ms_per_image": ms[r.name]} for r in runs for f in r.folds
            for v in r.views]
    return pd.DataFrame(rows)


def _mean_state(runs, y, metric):
    return blend.make_blend("mean").fit(np.stack([r.oof_mean for r in runs]), y, metric).state()


def test_the_fold_models_estimate_matches_the_true_cost_of_dropping_them():
    """Fold models change only the test rows: the estimate drawn from the blend itself is checked here against the
    exact expected log loss under the rows' true probabilities."""
    metric = get_metric("log_loss")
    rng, z_train, z_test, truth_test, y, folds = _world()
    runs = [_run("noisy", rng, z_train, z_test, folds, noise=1.5), _run("steady", rng, z_train, z_test, folds,
                                                                           noise=0.3)]
    estimator = ScoreEstimator(runs, _mean_state(runs, y, metric), y, metric, "multiclass", n_draws=32)
    full = full_plan(runs)

    def true_log_loss(plan):
        pred = estimator.test_pred(plan)
        return float(-(truth_test * np.log(np.clip(pred, 1e-15, 1))).sum(axis=1).mean())

    for name in ("noisy", "steady"):
        plan = {**full, name: Piece(full[name].views, (0, 1))}  # 2 of 5 fold models kept
        estimated = estimator.in_metric_units(estimator.gain(plan))  # the log loss's change, + = worse
        actual = true_log_loss(plan) - true_log_loss(full)
        assert actual > 0 and estimated > 0
        assert estimated == pytest.approx(actual, rel=0.5), name
    # the noisy run's fold models are worth more (their mean gains more) than the steady run's
    drop_noisy = estimator.gain({**full, "noisy": Piece(full["noisy"].views, (0,))})
    drop_steady = estimator.gain({**full, "steady": Piece(full["steady"].views, (0,))})
    assert drop_noisy < drop_steady < 0


@pytest.mark.parametrize("metric_name", ["accuracy", "log_loss"])
def test_drawn_labels_agree_with_the_exact_expectation(metric_name):
    """Metrics without an exact form (roc_auc, f1, ...) take the expectation over drawn labels; for the two with one,
    the draws converge to it."""
    metric = get_metric(metric_name)
    rng, z_train, z_test, _, y, folds = _world(seed=6, n=2000)
    runs = [_run("a", rng, z_train, z_test, folds, noise=2.0)]
    plan = {"a": Piece(runs[0].views, (0, 1))}
    exact = ScoreEstimator(runs, None, y, metric, "multiclass").folds_part(plan)
    drawn = ScoreEstimator(runs, None, y, metric, "multiclass", n_draws=200)
    drawn.exact = False
    assert exact < 0 and drawn.folds_part(plan) == pytest.approx(exact, rel=0.15)


def test_a_view_that_adds_noise_is_dropped_before_a_useful_fold_model():
    metric = get_metric("accuracy")
    rng, z_train, z_test, truth_test, y, folds = _world(seed=1)
    # one run whose second view is all noise, another plain and good: same cost per piece
    noisy_view = _run("a", rng, z_train, z_test, folds, noise=1.0, views=("identity", "shift(9,9)"))
    spoiled = noisy_view.oof_views.copy()
    spoiled[1] = _softmax(rng.normal(0, 3.0, spoiled[1].shape))
    noisy_view = RunPredictions("a", noisy_view.views, noisy_view.folds, spoiled, spoiled[0], spoiled.mean(axis=0),
                                noisy_view.fold_tests, None)
    good = _run("b", rng, z_train, z_test, folds, noise=1.0)
    runs = [noisy_view, good]
    costs = CostTable(_costs(runs, {"a": 1.0, "b": 1.0}), runs)
    estimator = ScoreEstimator(runs, _mean_state(runs, y, metric), y, metric, "multiclass")
    full_seconds = costs.seconds(full_plan(runs), 1000)  # 20 pieces x 1 ms x 1000 images = 20 s
    assert full_seconds == pytest.approx(20.0)
    plan = choose_within_budget(runs, costs, estimator, budget_seconds=15.0, n_images=1000)
    assert plan.seconds <= 15.0 and plan.seconds_full == pytest.approx(20.0)
    assert plan.dropped[0].what == "TTA view shift(9,9) of a" and plan.dropped[0].estimated_change > 0  # it helps
    assert plan.plan["a"].views == ("identity",) and plan.plan["b"] == Piece(good.views, good.folds)
    assert plan.table()[0]["seconds saved"] == pytest.approx(5.0)


def test_the_whole_ensemble_within_the_budget_is_kept_as_it_is():
    metric = get_metric("accuracy")
    rng, z_train, z_test, _, y, folds = _world(seed=2, n=600)
    runs = [_run("a", rng, z_train, z_test, folds, noise=1.0)]
    costs = CostTable(_costs(runs, {"a": 2.0}), runs)
    plan = choose_within_budget(runs, costs, ScoreEstimator(runs, None, y, metric, "multiclass"), 20.0, 1000)
    assert plan.dropped == [] and plan.plan == full_plan(runs) and plan.estimated_change == 0.0
    assert plan.seconds == pytest.approx(20.0)


def test_an_expensive_run_that_adds_little_goes_first():
    metric = get_metric("log_loss")
    rng, z_train, z_test, _, y, folds = _world(seed=3)
    one_view = ("identity",)
    runs = [_run("cheap", rng, z_train, z_test, folds, noise=0.8, views=one_view),
            _run("costly", rng, z_train, z_test, folds, noise=3.0, views=one_view)]
    costs = CostTable(_costs(runs, {"cheap": 0.5, "costly": 5.0}), runs)
    state = blend.make_blend("slsqp").fit(np.stack([r.oof_mean for r in runs]), y, metric).state()
    estimator = ScoreEstimator(runs, state, y, metric, "multiclass")
    full = costs.seconds(full_plan(runs), 1000)
    plan = choose_within_budget(runs, costs, estimator, full / 4, 1000)
    # the good, cheap run is kept whole; the costly one, which adds little, gives way (fold models, then itself)
    assert plan.seconds <= full / 4 and plan.plan["cheap"] == full_plan(runs)["cheap"]
    assert all(d.what.endswith("of costly") or d.what == "run costly" for d in plan.dropped)
    keep_cheap_only = {"cheap": full_plan(runs)["cheap"]}
    assert estimator.gain(plan.plan) >= estimator.gain(keep_cheap_only) - 1e-12


def _budget_error(runs, costs, n_images, budget):
    metric = get_metric("accuracy")
    rng, z_train, z_test, _, y, folds = _world(seed=4, n=300)
    runs = runs or [_run("a", rng, z_train, z_test, folds, noise=1.0)]
    table = CostTable(costs if costs is not None else _costs(runs, {"a": 2.0}), runs)
    choose_within_budget(runs, table, ScoreEstimator(runs, None, y, metric, "multiclass"), budget, n_images)


@pytest.mark.parametrize("n_images, budget, message", [
    # one view of one fold model costs 2 ms x 1,000 images = 2 s: a budget below it names that minimum
    (1000, 1.5, r"BUDGET=1.5s is below what one model costs: the cheapest fold model and view need 2s for 1000 "
                r"test images here; give at least BUDGET=2s, or fewer TEST_IMAGES"),
    (10_000, 19.0, r"need 20s for 10000 test images here; give at least BUDGET=20s"),
    (0, 10.0, r"TEST_IMAGES=0: give the number of test images"),
])
def test_a_budget_that_cannot_be_kept_is_refused_with_the_minimum(n_images, budget, message):
    with pytest.raises(BudgetError, match=message):
        _budget_error(None, None, n_images, budget)


def test_a_plan_costs_its_passes_its_fold_models_loading_and_decoding_and_the_start():
    rng, z_train, z_test, _, y, folds = _world(seed=4, n=300)
    runs = [_run("a", rng, z_train, z_test, folds, noise=1.0)]
    costs = _costs(runs, {"a": 2.0}).assign(load_seconds=0.5, decode_ms_per_image=0.25)
    table = CostTable(costs, runs, startup=4.0)
    # 5 fold models x (2 views x 2 ms + 0.25 ms decoding) x 1,000 images + 5 x 0.5 s loading + 4 s
    assert table.seconds(full_plan(runs), 1000) == pytest.approx(5 * 4.25 + 2.5 + 4.0)
    one = {"a": Piece(("identity",), (3,))}
    assert table.seconds(one, 1000) == pytest.approx(2.25 + 0.5 + 4.0)
    assert minimum_seconds(table, runs, 1000) == pytest.approx(6.75)
    with pytest.raises(BudgetError, match="need 6.75s for 1000 test images here; give at least BUDGET=6.75s"):
        choose_within_budget(runs, table, ScoreEstimator(runs, None, y, get_metric("accuracy"), "multiclass"),
                             6.0, 1000)


def test_a_piece_without_a_measured_cost_is_refused():
    rng, z_train, z_test, _, y, folds = _world(seed=4, n=300)
    runs = [_run("a", rng, z_train, z_test, folds, noise=1.0)]
    costs = _costs(runs, {"a": 2.0}).iloc[1:]
    with pytest.raises(BudgetError, match=r"cost.csv has no cost for run a, fold 0, view identity; export again"):
        CostTable(costs, runs)


def test_runs_stored_without_per_view_files_offer_the_plain_view_alone():
    rng, z_train, z_test, _, y, folds = _world(seed=5, n=300)
    three = _run("a", rng, z_train, z_test, folds, noise=1.0, views=("identity", "hflip", "vflip"))
    old = RunPredictions("a", three.views, three.folds, None, three.oof_plain, three.oof_mean, three.fold_tests)
    assert old.oof(("identity",)) is three.oof_plain and old.oof(old.views) is three.oof_mean
    assert old.oof(("identity", "hflip")) is None  # not known: no move offers it
    from pipeline.export.budget import _moves
    moves = [what for what, _ in _moves(full_plan([old]), {"a": old})]
    assert "TTA views hflip, vflip of a" in moves and not any(m.startswith("TTA view ") for m in moves)
    # its cheapest plan is the plain view of one fold model
    costs = CostTable(_costs([old], {"a": 3.0}), [old])
    assert minimum_seconds(costs, [old], 1000) == pytest.approx(3.0)


# -- the export ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workspace(digits_dir, tmp_path_factory):
    """A tiny demo (2 tiny models x 3 folds, 2 TTA views, 1 epoch) whose runs keep each view's predictions."""
    base = tmp_path_factory.mktemp("budget_demo")
    data = build_small_competition(digits_dir, base / "data", n_train=60, n_test=20)
    config = shrunk_demo_config(data, base / "out", {"ensemble": {"methods": ["mean", "caruana"]}})
    path = base / "comp.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["demo", "--config", str(path)]) == 0
    return path


def test_each_view_is_stored_and_averages_to_the_tta_file(workspace):
    from pipeline.store import RunLayout
    from pipeline.store.views import fold_views, read_fold_predictions

    config = load_config(workspace)
    layout = RunLayout(config.runs_dir / "digits_resnet")
    for fold in range(3):
        for split in ("valid", "test"):
            rows, views = fold_views(layout, fold, split, ["identity", "shift(1,0)"])
            stored_rows, mean = read_fold_predictions(layout, fold, split)
            assert views.shape[0] == 2 and np.array_equal(rows, stored_rows)
            assert np.allclose(views.mean(axis=0), mean, atol=1e-6)
            assert not np.allclose(views[0], views[1])  # two views, two predictions
        _, plain = read_fold_predictions(layout, fold, "valid_plain")
        assert np.allclose(fold_views(layout, fold, "valid", ["identity", "shift(1,0)"])[1][0], plain, atol=1e-7)


def test_a_run_stored_before_view_files_derives_its_second_view_exactly(workspace, tmp_path):
    import shutil

    from pipeline.store import RunLayout
    from pipeline.store.views import fold_views

    config = load_config(workspace)
    copy = tmp_path / "digits_resnet"
    shutil.copytree(config.runs_dir / "digits_resnet", copy)
    layout = RunLayout(copy)
    stored = fold_views(layout, 0, "valid", ["identity", "shift(1,0)"])[1]
    for fold in range(3):
        for split in ("valid", "test"):
            layout.fold_predictions(fold, f"{split}_views").unlink()
    rows, derived = fold_views(layout, 0, "valid", ["identity", "shift(1,0)"])
    assert np.allclose(derived, stored, atol=1e-6)
    assert fold_views(layout, 0, "test", ["identity", "shift(1,0)"]) is None  # the test's plain view was not kept


def _export(workspace, out, *args):
    return main(["export", "--config", str(workspace), "--method", "caruana", "--out", str(out), "--force", *args])


def _steady_costs(measure):
    """``measure_costs`` with every fold model of a run timed alike, view by view (the median of its fold models):
    the real measurement, without the noise that makes the plan's median over all fold models differ from the
    median over the kept ones."""
    def measured(*args, **kwargs):
        costs = measure(*args, **kwargs)
        for column, keys in (("ms_per_image", ["model", "view"]), ("load_seconds", ["model"]),
                             ("decode_ms_per_image", ["model"])):
            costs[column] = costs.groupby(keys, sort=False)[column].transform("median")
        return costs
    return measured


def test_a_budgeted_export_keeps_what_fits_and_predicts_with_it(workspace, tmp_path, capsys, monkeypatch):
    import pipeline.export.build as build
    from pipeline.export.cost import planning_costs, projected_seconds
    from pipeline.export.predict import predict_folder

    monkeypatch.setattr(build, "measure_costs", _steady_costs(build.measure_costs))
    config = load_config(workspace)
    assert _export(workspace, tmp_path / "full") == 0
    out = capsys.readouterr().out
    # without a budget, what each piece earns: every run, fold model and view dropped alone
    assert "what each piece earns on the 20 test images, dropped alone" in out
    for what in ("run digits_resnet", "run digits_effnet", "fold model 2 of digits_effnet",
                 "TTA view shift(1,0) of digits_resnet"):
        assert what in out
    # half the whole ensemble's time, on a hidden test set of 20,000 images (the passes outweigh the start)
    assert _export(workspace, tmp_path / "half", "--budget", "50%", "--test-images", "20000", "--check") == 0
    out = capsys.readouterr().out
    assert "dropped, in order (estimated change in the metric)" in out and "the blend refitted on what is kept" in out
    assert "check: the budgeted export predicted 20 rows" in out
    folder = tmp_path / "half"
    manifest = json.loads((folder / "manifest.json").read_text())
    spec = json.loads((folder / "export.json").read_text())
    plan = manifest["budget"]
    assert plan["test_images"] == 20_000 and plan["dropped"] and plan["share"] == 0.5
    assert plan["seconds"] == pytest.approx(0.5 * plan["full_seconds"])
    assert plan["projected_seconds"] <= plan["seconds"] < plan["full_seconds"]
    # the kept pieces' own projection, from the kept cost rows, is the plan's
    costs = pd.read_csv(folder / "cost.csv")
    assert projected_seconds(planning_costs(costs), 20_000, manifest["startup_seconds"]) == pytest.approx(
        plan["projected_seconds"], rel=1e-9)
    kept = {(m["run"], f["fold"], v) for m in spec["models"] for f in m["folds"] for v in f["tta"]}
    assert kept == set(zip(costs["model"], costs["fold"], costs["view"]))
    # only the kept checkpoints travel, each listed with its checksum
    checkpoints = {p.relative_to(folder).as_posix() for p in (folder / "models").rglob("*.safetensors")}
    assert checkpoints == {f["file"] for m in spec["models"] for f in m["folds"]}
    assert checkpoints <= set(manifest["files"])
    # the blend refitted on the kept runs and views, scored by nested CV there
    record = spec["ensemble"]
    assert [r["name"] for r in record["runs"]] == [m["run"] for m in spec["models"]]
    assert manifest["expected_cv"]["nested_cv"] == record["nested_cv"]
    got = predict_folder(folder, config.data_dir / "test", config.data_dir / "sample_submission.csv", device="cpu",
                         progress=False)
    assert len(got) == 20 and set(got["label"].astype(str)) <= set(config_classes(config))


def config_classes(config):
    return pd.read_csv(config.data_dir / "train.csv")["label"].astype(str).unique()


def test_the_refit_record_scores_its_kept_views_by_nested_cv(workspace):
    from pipeline.data import load_competition
    from pipeline.ensemble.fitted import load_fitted, reduce_record
    from pipeline.export.budget import load_run_predictions
    from pipeline.export.budgeted import refit_record
    from pipeline.folds import read_folds
    from pipeline.store import RunLayout, read_meta

    config = load_config(workspace)
    competition = load_competition(config, check_image_files=False)
    folds, _ = read_folds(config, competition)
    record = reduce_record(load_fitted(config, "caruana"))
    metric = get_metric(config.competition.metric)
    runs = [load_run_predictions(RunLayout(config.runs_dir / r.name), read_meta(RunLayout(config.runs_dir / r.name)),
                                 len(competition.y), len(competition.test_ids)) for r in record.runs]
    plan = {runs[0].name: Piece(("identity",), (0, 2))}
    refit = refit_record(record, plan, runs, competition.y, folds, metric, competition.task, config, competition)
    expected = blend.nested_score("caruana", np.stack([runs[0].oof(("identity",))]), competition.y, folds, metric,
                                  params=record.blend.state()["params"], task=competition.task)
    assert refit.nested_cv == pytest.approx(expected.nested) and refit.cv == pytest.approx(expected.in_sample)
    # one run: the same fold models in every run, so the blend still meets each fold's models as make ensemble did
    assert refit.run_names() == [runs[0].name] and refit.apply == record.apply == "per_fold"
    # two runs keeping other fold models: the blend meets their fold means
    uneven = {runs[0].name: Piece(runs[0].views, (0, 2)), runs[1].name: Piece(runs[1].views, (1,))}
    refit = refit_record(record, uneven, runs, competition.y, folds, metric, competition.task, config, competition)
    assert refit.apply == "fold_mean" and refit.run_names() == [r.name for r in runs]
    # a single model: its OOF score with the kept view, nothing fitted
    single = load_fitted(config, f"single-{runs[0].name}")
    refit = refit_record(single, plan, runs, competition.y, folds, metric, competition.task, config, competition)
    plain = metric(competition.y, runs[0].oof(("identity",)))
    assert refit.blend is None and refit.nested_cv == refit.cv == pytest.approx(plain)
    assert not np.allclose(runs[0].oof(("identity",)), runs[0].oof_mean)  # the kept view's own predictions


def test_a_budget_below_one_model_is_refused_and_nothing_is_written(workspace, tmp_path, capsys):
    assert _export(workspace, tmp_path / "tiny", "--budget", "0.001s", "--test-images", "10") == 2
    err = capsys.readouterr().err
    assert "is below what one model costs: the cheapest fold model and view need" in err
    assert "give at least BUDGET=" in err
    assert not (tmp_path / "tiny").exists() and not list(tmp_path.glob(".tiny.*"))


@pytest.mark.parametrize("export, message", [
    ({"budget": "two hours"}, r"export.budget 'two hours': give a duration above zero, e.g. 9h, 90m or 3600s, or a "
                              r"share of the whole ensemble's time such as 50%"),
    ({"budget": "0s"}, r"export.budget '0s': give a duration above zero"),
    ({"test_images": 0}, r"export.test_images"),
    ({"budget": "150%"}, r"export.budget '150%': a share of the whole ensemble's time is above 0% and at most 100%"),
    ({"budgett": "2h"}, r"budgett"),
])
def test_a_bad_export_section_is_refused_on_load(workspace, tmp_path, export, message):
    config = yaml.safe_load(workspace.read_text())
    config["export"] = export
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=message):
        load_config(path)
