"""Training recipes: weight EMA, mixup/cutmix, gradient accumulation (all CPU, tiny models)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from conftest import assert_same_fold_files, interrupted_after_state

from pipeline.cli import main
from pipeline.config import ConfigError, TrainConfig, load_config, resolve_train_config
from pipeline.train.heads import make_head
from pipeline.train.recipes import BatchMixer, WeightEma
from pipeline.train.runtime import Runtime
from pipeline.train.steps import train_step

CPU = Runtime(device=torch.device("cpu"), amp_dtype=None, channels_last=False, num_workers=0, pin_memory=False)


def test_ema_follows_a_hand_computed_update():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    ema = WeightEma(model, decay=0.9, warmup=False)
    w0 = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(1)  # timm: the first update copies the weights (decay 0)
    w1 = model.weight.detach().clone()
    assert torch.equal(ema.module.weight, w1) and not torch.equal(w1, w0)
    with torch.no_grad():
        model.weight.mul_(2.0)
    ema.update(2)
    expected = 0.9 * w1 + 0.1 * model.weight.detach()
    torch.testing.assert_close(ema.module.weight, expected)
    assert not ema.module.weight.requires_grad or ema.module.weight.grad is None


def _mixer(task: str, n: int, **keys) -> BatchMixer:
    cfg = TrainConfig(mixup_alpha=keys.pop("mixup_alpha", 0.4), cutmix_alpha=keys.pop("cutmix_alpha", 1.0), **keys)
    return BatchMixer(make_head(task, "auto"), n, cfg)


@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_mixup_targets_sum_to_one(mode):
    torch.manual_seed(0)
    mixer = _mixer("multiclass", 5, mixup_mode=mode, label_smoothing=0.1)
    x, y = torch.randn(8, 3, 8, 8), torch.arange(8) % 5
    for _ in range(5):
        mixed_x, target = mixer(x.clone(), y)
        assert target.shape == (8, 5) and mixed_x.shape == x.shape
        torch.testing.assert_close(target.sum(dim=1), torch.ones(8))


def test_mixup_with_lambda_one_is_the_identity():
    mixer = _mixer("multiclass", 4, mixup_prob=0.0)   # never mixes: lambda = 1
    x, y = torch.randn(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 0, 1])
    mixed_x, target = mixer(x.clone(), y)
    assert torch.equal(mixed_x, x)
    assert torch.equal(target, torch.nn.functional.one_hot(y, 4).float())
    labels = _mixer("multilabel", 3, mixup_prob=0.0)
    dense = torch.tensor([[1, 0, 1], [0, 1, 0]])
    assert torch.equal(labels(x[:2].clone(), dense)[1], dense.float())


def test_mixup_soft_loss_matches_the_hard_loss_at_lambda_one():
    head = make_head("multiclass", "auto")
    logits, y = torch.randn(4, 3), torch.tensor([0, 2, 1, 2])
    soft = torch.nn.functional.one_hot(y, 3).float()
    torch.testing.assert_close(head.soft_loss(logits, soft), head.loss(logits, y))


@pytest.mark.parametrize("task", ["regression", "ordinal"])
def test_mixup_is_refused_for_value_tasks(small_config, task):
    config = load_config(small_config)
    config = config.model_copy(update={"competition": config.competition.model_copy(update={"task": task}),
                                       "train": config.train.model_copy(update={"mixup_alpha": 0.2})})
    with pytest.raises(ConfigError, match=f"not task '{task}'.*value on a scale"):
        resolve_train_config(config, "digits_resnet")


def test_grad_accumulation_equals_one_step_on_the_doubled_batch():
    torch.manual_seed(0)
    x, y = torch.randn(8, 4), torch.randn(8, 2)
    models = [torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2)) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.1) for m in models]
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    loss = torch.nn.functional.mse_loss
    train_step(models[0], x, y, loss, optimizers[0], scaler, CPU)
    train_step(models[1], x[:4], y[:4], loss, optimizers[1], scaler, CPU, loss_scale=0.5, update=False)
    assert all(p.grad is not None for p in models[1].parameters())  # accumulated, no step yet
    train_step(models[1], x[4:], y[4:], loss, optimizers[1], scaler, CPU, loss_scale=0.5, update=True)
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b)


RECIPES = {"epochs": 2, "batch_size": 8, "ema": True, "ema_decay": 0.9, "mixup_alpha": 0.4, "cutmix_alpha": 1.0,
           "mixup_mode": "pair", "grad_accum_steps": 2, "warmup_epochs": 0.5,
           # RandAugment draws ops, magnitudes and signs per image from the device's generator: resumed too
           "augment_policy": "randaugment"}


def test_resume_is_exact_with_ema_mixup_accumulation_and_randaugment(small_competition, write_config, tmp_path, capsys):
    straight = write_config(
        small_competition, {"train": RECIPES, "output_dir": str(tmp_path / "straight")}, name="a.yaml"
    )
    resumed = write_config(
        small_competition, {"train": RECIPES, "output_dir": str(tmp_path / "resumed")}, name="b.yaml"
    )
    command = ["train", "--model", "digits_resnet", "--folds", "0"]
    assert main([*command, "--config", str(straight)]) == 0

    def has_ema(state):
        assert "ema" in state

    with interrupted_after_state(check=has_ema):
        assert main([*command, "--config", str(resumed)]) == 130
    assert main([*command, "--config", str(resumed)]) == 0
    assert "resuming after epoch 1/2" in capsys.readouterr().out
    run = ("runs", "digits", "digits_resnet", "fold0")
    assert_same_fold_files(tmp_path.joinpath("straight", *run), tmp_path.joinpath("resumed", *run))
    history = pd.read_json(tmp_path.joinpath("straight", *run, "fold.json"), typ="series")["history"]
    assert all({"valid_score_raw", "valid_score_ema"} <= set(epoch) for epoch in history)
    assert all(epoch["valid_score"] == epoch["valid_score_ema"] for epoch in history)


def test_new_recipe_keys_keep_old_run_hashes(loaded_small_config):
    from pipeline.store import run_hash

    cfg = resolve_train_config(loaded_small_config, "digits_resnet")[1]
    base = run_hash(cfg, loaded_small_config, "f")
    explicit_defaults = {
        "ema": False,
        "ema_decay": 0.999,
        "ema_warmup": True,
        "mixup_alpha": 0.0,
        "cutmix_alpha": 0.0,
        "mixup_prob": 1.0,
        "mixup_switch_prob": 0.5,
        "mixup_mode": "batch",
        "mixup_off_epochs": 0,
        "grad_accum_steps": 1,
    }
    assert run_hash(cfg.model_copy(update=explicit_defaults), loaded_small_config, "f") == base
    for key, value in {"ema": True, "mixup_alpha": 0.2, "grad_accum_steps": 2}.items():
        assert run_hash(cfg.model_copy(update={key: value}), loaded_small_config, "f") != base
