"""End to end through the real CLI: folds -> train -> predict -> ensemble -> a validated submission."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.task.metrics import get_metric


def _read_meta(config, run):
    return json.loads((config.runs_dir / run / "meta.json").read_text())


def test_folds_train_predict_ensemble(small_config, capsys):
    config = load_config(small_config)
    assert main(["folds", "--config", str(small_config)]) == 0
    assert config.folds_csv.is_file()

    assert main(["train", "--config", str(small_config), "--model", "digits_resnet"]) == 0
    out = capsys.readouterr().out
    assert "digits_resnet (test_resnet, accuracy) - finished" in out and "CV" in out

    run_dir = config.runs_dir / "digits_resnet"
    meta = _read_meta(config, "digits_resnet")
    assert meta["status"] == "finished" and meta["folds_done"] == [0, 1, 2]
    assert meta["tta"] == ["identity", "shift(1,0)"]
    assert {"torch", "timm", "albumentations"} <= set(meta["versions"])
    # the OOF store: ids, folds, one named column per class, rows that are probabilities
    oof = pd.read_parquet(run_dir / "oof.parquet")
    train = pd.read_csv(config.data_dir / "train.csv", dtype=str)
    folds = pd.read_csv(config.folds_csv, dtype={"id": str})
    assert list(oof.columns) == ["id", "fold"] + [str(k) for k in range(10)]
    assert oof["id"].tolist() == train["id"].tolist()
    assert oof["fold"].tolist() == folds["fold"].tolist()
    probs = oof[[str(k) for k in range(10)]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    # the recorded CV is the metric of the stored OOF predictions
    y = train["label"].astype(int).to_numpy()
    assert meta["cv"] == pytest.approx(get_metric("accuracy")(y, probs))
    test = pd.read_parquet(run_dir / "test.parquet")
    sample = pd.read_csv(config.data_dir / "sample_submission.csv", dtype=str)
    assert test["id"].tolist() == sample["id"].tolist()
    assert (run_dir / "fold0" / "best.safetensors").is_file()
    assert not (run_dir / "fold0" / "last.pt").exists()  # resume state is removed once a fold is final
    # every fold model's test predictions are stored, and their mean is the run's test file: the ensemble applies
    # each blend per fold model from them
    from pipeline.store import RunLayout, read_fold_tests, read_meta
    layout = RunLayout(run_dir)
    fold_tests = read_fold_tests(layout, read_meta(layout), test[[str(k) for k in range(10)]].to_numpy())
    assert fold_tests is not None and fold_tests.shape == (3, len(sample), 10)

    # a rerun skips finished work
    before = (run_dir / "oof.parquet").stat().st_mtime_ns
    assert main(["train", "--config", str(small_config), "--model", "digits_resnet"]) == 0
    assert "already finished" in capsys.readouterr().out
    assert (run_dir / "oof.parquet").stat().st_mtime_ns == before

    # predict re-reads the checkpoints and gives the same predictions with the same views
    assert main(["predict", "--config", str(small_config), "--model", "digits_resnet"]) == 0
    np.testing.assert_allclose(
        pd.read_parquet(run_dir / "oof.parquet")[[str(k) for k in range(10)]].to_numpy(), probs, atol=1e-6
    )

    assert main(["train", "--config", str(small_config), "--model", "digits_effnet"]) == 0
    capsys.readouterr()
    assert main(["ensemble", "--config", str(small_config)]) == 0
    out = capsys.readouterr().out
    assert "ensemble leaderboard" in out and "chosen by nested CV" in out
    assert "per-fold application" not in out  # both runs have their fold models' test predictions

    subs = config.submissions_dir
    names = sorted(p.name for p in subs.glob("*.csv"))
    assert "submission.csv" in names and "leaderboard.csv" in names
    assert any(n.startswith("best-single_cv") for n in names)
    assert any(n.startswith("mean_cv") for n in names) and any(n.startswith("optuna_cv") for n in names)
    assert (subs / "ensemble.png").stat().st_size > 0
    submission = pd.read_csv(subs / "submission.csv", dtype=str)
    assert list(submission.columns) == list(sample.columns)
    assert submission["id"].tolist() == sample["id"].tolist()
    assert set(submission["label"]) <= {str(k) for k in range(10)}
    board = pd.read_csv(subs / "leaderboard.csv")
    assert {"single-digits_resnet", "single-digits_effnet", "mean", "optuna", "caruana"} <= {
        s.rstrip(" *") for s in board["submission"]
    }
    assert board["private LB"].between(0, 1).all()


def test_subset_of_folds_then_the_rest(small_config, capsys):
    config = load_config(small_config)
    assert main(["train", "--config", str(small_config), "--model", "digits_effnet", "--folds", "0,2"]) == 0
    meta = _read_meta(config, "digits_effnet")
    assert meta["status"] == "partial" and meta["folds_done"] == [0, 2]
    assert not (config.runs_dir / "digits_effnet" / "oof.parquet").exists()
    assert main(["train", "--config", str(small_config), "--model", "digits_effnet"]) == 0
    out = capsys.readouterr().out
    assert "fold 0: done before, skipped" in out and "fold 2: done before, skipped" in out
    assert _read_meta(config, "digits_effnet")["status"] == "finished"


def test_changed_settings_need_force(small_config, capsys):
    config = load_config(small_config)
    assert main(["train", "--config", str(small_config), "--model", "digits_effnet", "--folds", "0"]) == 0
    capsys.readouterr()
    assert main(["train", "--config", str(small_config), "--model", "digits_effnet", "train.lr=0.01"]) == 2
    assert "exists with other settings" in capsys.readouterr().err
    assert (
        main(
            [
                "train",
                "--config",
                str(small_config),
                "--model",
                "digits_effnet",
                "--folds",
                "1",
                "--force",
                "train.lr=0.01",
            ]
        )
        == 0
    )
    assert _read_meta(config, "digits_effnet")["folds_done"] == [1]


def test_ensemble_leaves_out_runs_made_on_other_folds(small_config, small_competition, write_config, capsys):
    assert main(["train", "--config", str(small_config), "--model", "digits_effnet"]) == 0
    other = write_config(small_competition, {"folds": {"seed": 5}})
    assert main(["folds", "--config", str(other), "--force"]) == 0
    assert main(["train", "--config", str(other), "--model", "digits_resnet"]) == 0
    capsys.readouterr()
    assert main(["ensemble", "--config", str(other)]) == 0
    out = capsys.readouterr().out
    assert "left out digits_effnet: made on other folds" in out
    assert "only one distinct model" in out


def test_user_file_in_submissions_is_not_overwritten(small_config, capsys):
    config = load_config(small_config)
    assert main(["train", "--config", str(small_config), "--model", "digits_effnet"]) == 0
    config.submissions_dir.mkdir(parents=True)
    (config.submissions_dir / "submission.csv").write_text("mine\n")
    assert main(["ensemble", "--config", str(small_config)]) == 2
    assert "was not written by the pipeline" in capsys.readouterr().err
    assert (config.submissions_dir / "submission.csv").read_text() == "mine\n"
