"""Fine-tuning (head-only epochs, layer-wise lr decay), checkpoint averaging and progressive resizing (CPU, tiny
models).
"""

from __future__ import annotations

import pandas as pd
import pytest
import timm
import timm.optim
import torch
from conftest import assert_same_fold_files, interrupted_after_state
from timm.models import group_parameters

from pipeline.cli import main
from pipeline.config import ConfigError, TrainConfig
from pipeline.core.report import progress_bar
from pipeline.train import loop
from pipeline.train.finetune import classifier_module, set_body_frozen
from pipeline.train.heads import make_head
from pipeline.train.loop import train_one_epoch
from pipeline.train.recipes import WeightAverage, recompute_norm_stats, resize_batch, train_side
from pipeline.train.runtime import Runtime
from pipeline.train.steps import fine_tune_schedule, make_optimizer, warmup_cosine
from pipeline.vision.device import DeviceTransform

CPU = Runtime(device=torch.device("cpu"), amp_dtype=None, channels_last=False, num_workers=0, pin_memory=False)


def _epoch(model, cfg, frozen: bool) -> None:
    torch.manual_seed(0)
    batches = [(torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8), torch.randint(0, 3, (4,))) for _ in range(3)]
    set_body_frozen(model, False)
    optimizer = make_optimizer(model, cfg, CPU)  # as the loop does: built over every parameter, then frozen
    set_body_frozen(model, frozen)
    train_one_epoch(
        model,
        batches,
        make_head("multiclass", "auto"),
        optimizer,
        torch.amp.GradScaler("cpu", enabled=False),
        None,
        CPU,
        DeviceTransform((0.5,) * 3, (0.25,) * 3),
        cfg,
        0,
        progress_bar(total=3, enabled=False),
        frozen=model if frozen else None,
    )


