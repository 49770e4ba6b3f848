"""Seed bags: make train MODEL=x SEEDS=n trains n runs that differ only by train.seed, and scores their mean OOF."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.train.seeds import SeedBagError, seed_overrides, seed_run_names


def test_names_and_overrides():
    assert seed_run_names("x", 3) == ["x-seed0", "x-seed1", "x-seed2"]
    with pytest.raises(SeedBagError):
        seed_run_names("x", 0)
    given = {"train": {"lr": 0.01}, "folds": {"n_splits": 3}}
    assert seed_overrides(given, 43) == {"train": {"lr": 0.01, "seed": 43}, "folds": {"n_splits": 3}}
    assert given == {"train": {"lr": 0.01}, "folds": {"n_splits": 3}}   # a copy
    assert seed_overrides(None, 7) == {"train": {"seed": 7}}


def test_seeds_2_trains_two_runs_and_scores_their_mean_oof(small_config, tmp_path, capsys):
    from pipeline.cli import main
    from pipeline.config import load_config
    from pipeline.data import load_competition
    from pipeline.store import RunLayout, frame_probs, read_meta
    from pipeline.task.metrics import get_metric

    assert main(["train", "--config", str(small_config), "--model", "digits_resnet", "--seeds", "2"]) == 0
    printed = capsys.readouterr().out
    config = load_config(small_config)
    metas = [read_meta(RunLayout(config.runs_dir / f"digits_resnet-seed{k}")) for k in range(2)]
    assert [m.status for m in metas] == ["finished", "finished"]
    assert [m.seed for m in metas] == [config.train.seed, config.train.seed + 1]
    assert metas[0].config_hash != metas[1].config_hash
    settings = [dict(m.config) for m in metas]
    assert {k for k in settings[0] if settings[0][k] != settings[1][k]} == {"seed"}
    competition = load_competition(config)
    oofs = [frame_probs(pd.read_parquet(config.runs_dir / f"digits_resnet-seed{k}" / "oof.parquet"),
                        competition.train_ids, competition.classes, "oof") for k in range(2)]
    assert not np.allclose(oofs[0], oofs[1])
    by_hand = get_metric(config.competition.metric)(competition.y, (oofs[0] + oofs[1]) / 2)
    bag_line = next(line for line in printed.splitlines() if line.startswith("bag of 2 (mean OOF)"))
    assert float(bag_line.split()[-1]) == pytest.approx(by_hand, abs=1e-4)
    assert f"mean OOF CV {by_hand:.4f}" in printed
    for meta in metas:
        assert f"{meta.cv:.4f}" in printed


def test_seeds_with_name_names_the_bag(small_config, tmp_path):
    from pipeline.cli import main

    assert main(["train", "--config", str(small_config), "--model", "digits_resnet", "--seeds", "1", "--name", "r",
                 "--folds", "0"]) == 0
    assert (tmp_path / "out" / "runs" / "digits" / "r-seed0" / "meta.json").is_file()
