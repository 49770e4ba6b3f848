"""Every task shape through every stage: targets, folds, heads, submissions, and the real commands end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn import metrics as skm

from pipeline.cli import main
from pipeline.config import CompetitionConfig, ConfigError, load_config
from pipeline.data.demo import DEMO_TARGETS
from pipeline.folds import FoldsError, make_folds
from pipeline.task.metrics import get_metric
from pipeline.task.tasks import TASKS, Targets, TaskError, get_task, resolve_loss, submission_frame
from pipeline.train.heads import make_head


def _comp(**changes) -> CompetitionConfig:
    return CompetitionConfig.model_validate({"name": "t", "data_dir": ".", **changes})


# -- targets -----------------------------------------------------------------------------

def test_multilabel_from_a_label_string_and_from_columns():
    frame = pd.DataFrame({"id": ["a", "b", "c"], "tags": ["water clear", None, "clear"]})
    targets = get_task("multilabel").parse(frame, _comp(task="multilabel", target_column="tags"))
    assert targets.columns == ["clear", "water"]
    np.testing.assert_array_equal(targets.y, [[1, 1], [0, 0], [1, 0]])  # an empty label string: no labels
    columns = pd.DataFrame({"id": ["a", "b"], "cat": ["1", "0"], "dog": ["1", "1"]})
    targets = get_task("multilabel").parse(columns, _comp(task="multilabel", target_columns=["cat", "dog"]))
    np.testing.assert_array_equal(targets.y, [[1, 1], [0, 1]])


def test_binary_positive_class_and_ordinal_full_scale():
    frame = pd.DataFrame({"id": list("abcd"), "label": ["benign", "malignant", "benign", "benign"]})
    targets = get_task("binary").parse(frame, _comp(task="binary"))
    assert targets.columns == ["malignant"] and targets.labels == ["benign", "malignant"]
    np.testing.assert_array_equal(targets.y, [0, 1, 0, 0])
    flipped = get_task("binary").parse(frame, _comp(task="binary", positive_class="benign"))
    np.testing.assert_array_equal(flipped.y, [1, 0, 1, 1])
    grades = pd.DataFrame({"id": list("abc"), "label": ["1", "4", "2"]})
    targets = get_task("ordinal").parse(grades, _comp(task="ordinal"))
    assert targets.labels == ["1", "2", "3", "4"]  # grade 3 is unseen but on the scale
    np.testing.assert_array_equal(targets.y, [0, 3, 1])


@pytest.mark.parametrize("task, column, values, changes, message", [
    ("binary", "label", ["a", "b", "c"], {}, "needs two classes.*use task 'multiclass'"),
    ("binary", "label", ["a", "a", "a"], {}, "one class only"),
    ("binary", "label", ["a", "b", "a"], {"positive_class": "z"}, "positive_class 'z' is not a value"),
    ("regression", "label", ["1.5", "x", "2"], {}, r"needs numbers in 'label'; row\(s\) \[3\]"),
    ("regression", "label", ["1.5", "12", "2"], {"target_range": [0, 10]}, "outside competition.target_range"),
    ("ordinal", "label", ["1", "2.5", "2"], {}, "needs integer grades"),
    ("multilabel", "label", ["x", "x", ""], {}, "names 1 label"),
    ("multiclass", "label", ["a", None, "b"], {}, "empty or NaN label"),
])
def test_bad_targets(task, column, values, changes, message):
    frame = pd.DataFrame({"id": [str(i) for i in range(len(values))], column: values})
    with pytest.raises(TaskError, match=message):
        get_task(task).parse(frame, _comp(task=task, target_column=column, **changes))


@pytest.mark.parametrize("changes, message", [
    ({"task": "regression", "metric": "accuracy"}, "metric 'accuracy' does not apply to task 'regression'"),
    ({"task": "multiclass", "target_columns": ["a", "b"]}, "target_columns are for task 'multilabel'"),
    ({"task": "multiclass", "positive_class": "1"}, "positive_class is for task 'binary'"),
    ({"task": "binary", "target_range": [0, 1]}, "target_range is for tasks"),
    ({"task": "regression", "target_range": [5, 1]}, "low < high"),
    ({"task": "binary", "metric": "f2"}, "unknown metric 'f2'"),
])
def test_config_refuses_what_does_not_fit_the_task(tmp_path, write_config, small_competition, changes, message):
    path = write_config(small_competition, {"competition": changes})
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_loss_must_fit_the_task(write_config, small_competition):
    with pytest.raises(ConfigError, match="train.loss 'mse' does not apply to task 'multiclass'"):
        load_config(write_config(small_competition, {"train": {"loss": "mse"}}))
    assert resolve_loss("regression", "auto") == "mse" and resolve_loss("binary", "ce") == "ce"


def test_each_task_has_a_default_metric_that_applies():
    for name, task in TASKS.items():
        assert name in get_metric(task.default_metric).tasks


# -- folds -------------------------------------------------------------------------------

def test_multilabel_folds_keep_every_label_share():
    rng = np.random.default_rng(0)
    y = (rng.random((600, 6)) < np.array([0.5, 0.3, 0.1, 0.05, 0.6, 0.2])).astype(int)
    folds = make_folds(y, 5, "stratified", seed=1, task="multilabel")
    shares = np.array([y[folds == f].mean(axis=0) for f in range(5)])
    assert np.ptp(shares, axis=0).max() < 0.03  # every label within 3 points across folds
    np.testing.assert_array_equal(folds, make_folds(y, 5, "multilabel", seed=1, task="multilabel"))


def test_regression_folds_are_stratified_on_target_bins():
    rng = np.random.default_rng(0)
    y = rng.lognormal(size=1000)
    folds = make_folds(y, 5, "stratified", seed=0, task="regression")
    top = y >= np.quantile(y, 0.95)  # the 50 largest targets: 20 quantile bins put 10 in every fold
    assert np.bincount(folds[top], minlength=5).tolist() == [10] * 5
    assert np.bincount(folds, minlength=5).tolist() == [200] * 5


def test_multilabel_strategy_needs_label_columns():
    with pytest.raises(FoldsError, match="strategy 'multilabel' needs a 0/1 matrix"):
        make_folds(np.arange(100) % 2, 5, "multilabel")


# -- heads --------------------------------------------------------------------------------

HEAD_CASES = [(task, loss) for task, spec in TASKS.items() for loss in spec.losses]


@pytest.mark.parametrize("task, loss", HEAD_CASES)
def test_head_trains_and_maps_logits_to_stored_predictions(task, loss):
    rng = np.random.default_rng(0)
    n, columns = 8, {"multiclass": 4, "binary": 1, "multilabel": 3, "regression": 1, "ordinal": 1}[task]
    y = {"multiclass": rng.integers(0, 4, n), "binary": rng.integers(0, 2, n), "multilabel": rng.integers(0, 2, (n, 3)),
         "regression": rng.normal(50, 10, n), "ordinal": rng.integers(0, 5, n)}[task]
    targets = Targets(
        y,
        [str(k) for k in range(columns)],
        [],
        value_range=(0.0, 100.0) if task == "regression" else (0.0, 4.0),
        value_mean=float(np.mean(y)),
        value_std=float(np.std(y)) or 1.0,
    )
    head = make_head(task, loss, targets, label_smoothing=0.1 if task != "regression" else 0.0)
    logits = torch.randn(n, head.n_outputs(columns), requires_grad=True)
    value = head(logits, torch.as_tensor(y))
    value.backward()
    assert torch.isfinite(value) and logits.grad is not None
    out = head.activate(logits.detach())
    assert out.shape == (n, columns)
    if get_task(task).output != "value":
        assert out.min() >= 0 and out.max() <= 1
    if get_task(task).output == "simplex":
        torch.testing.assert_close(out.sum(dim=1), torch.ones(n))
    if get_task(task).output == "value":
        # the logits the loss aims at come back as the targets themselves
        target = torch.as_tensor(y, dtype=torch.float32)[:, None]
        ideal = torch.logit(head._scaled(target), eps=1e-6) if loss == "bce" else head._scaled(target)
        torch.testing.assert_close(head.activate(ideal), target, atol=1e-3, rtol=1e-4)


# -- submissions --------------------------------------------------------------------------


def _sample(columns):
    return pd.DataFrame({"id": ["a", "b", "c"], **{c: 0 for c in columns}})


def test_submission_formats_follow_the_sample():
    p = np.array([[0.9], [0.2], [0.6]])
    binary = Targets(np.zeros(0), ["pos"], ["neg", "pos"])
    out = submission_frame(_sample(["target"]), "id", "target", "binary", binary, p)
    np.testing.assert_allclose(out["target"], [0.9, 0.2, 0.6])
    out = submission_frame(_sample(["target"]), "id", "target", "binary", binary, p, (p >= 0.5) * 1.0, needs="label")
    assert out["target"].tolist() == ["pos", "neg", "pos"]
    out = submission_frame(_sample(["neg", "pos"]), "id", "target", "binary", binary, p)
    np.testing.assert_allclose(out["neg"], [0.1, 0.8, 0.4])

    multi = Targets(np.zeros(0), ["clear", "haze", "water"], ["clear", "haze", "water"])
    probs = np.array([[0.9, 0.1, 0.6], [0.2, 0.3, 0.1], [0.6, 0.7, 0.2]])
    decided = (probs >= [0.5, 0.25, 0.5]) * 1.0
    out = submission_frame(_sample(["tags"]), "id", "tags", "multilabel", multi, probs, decided, needs="label")
    assert out["tags"].tolist() == ["clear water", "haze", "clear haze"]
    out = submission_frame(
        _sample(["water", "clear", "haze"]), "id", "tags", "multilabel", multi, probs, decided, needs="label"
    )
    assert out["haze"].tolist() == [0, 1, 1] and list(out.columns) == ["id", "water", "clear", "haze"]

    grades = Targets(np.zeros(0), ["grade"], ["1", "2", "3", "4"])
    values = np.array([[0.2], [2.6], [9.0]])
    out = submission_frame(
        _sample(["grade"]), "id", "grade", "ordinal", grades, values, np.array([[0.0], [2.0], [3.0]]), "label"
    )
    assert out["grade"].tolist() == ["1", "3", "4"]
    out = submission_frame(_sample(["value"]), "id", "value", "regression", Targets(np.zeros(0), ["value"], []), values)
    np.testing.assert_allclose(out["value"], [0.2, 2.6, 9.0])


@pytest.mark.parametrize(
    "task, columns, message",
    [
        ("regression", ["a", "b"], "fit none of the formats"),
        ("multilabel", ["x", "y"], "one column per label"),
        ("binary", ["p", "q"], "positive probability"),
    ],
)
def test_submission_format_mismatch_is_named(task, columns, message):
    targets = Targets(np.zeros(0), ["c1", "c2"], ["c1", "c2"])
    with pytest.raises(TaskError, match=message):
        submission_frame(_sample(columns), "id", "target", task, targets, np.zeros((3, 2)))


# -- end to end: the real commands on small data, one competition per task ----------------

METRICS = {"binary": "roc_auc", "multilabel": "f1_micro", "regression": "rmse", "ordinal": "qwk"}
SKLEARN = {
    "roc_auc": lambda y, p: skm.roc_auc_score(y, p[:, 0]),
    "f1_micro": lambda y, p: skm.f1_score(y, p >= 0.5, average="micro"),
    "rmse": lambda y, p: skm.mean_squared_error(y, p[:, 0]) ** 0.5,
    "qwk": lambda y, p: skm.cohen_kappa_score(
        y, np.clip(np.floor(p[:, 0] + 0.5), 0, None).astype(int), weights="quadratic"
    ),
}


def _task_competition(source: Path, target: Path, task: str) -> str:
    """The small digits competition rewritten with the demo's targets for ``task``; returns the target column."""
    shutil.copytree(source, target)
    column, value, placeholder = DEMO_TARGETS[task]
    for name in ("train.csv", "solution.csv"):
        frame = pd.read_csv(source / name, dtype=str)
        pd.DataFrame({"id": frame["id"], column: [value(int(d)) for d in frame["label"]]}).to_csv(
            target / name, index=False
        )
    sample = pd.read_csv(source / "sample_submission.csv", dtype=str)
    pd.DataFrame({"id": sample["id"], column: placeholder}).to_csv(target / "sample_submission.csv", index=False)
    return column


