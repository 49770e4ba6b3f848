"""A run interrupted mid-fold resumes from its last complete epoch and ends exactly where an uninterrupted run does (CPU)."""

from __future__ import annotations

import pandas as pd

from pipeline.train import checkpoint
from pipeline.cli import main


def test_interrupted_training_resumes_to_the_same_predictions(small_competition, write_config, tmp_path, monkeypatch, capsys):
    straight = write_config(small_competition, {"train": {"epochs": 3}, "output_dir": str(tmp_path / "straight")}, name="a.yaml")
    resumed = write_config(small_competition, {"train": {"epochs": 3}, "output_dir": str(tmp_path / "resumed")}, name="b.yaml")
    command = ["train", "--model", "digits_resnet", "--folds", "0"]
    assert main([*command, "--config", str(straight)]) == 0

    real_save = checkpoint.save_state
    saves = []

    def crash_after_second_epoch(path, state):
        real_save(path, state)
        saves.append(state["epoch"])
        if len(saves) == 2:
            raise KeyboardInterrupt  # what Ctrl-C or a preempted machine does between epochs

    monkeypatch.setattr(checkpoint, "save_state", crash_after_second_epoch)
    assert main([*command, "--config", str(resumed)]) == 130
    assert "rerun the same command to resume" in capsys.readouterr().err
    monkeypatch.undo()
    fold_dir = tmp_path / "resumed" / "runs" / "digits" / "digits_resnet" / "fold0"
    assert (fold_dir / "last.pt").is_file() and not (fold_dir / "fold.json").exists()

    assert main([*command, "--config", str(resumed)]) == 0
    assert "resuming after epoch 2/3" in capsys.readouterr().out
    for name in ("valid.parquet", "valid_plain.parquet", "test.parquet"):
        a = pd.read_parquet(tmp_path / "straight" / "runs" / "digits" / "digits_resnet" / "fold0" / name)
        b = pd.read_parquet(fold_dir / name)
        pd.testing.assert_frame_equal(a, b, check_exact=True)
