"""Config validation: every mistake is an error before any work, naming the key and the fix."""

import pytest

from pipeline.config import ConfigError, load_config, parse_overrides, resolve_train_config


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"competition": {"metrc": "accuracy"}}, r"unknown key 'competition.metrc'; did you mean 'metric'"),
        ({"trian": {}}, r"unknown key 'trian'; did you mean 'train'"),
        ({"train": {"epochs": "ten"}}, r"train.epochs: Input should be a valid integer"),
        ({"train": {"lr": -1.0}}, r"train.lr: Input should be greater than 0"),
        ({"competition": {"metric": "acc"}}, r"unknown metric 'acc'"),
        ({"competition": {"task": "segmentation"}}, r"competition.task"),
        (
            {"competition": {"task": "regression"}},
            r"metric 'accuracy' does not apply to task 'regression'; metrics for regression: mae, rmse$",
        ),
        ({"competition": {"train_images": "train/img.png"}}, r"must contain '\{id\}'"),
        ({"folds": {"strategy": "group"}}, r"needs folds.group_column"),
        ({"folds": {"n_splits": 1}}, r"folds.n_splits: Input should be greater than or equal to 2"),
        ({"train": {"tta": ["identity", "rotate(90)"]}}, r"unknown TTA view 'rotate\(90\)'"),
        ({"train": {"augment": [{"Blurr": {}}]}}, r"unknown albumentations transform 'Blurr'"),
        (
            {"train": {"optimizer": "adamx"}},
            r"unknown optimizer 'adamx'; did you mean adam.*timm.optim.list_optimizers",
        ),
        ({"train": {"optimizer": "slow_adamw"}}, r"unknown optimizer 'slow_adamw'"),
        ({"train": {"augment": [{"Affine": {"rotate": "lots"}}]}}, r"bad parameters for Affine"),
        ({"ensemble": {"methods": ["mean", "carauna"]}}, r"unknown blend method 'carauna'"),
        ({"ensemble": {"method_params": {"caruana": {"n_step": 50}}}}, r"n_step"),
        ({"ensemble": {"apply": "mean"}}, r"ensemble.apply: Input should be 'per_fold' or 'fold_mean'"),
        ({"ensemble": {"selection": "one-se"}}, r"ensemble.selection: Input should be 'one_se' or 'best'"),
        ({"competition": {"train_csv": "nope.csv"}}, r"competition.train_csv: file .*nope.csv does not exist"),
    ],
)
def test_bad_config_fails_on_load(small_competition, write_config, changes, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write_config(small_competition, changes))


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "none.yaml")


def test_overrides_are_typed_and_nested():
    assert parse_overrides(["train.lr=1e-3", "epochs=3", "folds.n_splits=3", "tta=[identity, hflip]"]) == {
        "train": {"lr": 1e-3, "epochs": 3, "tta": ["identity", "hflip"]},
        "folds": {"n_splits": 3},
    }
    with pytest.raises(ConfigError, match="not key=value"):
        parse_overrides(["train.lr"])


def test_bad_override_is_an_error(small_config):
    with pytest.raises(ConfigError, match="train.lr"):
        load_config(small_config, parse_overrides(["train.lr=fast"]))


def test_recipe_overrides_defaults_and_cli_overrides_recipe(loaded_small_config):
    name, cfg = resolve_train_config(loaded_small_config, "digits_resnet", parse_overrides(["train.lr=0.01"]))
    assert name == "digits_resnet"
    assert cfg.model == "test_resnet" and cfg.image_size == 32  # from the recipe
    assert cfg.lr == 0.01  # from the override
    assert cfg.epochs == 1  # from the competition defaults
    _, plain = resolve_train_config(loaded_small_config, "efficientnet_b1")
    assert plain.model == "efficientnet_b1" and plain.image_size is None  # the model's own size
