"""make bench-recipes: each row of the rows file is one real `train` run, scored on its fold and on the hidden
solution.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from benchmarks.recipes import main, read_rows
from pipeline.config import ConfigError
from pipeline.core.io import UnsafeNameError


@pytest.mark.parametrize(
    "text, error, match",
    [
        ("rows: []", ConfigError, "expected 'rows:'"),
        ("folds: [0]", ConfigError, "expected 'rows:'"),
        ("rows: [{model: test_resnet}]", ConfigError, "needs at least 'name' and 'model'"),
        ("rows: [{name: a, model: m, sett: {}}]", ConfigError, r"unknown keys \['sett'\]"),
        ("rows: [{name: a, model: m}, {name: a, model: n}]", ConfigError, "'a' appears twice"),
        ("rows: [{name: ../a, model: m}]", UnsafeNameError, "row name"),
    ],
)
def test_a_bad_rows_file_is_refused_before_any_training(tmp_path, text, error, match):
    path = tmp_path / "rows.yaml"
    path.write_text(text)
    with pytest.raises(error, match=match):
        read_rows(path)


def test_rows_default_to_the_files_folds(tmp_path):
    path = tmp_path / "rows.yaml"
    path.write_text(
        "folds: [1, 2]\nrows:\n  - {name: a, model: m}\n  - {name: b, model: m, folds: [0], set: {train.ema: true}}\n"
    )
    rows = read_rows(path)
    assert [r["folds"] for r in rows] == [[1, 2], [0]]
    assert rows[1]["set"] == {"train.ema": True}


def test_each_row_trains_a_run_and_is_scored_on_its_fold_and_the_hidden_labels(
    small_competition, write_config, tmp_path
):
    config = write_config(small_competition)
    rows = tmp_path / "rows.yaml"
    rows.write_text(
        yaml.safe_dump(
            {
                "folds": [0],
                "rows": [
                    {"name": "plain", "model": "digits_resnet"},
                    {
                        "name": "smoothed",
                        "model": "digits_resnet",
                        "set": {"train.label_smoothing": 0.1, "train.tta": ["identity"]},
                    },
                ],
            }
        )
    )
    out = tmp_path / "recipes.json"
    assert main(["--config", str(config), "--rows", str(rows), "--out", str(out)]) == 0
    results = {r["name"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(results) == {"plain", "smoothed"}

    runs = tmp_path / "out" / "runs" / "digits"
    solution = pd.read_csv(small_competition / "solution.csv", dtype=str)
    sample = pd.read_csv(small_competition / "sample_submission.csv", dtype=str)
    truth = solution.set_index("id").loc[sample["id"], "label"].astype(int).to_numpy()
    for name, result in results.items():
        fold = json.loads((runs / name / "fold0" / "fold.json").read_text())
        assert result["score"] == pytest.approx(fold["score"])
        test = pd.read_parquet(runs / name / "fold0" / "test.parquet").sort_values("row").drop(columns="row")
        by_hand = np.mean(test[sorted(test.columns, key=int)].to_numpy().argmax(axis=1) == truth)
        assert result["private"] == pytest.approx(by_hand)
        assert result["epochs"] == 1 and result["folds"] == [0]
    assert results["smoothed"]["settings"] == {"train.label_smoothing": 0.1, "train.tta": ["identity"]}
    meta = json.loads((runs / "smoothed" / "meta.json").read_text())
    assert meta["config"]["label_smoothing"] == 0.1

    # a rerun scores the stored runs without training them again
    before = (runs / "plain" / "fold0" / "fold.json").stat().st_mtime_ns
    assert main(["--config", str(config), "--rows", str(rows), "--only", "plain", "--out", str(out)]) == 0
    assert (runs / "plain" / "fold0" / "fold.json").stat().st_mtime_ns == before
    assert [r["name"] for r in json.loads(out.read_text())["rows"]] == ["plain"]
