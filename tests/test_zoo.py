"""`make zoo` screens three tiny architectures on the demo data (one made to fail), writes its leaderboard and
report, skips finished ones on a rerun, and `make zoo-promote` trains the best through the normal train stage."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.cli import main
from pipeline.config import ConfigError, load_config
from pipeline.zoo import ScreenConfig, load_zoo, pareto_front, screen_image_size, stratified_subset

TINY_ZOO = {
    "screen": {
        "rows": "auto",
        "image_size": "auto",
        "epochs": 2,
        "folds": 1,
        "timing_batch_size": 8,
        "timing_steps": 2,
    },
    "architectures": [
        "digits_resnet",
        "digits_effnet",
        "digits_convnext",
        # made to fail: a ViT built for 64-px inputs gets the screen's 32-px images
        {"digits_vit": {"model_kwargs": {"img_size": 64, "patch_size": 4, "dynamic_img_size": False}}},
    ],
}


@pytest.fixture()
def zoo_file(tmp_path):
    path = tmp_path / "zoo.yaml"
    path.write_text(yaml.safe_dump(TINY_ZOO))
    return path


def test_zoo_screens_reports_skips_and_promotes(small_config, zoo_file, tmp_path, capsys):
    command = ["zoo", "--config", str(small_config), "--zoo", str(zoo_file)]
    assert main(command) == 1  # one architecture failed: the exit code says so
    out = capsys.readouterr().out
    assert "job digits_resnet: started on " in out
    assert re.search(r"\[1/4\] digits_resnet: CV \d\.\d{4}.* on \S+:\d+, about .* left", out), (
        out
    )  # time left after the first
    assert "[4/4] digits_vit: FAILED - " in out
    zoo_dir = tmp_path / "out" / "zoo" / "digits"

    board = pd.read_csv(zoo_dir / "leaderboard.csv", keep_default_na=False, na_values=[""])
    assert board["architecture"].tolist()[-1] == "digits_vit" and board["status"].tolist() == [
        "ok",
        "ok",
        "ok",
        "failed",
    ]
    assert "Input height (32) doesn't match model (64)" in board.loc[3, "error"]
    ok = board[board["status"] == "ok"]
    assert (ok["cv"].diff().dropna() <= 0).all()  # best first
    for column in ("params_m", "gflops", "train_ips", "infer_ips", "peak_memory_mb", "wall_seconds"):
        assert (ok[column] > 0).all(), column
    for _, row in ok.iterrows():
        record = json.loads((zoo_dir / row["architecture"] / "screen.json").read_text())
        meta = json.loads((tmp_path / "out" / "runs" / "digits.zoo" / row["architecture"] / "meta.json").read_text())
        assert row["cv"] == pytest.approx(meta["folds"]["0"]["score"])  # the screening CV is fold 0's real score
        assert record["screen_image_size"] == 32 and len(record["history"]["0"]) == 2
    for name in (
        "leaderboard.md",
        "report.html",
        "pareto_throughput.png",
        "pareto_params.png",
        "learning_curves.png",
        "oof_correlation.png",
    ):
        assert (zoo_dir / name).stat().st_size > 0, name
    page = (zoo_dir / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4 and "most complementary pair" in page
    assert "best accuracy per cost" in (zoo_dir / "leaderboard.md").read_text()

    assert main(command) == 1  # the rerun skips the three screened ones and retries the failed one
    out = capsys.readouterr().out
    assert out.count("screened before") == 3 and "[1/1] digits_vit: FAILED" in out

    best = board["architecture"][0]
    assert main(["zoo-promote", "--config", str(small_config), "--top", "1"]) == 0
    meta = json.loads((tmp_path / "out" / "runs" / "digits" / best / "meta.json").read_text())
    assert meta["status"] == "finished" and meta["n_folds"] == 3  # every fold of the real split


def test_zoo_promote_needs_a_screen(small_config, capsys):
    assert main(["zoo-promote", "--config", str(small_config), "--top", "2"]) == 2
    assert "run 'make zoo' first" in capsys.readouterr().err


BAD_ZOOS = [
    ({"architectures": []}, "list at least one architecture"),
    ({"architectures": ["digits_resnet", "digits_resnet"]}, r"listed twice: \['digits_resnet'\]"),
    ({"architectures": ["resnet5O"]}, "resnet5O"),
    ({"architectures": [{"digits_resnet": {"lr": -1}}]}, "lr"),
    ({"screen": {"epoch": 2}, "architectures": ["digits_resnet"]}, "unknown key 'screen.epoch'.*epochs"),
    ({"screen": {"rows": 3}, "architectures": ["digits_resnet"]}, "at least 8"),
]


@pytest.mark.parametrize(
    "content, message", BAD_ZOOS, ids=["empty", "twice", "unknown-model", "bad-override", "unknown-key", "rows"]
)
def test_bad_zoo_files_are_refused(small_config, tmp_path, content, message):
    path = tmp_path / "bad_zoo.yaml"
    path.write_text(yaml.safe_dump(content))
    with pytest.raises(ConfigError, match=message):
        load_zoo(path, load_config(small_config))


def test_pareto_front_keeps_the_undominated():
    score = np.array([0.90, 0.95, 0.85, 0.95, 0.80])
    speed = np.array([100, 50, 200, 40, 150])
    assert pareto_front(score, speed).tolist() == [True, True, True, False, False]
    assert pareto_front(-score, speed, greater_is_better=False).tolist() == [True, True, True, False, False]


def test_stratified_subset_keeps_every_class_in_proportion():
    y = np.repeat(np.arange(4), [400, 300, 200, 3])
    rows = stratified_subset(y, 180, seed=1)
    counts = np.bincount(y[rows], minlength=4)
    assert counts.tolist() == [80, 60, 40, 2] and np.all(np.diff(rows) > 0)
    assert np.array_equal(stratified_subset(y, 180, seed=1), rows)
    assert len(stratified_subset(y, 10_000)) == len(y)


@pytest.mark.parametrize(
    "setting, full, data_side, expected",
    [
        ("auto", 224, 32, 64),
        ("auto", 224, 600, 128),
        ("auto", 224, 100, 100),
        ("auto", 32, 600, 32),
        (96, 299, 32, 96),
        (96, 64, 32, 64),
    ],
)
def test_screen_image_size(setting, full, data_side, expected):
    assert screen_image_size(ScreenConfig(image_size=setting), full, data_side) == expected