def test_a_head_only_epoch_leaves_every_body_tensor_unchanged():
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=3)  # has BatchNorm: its statistics must stay too
    cfg = TrainConfig(lr=0.01, epochs=2, freeze_epochs=1)
    head = {f"fc.{name}" for name, _ in classifier_module(model).named_parameters()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _epoch(model, cfg, frozen=True)
    after = {k: v.clone() for k, v in model.state_dict().items()}
    assert head and all(not torch.equal(before[k], after[k]) for k in head)
    assert all(torch.equal(before[k], after[k]) for k in before if k not in head)
    _epoch(model, cfg, frozen=False)  # unfrozen: the body trains again
    first = next(name for name, _ in model.named_parameters())
    assert not torch.equal(model.state_dict()[first], after[first])


@pytest.mark.parametrize("name", ["test_vit", "test_resnet"])
def test_layer_decay_groups_get_lr_times_decay_to_the_depth_from_the_head(name):
    model = timm.create_model(name, num_classes=3)
    cfg = TrainConfig(lr=1e-3, weight_decay=0.05, layer_decay=0.5)
    optimizer = make_optimizer(model, cfg, CPU)
    layers = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    layer_max = max(layers.values())
    assert layer_max >= 2
    lr_of = {id(p): (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}
    for param_name, p in model.named_parameters():
        lr, wd = lr_of[id(p)]
        assert lr == pytest.approx(1e-3 * 0.5 ** (layer_max - layers.get(param_name, layer_max))), param_name
        no_decay = p.ndim <= 1 or param_name in getattr(model, "no_weight_decay", set)()  # ViT: cls_token, pos_embed
        assert wd == (0.0 if no_decay else 0.05), param_name
    head_lrs = [lr_of[id(p)][0] for p in classifier_module(model).parameters()]
    assert head_lrs == pytest.approx([1e-3] * len(head_lrs))
    # the schedule scales every group by the same factor: the ratios hold through training
    torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(10, 2))  # step 0 of a 2-step warm-up: factor 0.5
    assert [g["lr"] / g["initial_lr"] for g in optimizer.param_groups] == pytest.approx(
        [0.5] * len(optimizer.param_groups)
    )


def test_without_layer_decay_biases_and_norms_get_no_weight_decay():
    model = timm.create_model("test_resnet", num_classes=3)
    groups = make_optimizer(model, TrainConfig(lr=2e-3), CPU).param_groups
    assert sorted((len(g["params"]), g["lr"], g["weight_decay"]) for g in groups) == sorted(
        [
            (sum(p.ndim > 1 for p in model.parameters()), 2e-3, 0.05),
            (sum(p.ndim <= 1 for p in model.parameters()), 2e-3, 0.0),
        ]
    )


def test_without_layer_decay_the_models_no_weight_decay_tensors_get_none():
    # a ViT's position embeddings and class token are 2-d and 3-d: only the model's own list spares them
    model = timm.create_model("test_vit", num_classes=3)
    decay_of = {
        id(p): g["weight_decay"] for g in make_optimizer(model, TrainConfig(), CPU).param_groups for p in g["params"]
    }
    params = dict(model.named_parameters())
    assert {"pos_embed", "cls_token"} <= set(model.no_weight_decay()) & set(params)
    assert decay_of[id(params["pos_embed"])] == 0.0 and decay_of[id(params["cls_token"])] == 0.0
    assert decay_of[id(params["blocks.0.attn.qkv.weight"])] == 0.05


@pytest.mark.parametrize(
    "name, cls",
    [
        ("adamw", torch.optim.AdamW),
        ("sgd", torch.optim.SGD),
        ("lamb", timm.optim.Lamb),
        ("lookahead_adamw", timm.optim.Lookahead),
    ],
)
def test_a_recipe_names_any_optimizer_timm_has(name, cls):
    model = timm.create_model("test_resnet", num_classes=3)
    optimizer = make_optimizer(model, TrainConfig(lr=3e-3, optimizer=name), CPU)
    assert isinstance(optimizer, cls)
    assert {g["lr"] for g in optimizer.param_groups} == {3e-3}


def test_fine_tune_schedule_runs_one_cycle_per_phase():
    plain = warmup_cosine(30, 4)
    assert [fine_tune_schedule(30, 0, 4)(s) for s in range(30)] == [plain(s) for s in range(30)]
    phased = fine_tune_schedule(30, 10, 4)
    head, body = warmup_cosine(10, 4), warmup_cosine(20, 4)
    assert [phased(s) for s in range(30)] == [head(s) for s in range(10)] + [body(s) for s in range(20)]


@pytest.mark.parametrize(
    "keys, match",
    [
        ({"freeze_epochs": 3, "epochs": 3}, "freeze_epochs"),
        ({"average_last": 4, "epochs": 3}, "average_last"),
        ({"progressive_sizes": [[1, 24]], "epochs": 3}, "from 0"),
        ({"progressive_sizes": [[0, 24], [3, 32]], "epochs": 3}, "below epochs"),
    ],
)
def test_bad_schedule_keys_name_the_key(keys, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**keys)


def test_the_average_is_the_mean_of_the_epoch_snapshots():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    average = WeightAverage(model)
    snapshots = []
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        average.update()
    for key, value in average.module.state_dict().items():
        torch.testing.assert_close(value, torch.stack([s[key] for s in snapshots]).mean(0))
    restored = WeightAverage(model)
    restored.load_state_dict(average.state_dict())
    assert restored.count == 3


def test_batch_norm_statistics_are_recomputed_for_the_average():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    bn = model[1]
    bn.running_mean.fill_(5.0)
    bn.momentum = 0.1
    model.eval()
    torch.manual_seed(0)
    batches = [torch.randn(8, 3, 4, 4) * 2 + 1 for _ in range(3)]
    recompute_norm_stats(model, batches)
    with torch.no_grad():
        features = torch.cat([model[0](x) for x in batches])
    torch.testing.assert_close(bn.running_mean, features.mean(dim=(0, 2, 3)))
    assert bn.momentum == 0.1 and not model.training


def test_progressive_sides_follow_the_plan_and_refuse_upscaling():
    cfg = TrainConfig(epochs=4, progressive_sizes=[[0, 16], [2, 24]])
    assert [train_side(cfg, e, 32) for e in range(4)] == [16, 16, 24, 24]
    assert [train_side(TrainConfig(), e, 32) for e in range(2)] == [32, 32]
    with pytest.raises(ConfigError, match="progressive_sizes"):
        train_side(cfg, 0, 20)
    x = torch.rand(2, 3, 32, 32)
    assert resize_batch(x, 32) is x and resize_batch(x, 16).shape == (2, 3, 16, 16)


FINE_TUNE = {
    "epochs": 3,
    "batch_size": 8,
    "freeze_epochs": 1,
    "layer_decay": 0.7,
    "average_last": 2,
    "progressive_sizes": [[0, 16], [2, 32]],
    "warmup_epochs": 0.5,
    "lr": 0.003,
}


def test_fine_tune_average_and_resizing_train_and_resume_exactly(
    small_competition, write_config, tmp_path, monkeypatch, capsys
):
    sides: list[tuple[int, int]] = []
    real_prepare = loop.prepare_model

    def recording(*args, **kwargs):
        model = real_prepare(*args, **kwargs)
        model.register_forward_hook(lambda m, inputs, out: sides.append((m.training, inputs[0].shape[-1])))
        return model

    monkeypatch.setattr(loop, "prepare_model", recording)
    straight = write_config(
        small_competition, {"train": FINE_TUNE, "output_dir": str(tmp_path / "straight")}, name="a.yaml"
    )
    resumed = write_config(
        small_competition, {"train": FINE_TUNE, "output_dir": str(tmp_path / "resumed")}, name="b.yaml"
    )
    command = ["train", "--model", "digits_resnet", "--folds", "0"]
    assert main([*command, "--config", str(straight)]) == 0
    trained = [side for training, side in sides if training]
    # epochs 0-1 at 16 px, epoch 2 and the averaged weights' BatchNorm pass at the full 32 px
    assert trained[0] == 16 and trained[-1] == 32 and sorted(set(trained)) == [16, 32]
    assert trained == sorted(trained) and {side for training, side in sides if not training} == {32}

    def has_average(state):  # the interruption falls between the frozen and the unfrozen epochs
        assert "average" in state

    with interrupted_after_state(check=has_average):
        assert main([*command, "--config", str(resumed)]) == 130
    assert main([*command, "--config", str(resumed)]) == 0
    assert "resuming after epoch 1/3" in capsys.readouterr().out
    run = ("runs", "digits", "digits_resnet", "fold0")
    assert_same_fold_files(tmp_path.joinpath("straight", *run), tmp_path.joinpath("resumed", *run))
    info = pd.read_json(tmp_path.joinpath("straight", *run, "fold.json"), typ="series")
    assert info["averaged"]["epochs"] == 2 and isinstance(info["averaged"]["kept"], bool)


def test_new_keys_keep_old_run_hashes(loaded_small_config):
    from pipeline.config import resolve_train_config
    from pipeline.store import run_hash

    cfg = resolve_train_config(loaded_small_config, "digits_resnet")[1]
    base = run_hash(cfg, loaded_small_config, "f")
    defaults = {"freeze_epochs": 0, "layer_decay": None, "average_last": 0, "progressive_sizes": None}
    assert run_hash(cfg.model_copy(update=defaults), loaded_small_config, "f") == base
    for key, value in {
        "freeze_epochs": 1,
        "layer_decay": 0.8,
        "average_last": 1,
        "progressive_sizes": [[0, 16]],
    }.items():
        assert run_hash(cfg.model_copy(update={key: value}), loaded_small_config, "f") != base
