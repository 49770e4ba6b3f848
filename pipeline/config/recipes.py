"""Recipes and presets: the training settings of one run, resolved as competition < recipe < preset < ARGS.

Also the input size a run uses and where it came from, and the hashes of every config file a run reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from pipeline.config.dialect import ConfigError, read_yaml
from pipeline.config.messages import format_validation_error
from pipeline.config.overrides import checked_overrides, deep_merge
from pipeline.config.schema import Config, TrainConfig
from pipeline.core.io import file_sha256, safe_name

#: presets live beside the recipes: <recipes>/presets/<preset>/<family>.yaml
PRESETS_DIR = "presets"
# a preset holds training settings for every architecture of a family: which architecture stays the recipe's choice
_NOT_IN_PRESETS = ("model", "model_kwargs", "preset")


def preset_names(config: Config) -> list[str]:
    """The presets available beside the config's recipes (folders of ``<recipes>/presets``), by name."""
    folder = config.recipes_path / PRESETS_DIR
    return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def preset_file(config: Config, preset: str, model: str) -> Path:
    """The file of ``preset`` for ``model``'s family (:func:`pipeline.vision.models.preset_family`).

    Raises
    ------
    ConfigError
        For an unknown preset (listing the available ones) or a family the preset has no file for.
    """
    from pipeline.vision.models import preset_family  # timm: only when a preset is asked for

    safe_name(preset, "PRESET", f"a preset is a folder of {config.recipes_path / PRESETS_DIR}")
    available = preset_names(config)
    if preset not in available:
        raise ConfigError(f"unknown preset {preset!r}; available presets: {', '.join(available) or 'none'} "
                          f"(folders of {config.recipes_path / PRESETS_DIR}); or train without PRESET=")
    family = preset_family(model)
    file = config.recipes_path / PRESETS_DIR / preset / f"{family}.yaml"
    if not file.is_file():
        covered = sorted(p.stem for p in file.parent.glob("*.yaml"))
        raise ConfigError(
            f"preset {preset!r} has no file for {model}'s family {family!r}: it covers {', '.join(covered)}; "
            f"write {file} or train {model} without PRESET="
        )
    return file


def _preset(config: Config, preset: str, model: str) -> tuple[dict, Path]:
    """A preset's training settings for ``model`` (and its file)."""
    file = preset_file(config, preset, model)
    values = read_yaml(file)
    refused = [key for key in _NOT_IN_PRESETS if key in values]
    if refused:
        raise ConfigError(
            f"preset {file} sets {', '.join(refused)}: a preset holds training settings for a whole family; "
            "the architecture and its keyword arguments belong to the recipe"
        )
    return values, file


def recipe_names(config: Config) -> list[str]:
    """The recipes available beside the config, by name."""
    folder = config.recipes_path
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


@dataclass(frozen=True)
class ImageSizeChoice:
    """The input size a run uses and where it came from.

    ``size`` is None when no config sets one (the model's default input size then applies);
    ``source`` says which file or setting decided; ``competition_size`` is the competition
    config's ``train.image_size`` (what the user set for the data), shown when a recipe overrides it.
    """

    size: int | None
    source: str
    competition_size: int | None = None

    @property
    def overrides_competition(self) -> bool:
        """Whether a recipe replaced the competition's own ``image_size`` with another."""
        return self.source.startswith("recipe") and self.competition_size not in (None, self.size)


def _recipe(config: Config, model: str) -> tuple[dict, Path | None]:
    """The recipe named ``model`` (and its file), or ``{"model": model}`` for an alias or timm name."""
    recipe_file = config.recipes_path / f"{model}.yaml"
    if not recipe_file.is_file():
        return {"model": model}, None
    recipe = read_yaml(recipe_file)
    if "model" not in recipe:
        raise ConfigError(f"recipe {recipe_file} must name its architecture with 'model: <name>'")
    return recipe, recipe_file


