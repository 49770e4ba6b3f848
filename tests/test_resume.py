"""A run interrupted mid-fold resumes from its last complete epoch and ends exactly where an uninterrupted run does
(CPU).
"""

from __future__ import annotations

from conftest import assert_same_fold_files, interrupted_after_state

from pipeline.cli import main


def test_interrupted_training_resumes_to_the_same_predictions(small_competition, write_config, tmp_path, capsys):
    straight = write_config(
        small_competition, {"train": {"epochs": 3}, "output_dir": str(tmp_path / "straight")}, name="a.yaml"
    )
    resumed = write_config(
        small_competition, {"train": {"epochs": 3}, "output_dir": str(tmp_path / "resumed")}, name="b.yaml"
    )
    command = ["train", "--model", "digits_resnet", "--folds", "0"]
    assert main([*command, "--config", str(straight)]) == 0

    with interrupted_after_state(n=2):  # between epochs 2 and 3
        assert main([*command, "--config", str(resumed)]) == 130
    assert "rerun the same command to resume" in capsys.readouterr().err
    fold_dir = tmp_path / "resumed" / "runs" / "digits" / "digits_resnet" / "fold0"
    assert (fold_dir / "last.pt").is_file() and not (fold_dir / "fold.json").exists()

    assert main([*command, "--config", str(resumed)]) == 0
    assert "resuming after epoch 2/3" in capsys.readouterr().out
    assert_same_fold_files(
        tmp_path / "straight" / "runs" / "digits" / "digits_resnet" / "fold0",
        fold_dir,
        ("valid.parquet", "valid_plain.parquet", "test.parquet"),
    )
