"""make lr-find: the learning-rate range test writes its curve, suggests an lr by the documented rule, and leaves
the run store alone."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.train.lr_find import LrFindError, diverged, lr_schedule, smooth_losses, suggest_lr


def _curve(shape: str, lrs: np.ndarray) -> np.ndarray:
    x = np.log10(lrs)
    if shape == "valley":        # flat, a steep fall centred at 1e-3, a minimum near 1e-1, then up
        return 2.0 - 1.5 / (1 + np.exp(-(x + 3) * 3)) + np.where(x > -1, (x + 1) ** 2, 0.0)
    if shape == "only_up":       # the loss never falls: the first point is the minimum
        return 1.0 + (x + 7) ** 2
    if shape == "only_down":     # falls all the way, fastest at the end
        return 5.0 - np.exp(x)
    if shape == "nan_tail":      # a fall centred at 1e-4, then not finite
        out = 2.0 - 1.0 / (1 + np.exp(-(x + 4) * 4))
        out[x > 0] = np.nan
        return out
    raise KeyError(shape)


@pytest.mark.parametrize("shape, expected", [
    ("valley", 1e-3),     # the steepest fall, not the minimum (near 1e-1)
    ("only_up", 10 ** -6.2),   # nothing falls: the first learning rate past the skipped first tenth (8 of 81)
    ("only_down", 10.0),  # the fall is steepest at the end of the sweep
    ("nan_tail", 1e-4),   # the non-finite tail is ignored
])
def test_the_suggestion_is_the_steepest_descent_before_the_minimum(shape, expected):
    lrs = lr_schedule(1e-7, 10.0, 81)    # 10 points per decade: every power of ten is a point
    suggestion = suggest_lr(lrs, _curve(shape, lrs))
    assert 1e-7 <= suggestion <= 10.0
    assert suggestion == pytest.approx(expected, rel=0.3)
    # the rule by hand: argmin of the slope in log10(lr) over the points from the 9th (the first tenth skipped,
    # as fastai does) up to the minimum
    smoothed = _curve(shape, lrs)
    end = len(lrs) if np.isfinite(smoothed).all() else int(np.argmin(np.isfinite(smoothed)))
    slope = np.gradient(smoothed[:end], np.log10(lrs[:end]))
    lowest = 8 + int(np.argmin(smoothed[8:end]))
    assert suggestion == lrs[8 + int(np.argmin(slope[8:lowest + 1]))]


def test_noise_at_the_start_of_the_sweep_is_not_the_suggestion():
    # a real CIFAR sweep's start: the debiased average of 2-3 batches falls fast by chance, then the true fall at 1e-3
    lrs = lr_schedule(1e-7, 10.0, 81)
    smoothed = _curve("valley", lrs)
    smoothed[:3] += np.array([0.3, 0.15, 0.05])
    assert suggest_lr(lrs, smoothed) == pytest.approx(1e-3, rel=0.3)


def test_the_sweep_is_exponential_from_start_to_end():
    lrs = lr_schedule(1e-6, 1.0, 7)
    assert lrs[0] == pytest.approx(1e-6) and lrs[-1] == pytest.approx(1.0)
    assert np.allclose(lrs[1:] / lrs[:-1], 10.0)


def test_smoothing_is_debiased_and_divergence_is_relative_to_the_best():
    assert np.allclose(smooth_losses(np.full(5, 3.0)), 3.0)   # debiased: a constant stays itself from the first step
    assert np.allclose(smooth_losses(np.array([1.0, 2.0]), beta=0.0), [1.0, 2.0])
    assert diverged(4.1, 1.0, 4.0) and not diverged(3.9, 1.0, 4.0) and diverged(float("nan"), 1.0, 4.0)


def test_too_few_points_is_an_error_of_ours():
    with pytest.raises(LrFindError):
        suggest_lr(np.array([1e-3]), np.array([1.0]))


def test_lr_find_writes_its_curve_and_nothing_under_runs(small_config, tmp_path, capsys):
    from pipeline.cli import main

    out = tmp_path / "out"
    assert main(["lr-find", "--config", str(small_config), "--model", "digits_resnet", "--start-lr", "1e-5",
                 "--end-lr", "1", "--steps", "12"]) == 0
    printed = capsys.readouterr().out
    assert "suggested lr" in printed and "steepest descent" in printed
    plot, csv = out / "lr_find" / "digits" / "digits_resnet.png", out / "lr_find" / "digits" / "digits_resnet.csv"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    curve = pd.read_csv(csv)
    assert list(curve.columns) == ["lr", "loss", "smoothed_loss"] and 2 <= len(curve) <= 12
    assert curve["lr"].iloc[0] == pytest.approx(1e-5)
    suggestion = float(printed.split("suggested lr ")[1].split()[0])
    assert 1e-5 * 0.99 <= suggestion <= 1.01
    assert suggestion == pytest.approx(suggest_lr(curve["lr"].to_numpy(), curve["smoothed_loss"].to_numpy()), rel=0.01)
    runs = out / "runs"
    assert not runs.exists() or not any(p.is_file() for p in runs.rglob("*"))


def test_a_bad_sweep_range_stops_before_any_work(small_config, tmp_path, capsys):
    from pipeline.cli import main

    assert main(["lr-find", "--config", str(small_config), "--model", "digits_resnet", "--start-lr", "1",
                 "--end-lr", "0.1"]) == 2
    assert "lr_find.start_lr" in capsys.readouterr().err
    assert not (tmp_path / "out" / "lr_find").exists()


@pytest.mark.parametrize("section, message", [
    ({"num_steps": 2}, "lr_find.num_steps"),
    ({"start_lr": 1.0, "end_lr": 0.5}, "must be below lr_find.end_lr"),
    ({"stepz": 10}, "unknown key 'lr_find.stepz'"),
])
def test_the_config_section_is_validated_on_load(small_competition, write_config, section, message):
    from pipeline.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=message):
        load_config(write_config(small_competition, {"lr_find": section}))
