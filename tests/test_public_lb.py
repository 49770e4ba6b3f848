"""make lb: a public-leaderboard score recorded against the exact file it was given for, shown beside nested CV by
every later make ensemble, with the plot of nested CV against public LB; and the refusals."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.core import io
from pipeline.ensemble.public_lb import read_public_scores
from test_ensemble import _import, _synthetic

METHODS = "ensemble.methods=[mean, geometric_mean, slsqp]"


@pytest.fixture()
def ensembled(small_config, tmp_path, capsys):
    assert main(["folds", "--config", str(small_config)]) == 0
    config = load_config(small_config)
    for name, strength, seed in (("a", 1.5, 1), ("b", 1.5, 2), ("c", 1.2, 3)):  # independent noise: blends win
        assert _import(small_config, tmp_path, name, *_synthetic(config, strength, seed)) == 0
    assert main(["ensemble", "--config", str(small_config), METHODS]) == 0
    capsys.readouterr()
    return small_config, config


def _board(config) -> dict:
    board = pd.read_csv(config.submissions_dir / "leaderboard.csv")
    return {s.rstrip(" *"): r for s, r in zip(board["submission"], board.to_dict("records"))}


def test_scores_are_recorded_per_file_and_shown_by_the_next_ensemble(ensembled, capsys):
    path, config = ensembled
    before = _board(config)
    assert "public LB" not in next(iter(before.values()))
    chosen = pd.read_csv(config.submissions_dir / "leaderboard.csv")["submission"][0].rstrip(" *")
    files = {p.name: io.file_sha256(p) for p in config.submissions_dir.glob("*.csv") if p.name != "leaderboard.csv"}
    best_single = next(name for name in files if name.startswith("best-single_cv"))
    assert files[best_single] != files["submission.csv"]
    # a blend's file whose content differs from the chosen one's and the best single's (one score per content)
    other_file = next(
        name for name, sha in files.items() if sha not in (files["submission.csv"], files[best_single])
    )
    other = other_file.split("_cv")[0]
    assert main(["lb", "--config", str(path), "--score", "0.81"]) == 0
    assert main(["lb", "--config", str(path), "--score", "0.72", "--submission", other]) == 0
    assert main(["lb", "--config", str(path), "--score", "0.64", "--submission", best_single]) == 0
    out = capsys.readouterr().out
    assert "Spearman rank correlation with nested CV: " in out
    records = read_public_scores(config)
    assert [(r["file"], r["public_lb"]) for r in records] == [
        ("submission.csv", 0.81), (other_file, 0.72), (best_single, 0.64)
    ]
    assert records[0]["candidate"] == chosen
    assert records[0]["sha256"] == io.file_sha256(config.submissions_dir / "submission.csv")
    assert records[2]["candidate"].startswith("single-")
    assert records[2]["runs"][0].startswith(records[2]["candidate"].removeprefix("single-") + ":")
    assert all(re.fullmatch(r"[a-z]+:[0-9a-f]+|[a-z]+:None", run) for r in records for run in r["runs"])
    # the next ensemble (same runs, same files) shows them on their rows, and keeps them on every rerun
    for _ in range(2):
        assert main(["ensemble", "--config", str(path), METHODS]) == 0
        board = _board(config)
        assert board[chosen]["public LB"] == 0.81 and board[other]["public LB"] == 0.72
        assert board[records[2]["candidate"]]["public LB"] == 0.64
        assert pd.isna(board["single-c" if records[2]["candidate"] != "single-c" else "single-b"]["public LB"])
        assert (config.submissions_dir / "cv_vs_public_lb.png").stat().st_size > 10_000
    # a file scored again keeps its latest score only
    assert main(["lb", "--config", str(path), "--score", "0.83"]) == 0
    assert [r["public_lb"] for r in read_public_scores(config)] == [0.72, 0.64, 0.83]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--score", "nan"], r"SCORE=nan is not a finite number"),
        ([], r"give the public leaderboard's score: make lb SCORE="),
        (["--score", "0.9", "--submission", "nope.csv"], r"SUBMISSION=nope.csv: no such file in .* files there: "
                                                         r".*submission.csv"),
        (["--score", "0.9", "--submission", "single-c"], r"SUBMISSION=single-c: the last ensemble wrote no file"),
        (["--score", "0.9", "--submission", "edited.csv"], r"no candidate of the last ensemble wrote this file"),
    ],
)
def test_scores_that_cannot_be_recorded_are_refused(ensembled, capsys, args, message):
    path, config = ensembled
    (config.submissions_dir / "edited.csv").write_text("id,label\n1,2\n")
    assert main(["lb", "--config", str(path), *args]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert read_public_scores(config) == []