def resolve_train_config(
    config: Config, model: str, overrides: dict[str, Any] | None = None
) -> tuple[str, TrainConfig]:
    """The training settings for one run: competition defaults < recipe < preset < overrides.

    ``train.preset`` (``make train PRESET=``, or set in the competition config) adds the
    preset's file for the model's family (:func:`preset_file`) over the recipe; the run's
    default name is then ``<model>-<preset>``.

    ``image_size`` follows ``train.image_size_from``: with ``recipe`` (the default) a recipe's
    size replaces the competition's; with ``competition`` the competition's size (or ``ARGS``')
    applies to every recipe. :func:`image_size_choice` says which one a run got, and why.

    Parameters
    ----------
    config : Config
    model : str
        A recipe name (``configs/recipes/<model>.yaml``), a model alias or a timm name.
    overrides : dict, optional
        Nested settings (:func:`parse_overrides`); those under ``train`` apply here.

    Returns
    -------
    (run_name, TrainConfig)
        ``run_name`` is the run's default name: the recipe's, with ``-<preset>`` under a preset.
    """
    safe_name(model, "MODEL", f"a recipe is named by its file in {config.recipes_path} without '.yaml'")
    base = config.train.model_dump(exclude_unset=False)
    recipe, recipe_file = _recipe(config, model)
    where = str(recipe_file) if recipe_file else f"model {model!r}"
    from_args = checked_overrides(overrides).get("train") or {}
    merged = deep_merge(deep_merge(base, recipe), from_args)
    run_name = model
    if merged.get("preset") is not None:
        preset = merged["preset"]
        values, file = _preset(config, str(preset), str(merged.get("model") or model))
        merged = deep_merge(deep_merge(deep_merge(base, recipe), values), from_args)
        where, run_name = f"{where} with preset {file}", f"{model}-{preset}"
    if merged.get("image_size_from") == "competition":
        merged["image_size"] = base["image_size"]  # the competition's, with ARGS already merged into it
    try:
        train = TrainConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, where, TrainConfig).replace("  - ", "  - train.")) from None
    check_recipe_fits_task(train, config.competition.task, where)
    return run_name, train


def check_recipe_fits_task(train: TrainConfig, task: str, where: str = "train") -> None:
    """Raise :class:`ConfigError` when a training recipe cannot apply to the competition's task.

    Mixup and cutmix mix two images' targets into soft labels: class probabilities
    (multiclass, binary) or per-label probabilities (multilabel). A regression or ordinal
    target is a value on a scale, trained with MSE/Huber or cut points, not a label
    distribution: a blend of two values is a value neither image has, so the pair is refused.
    """
    if train.mixes and task in ("regression", "ordinal"):
        raise ConfigError(
            f"{where}: train.mixup_alpha/cutmix_alpha are for label tasks (multiclass, binary, multilabel), "
            f"not task {task!r}: mixup mixes targets as class probabilities, and a {task} target is a value on a "
            "scale whose loss (MSE/Huber, or ordinal cut points) does not read a mix of two values as a soft label; "
            'set mixup_alpha: 0 and cutmix_alpha: 0 (ARGS="train.mixup_alpha=0 train.cutmix_alpha=0" overrides '
            "a recipe or preset)"
        )


def image_size_choice(config: Config, model: str, overrides: dict[str, Any] | None = None) -> ImageSizeChoice:
    """Which input size a run of ``model`` uses and which setting decided it.

    Parameters
    ----------
    config : Config
    model : str
        A recipe name, a model alias or a timm name.
    overrides : dict, optional
        The command line's settings (``ARGS``).

    Returns
    -------
    ImageSizeChoice
        ``source`` is one of: ``ARGS``, ``competition config (image_size_from: competition)``,
        ``recipe <file>``, ``competition config``, ``model default``.
    """
    _, cfg = resolve_train_config(config, model, overrides)
    recipe, recipe_file = _recipe(config, model)
    from_args = "image_size" in (checked_overrides(overrides).get("train") or {})
    if from_args:
        source = "ARGS"
    elif cfg.image_size_from == "competition":
        source = "competition config (image_size_from: competition)"
    elif "image_size" in recipe and recipe_file is not None:
        source = f"recipe {recipe_file.name}"
    elif cfg.image_size is not None:
        source = "competition config"
    else:
        source = "model default"
    return ImageSizeChoice(cfg.image_size, source, config.train.image_size)


def config_file_hashes(config: Config, model: str | None = None, cfg: TrainConfig | None = None) -> dict[str, str]:
    """SHA-256 of every config file a run reads: the competition config, the recipe, the preset, user metric modules.

    Recorded in the run's ``meta.json``, so what a run was made with is known even when
    those files are not tracked by git.

    Parameters
    ----------
    config : Config
    model : str, optional
        The recipe name (no recipe file: an alias or a timm name, nothing to add).
    cfg : TrainConfig, optional
        The run's resolved settings: with ``preset`` set, the preset's file is added.

    Returns
    -------
    dict
        Resolved path -> hex digest, sorted by path.
    """
    files = [Path(config.source)] if config.source else []
    if model is not None:
        files.append(config.recipes_path / f"{model}.yaml")
    if cfg is not None and cfg.preset is not None and cfg.model:
        files.append(preset_file(config, cfg.preset, cfg.model))
    for spec in config.competition.metrics.values():
        module = spec.function.split(":", 1)[0]
        if module.endswith(".py"):
            files.append(config.config_dir / module)
    hashes = {}
    for file in files:
        if file.is_file():
            hashes[str(file.resolve())] = file_sha256(file)
    return dict(sorted(hashes.items()))