@pytest.mark.parametrize("task", sorted(METRICS))
def test_every_task_end_to_end(task, small_competition, write_config, tmp_path, capsys):
    column = _task_competition(small_competition, tmp_path / f"data_{task}", task)
    methods = ["mean", "caruana", "logreg_stacker", "geometric_mean"]
    path = write_config(
        tmp_path / f"data_{task}",
        {
            "competition": {"task": task, "target_column": column, "metric": METRICS[task]},
            "ensemble": {"methods": methods, "method_params": {"logreg_stacker": {"C": 0.1}}},
        },
    )
    config = load_config(path)
    assert main(["folds", "--config", str(path)]) == 0
    for model in ("digits_resnet", "digits_effnet"):
        assert main(["train", "--config", str(path), "--model", model]) == 0
    out = capsys.readouterr().out
    assert f"(test_resnet, {METRICS[task]}) - finished" in out

    # the OOF store: the task's columns, and the recorded CV equals scikit-learn's on them
    meta = json.loads((config.runs_dir / "digits_resnet" / "meta.json").read_text())
    oof = pd.read_parquet(config.runs_dir / "digits_resnet" / "oof.parquet")
    expected = {
        "binary": ["1"],
        "multilabel": ["even", "prime", "loop", "big"],
        "regression": ["value"],
        "ordinal": ["grade"],
    }[task]
    assert sorted(oof.columns[2:]) == sorted(expected) and meta["task"] == task
    train = pd.read_csv(config.data_dir / "train.csv", dtype=str)
    competition_y = get_task(task).parse(train, config.competition).y
    values = oof[meta["classes"]].to_numpy()
    assert meta["cv"] == pytest.approx(SKLEARN[METRICS[task]](competition_y, values), rel=1e-9)

    assert main(["ensemble", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "chosen by nested CV" in out
    if task in ("regression", "ordinal"):
        assert "skipped geometric_mean" in out  # a log-space mean of values does not exist
    # the submission has the sample's format
    sample = pd.read_csv(config.data_dir / "sample_submission.csv", dtype=str, keep_default_na=False)
    submission = pd.read_csv(config.submissions_dir / "submission.csv", dtype=str, keep_default_na=False)
    assert list(submission.columns) == list(sample.columns) and submission["id"].tolist() == sample["id"].tolist()
    cells = submission[column]
    if task == "binary":
        assert cells.astype(float).between(0, 1).all()
    elif task == "multilabel":
        assert {t for row in cells for t in row.split()} <= set(expected)
    elif task == "regression":
        assert np.isfinite(cells.astype(float)).all()
    else:
        assert set(cells) <= {"0", "1", "2", "3", "4"}
    board = pd.read_csv(config.submissions_dir / "leaderboard.csv")
    assert board["private LB"].notna().all()


@pytest.mark.parametrize(
    "task, columns, oof, accepted",
    [
        ("regression", ["value"], [[12.5], [-3.0]], True),  # values: any finite number
        ("multilabel", ["a", "b"], [[0.9, 0.8], [0.1, 0.0]], True),  # independent probabilities: no sum to 1
        ("multilabel", ["a", "b"], [[1.2, 0.8], [0.1, 0.0]], False),  # ... but each in [0, 1]
        ("multiclass", ["a", "b"], [[0.9, 0.8], [0.1, 0.0]], False),  # class probabilities must sum to 1
    ],
)
def test_imported_predictions_are_checked_per_task(task, columns, oof, accepted):
    from pipeline.store import StoreError, validate_import

    ids, folds = np.array(["x", "y"]), np.array([0, 1])
    oof_frame = pd.DataFrame(oof, columns=columns).assign(id=ids, fold=folds)
    test_frame = pd.DataFrame(oof, columns=columns).assign(id=ids)
    if accepted:
        got, _ = validate_import(oof_frame, test_frame, ids, ids, folds, columns, "nb", task)
        np.testing.assert_allclose(got, oof)
    else:
        with pytest.raises(StoreError, match="outside \\[0, 1\\]|do not sum to 1"):
            validate_import(oof_frame, test_frame, ids, ids, folds, columns, "nb", task)
