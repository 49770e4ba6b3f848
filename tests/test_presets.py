"""Training presets (configs/recipes/presets/<preset>/<family>.yaml): every recipe and task resolves, errors name the
fix.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pipeline.cli import main
from pipeline.config import ConfigError, TrainConfig, config_file_hashes, load_config, preset_file, resolve_train_config
from pipeline.core.io import UnsafeNameError
from pipeline.vision.models import preset_family

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(p.stem for p in (ROOT / "configs" / "recipes").glob("*.yaml"))
PRESET_FILES = sorted((ROOT / "configs" / "recipes" / "presets").glob("*/*.yaml"))
TASKS = ["multiclass", "binary", "multilabel", "regression", "ordinal"]


def with_task(config, task: str):
    return config.model_copy(update={"competition": config.competition.model_copy(update={"task": task})})


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_resolves_for_a_multiclass_competition(loaded_small_config, recipe):
    name, cfg = resolve_train_config(loaded_small_config, recipe)
    assert name == recipe and cfg.model and cfg.preset is None


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_resolves_with_the_strong_preset_for_every_task(loaded_small_config, recipe, task):
    config = with_task(loaded_small_config, task)
    name, cfg = resolve_train_config(config, recipe, {"train": {"preset": "strong"}})
    assert name == f"{recipe}-strong" and cfg.preset == "strong"
    preset = yaml.safe_load(preset_file(config, "strong", cfg.model).read_text())
    recipe_keys = yaml.safe_load((ROOT / "configs" / "recipes" / f"{recipe}.yaml").read_text())
    # recipe < preset: the preset's values win; the recipe's architecture and other keys stay
    assert all(getattr(cfg, key) == value for key, value in preset.items())
    assert cfg.model == recipe_keys["model"] and cfg.lr == recipe_keys["lr"]
    # preset < ARGS
    _, argued = resolve_train_config(config, recipe, {"train": {"preset": "strong", "label_smoothing": 0.0}})
    assert argued.label_smoothing == 0.0


@pytest.mark.parametrize("path", PRESET_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_preset_file_states_its_source_holds_train_keys_only_and_is_used(path):
    text = path.read_text()
    assert text.startswith("# ") and "Source:" in text.split("\n\n")[0]
    values = yaml.safe_load(text)
    assert not {"model", "model_kwargs", "preset"} & set(values)
    TrainConfig.model_validate(values)  # every key a known, valid train key
    assert not values.get("mixup_alpha") and not values.get("cutmix_alpha")  # presets fit every task
    families = {
        preset_family(yaml.safe_load((ROOT / "configs" / "recipes" / f"{r}.yaml").read_text())["model"])
        for r in RECIPES
    }
    assert path.stem in families, f"no recipe uses {path}"


@pytest.mark.parametrize(
    "model, family",
    [
        ("resnet18", "resnet"),
        ("resnext50", "resnet"),
        ("test_resnet", "resnet"),
        ("legacy_xception", "inception"),
        ("test_convnext2", "convnext"),
        ("test_vit3", "vit"),
        ("tf_efficientnetv2_s", "efficientnet"),
        ("test_efficientnet_gn", "efficientnet"),
        ("mobilenetv3", "mobilenet"),
        ("regnety_016", "regnet"),
        ("tf_efficientnet_lite0", "efficientnet"),
        ("tf_mobilenetv3_large_100", "mobilenet"),  # TF-ported weights
    ],
)
def test_preset_families(model, family):
    assert preset_family(model) == family


def _with_recipes(config, folder: Path):
    return config.model_copy(update={"recipes_dir": str(folder)})


@pytest.mark.parametrize(
    "model, settings, message",
    [
        (
            "digits_resnet",
            {"preset": "mega"},
            r"unknown preset 'mega'; available presets: strong \(folders of .*presets\)",
        ),
        (
            "test_byobnet",
            {"preset": "strong"},
            r"preset 'strong' has no file for test_byobnet's family 'byobnet': it covers "
            r"convnext, efficientnet, inception, .*; write .*byobnet.yaml or train",
        ),
        ("digits_resnet", {"preset": "../strong"}, r"PRESET='../strong' must be one name .* not a path"),
    ],
    ids=["unknown", "family", "path"],
)
def test_preset_errors_name_the_fix(loaded_small_config, model, settings, message):
    with pytest.raises((ConfigError, UnsafeNameError), match=message):
        resolve_train_config(loaded_small_config, model, {"train": settings})


def test_mixup_args_over_a_preset_are_kept_on_a_label_task(loaded_small_config):
    # ARGS="train.mixup_alpha=0.2" with PRESET=strong on a multiclass competition: allowed, and both apply
    name, cfg = resolve_train_config(loaded_small_config, "digits_resnet",
                                     {"train": {"preset": "strong", "mixup_alpha": 0.2}})
    preset = yaml.safe_load(preset_file(loaded_small_config, "strong", cfg.model).read_text())
    assert name == "digits_resnet-strong" and cfg.preset == "strong"
    assert cfg.mixup_alpha == 0.2 and cfg.mixes
    assert all(getattr(cfg, key) == value for key, value in preset.items() if key != "mixup_alpha")
    # without the argument the preset leaves mixup off (presets fit every task)
    _, plain = resolve_train_config(loaded_small_config, "digits_resnet", {"train": {"preset": "strong"}})
    assert not plain.mixes


def test_a_preset_that_sets_mixup_is_refused_on_a_value_task_with_the_way_out(loaded_small_config, tmp_path):
    (tmp_path / "presets" / "mixed").mkdir(parents=True)
    (tmp_path / "presets" / "mixed" / "resnet.yaml").write_text("mixup_alpha: 0.2\n")
    config = with_task(_with_recipes(loaded_small_config, tmp_path), "regression")
    with pytest.raises(
        ConfigError, match=r"with preset .*mixed/resnet.yaml.*ARGS=\"train.mixup_alpha=0 train.cutmix_alpha=0\""
    ):
        resolve_train_config(config, "resnet18", {"train": {"preset": "mixed"}})
    resolve_train_config(config, "resnet18", {"train": {"preset": "mixed", "mixup_alpha": 0.0}})


@pytest.mark.parametrize(
    "content, message",
    [
        ("model: resnet50\n", r"sets model: a preset holds training settings for a whole family"),
        ("model_kwargs: {drop_path_rate: 0.1}\n", r"sets model_kwargs"),
        ("lr: fast\n", r"(?s)with preset .*resnet.yaml:.*train.lr: Input should be a valid number"),
        ("augment_policy: strongest\n", r"unknown augment_policy 'strongest'"),
    ],
)
def test_bad_preset_files_are_refused(loaded_small_config, tmp_path, content, message):
    (tmp_path / "presets" / "mine").mkdir(parents=True)
    (tmp_path / "presets" / "mine" / "resnet.yaml").write_text(content)
    with pytest.raises(ConfigError, match=message):
        resolve_train_config(_with_recipes(loaded_small_config, tmp_path), "resnet18", {"train": {"preset": "mine"}})


def test_train_and_predict_with_a_preset(small_config, capsys):
    out = small_config.parent / "out" / "runs" / "digits"
    command = ["--config", str(small_config), "--model", "digits_resnet", "--preset", "strong"]
    assert main(["train", *command, "--folds", "0"]) == 0
    meta = json.loads((out / "digits_resnet-strong" / "meta.json").read_text())
    assert meta["config"]["preset"] == "strong" and meta["config"]["augment_policy"] == "trivial"
    assert meta["config"]["ema"] is True and meta["config"]["tta"] == ["identity", "hflip"]
    assert any(path.endswith("presets/strong/resnet.yaml") for path in meta["config_files"])
    assert not (out / "digits_resnet").exists()
    assert main(["predict", *command]) == 0  # the same name and settings: the run is found
    config = load_config(small_config)
    _, cfg = resolve_train_config(config, "digits_resnet", {"train": {"preset": "strong"}})
    assert len(config_file_hashes(config, "digits_resnet", cfg)) == 3  # competition, recipe, preset
