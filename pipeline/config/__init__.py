"""Competition configs and model recipes: YAML, validated on load.

A competition config (``configs/<competition>.yaml``) names the data, the task, the metric, the folds and the
training defaults. A model recipe (``configs/recipes/<name>.yaml``) names an architecture and overrides training
settings that suit it; a preset goes over the recipe; command-line overrides (``key=value``) go on top.

One module per job: ``dialect`` (the YAML dialect, :class:`ConfigError`), ``schema`` (every key, pydantic),
``messages`` (errors as a user reads them), ``overrides`` (``key=value``), ``loading`` (:func:`load_config`),
``recipes`` (recipes, presets, the input size, config-file hashes) and ``hashing`` (which settings enter a run's
hash, read from the schema's fields). This package's face re-exports what the other stages use.
"""

from pipeline.config.dialect import ConfigError, read_yaml, yaml_load
from pipeline.config.hashing import competition_settings, settings_dump
from pipeline.config.loading import check_data_files, load_config
from pipeline.config.messages import format_validation_error
from pipeline.config.overrides import deep_merge, parse_overrides
from pipeline.config.recipes import (PRESETS_DIR, ImageSizeChoice, check_recipe_fits_task, config_file_hashes,
                                     image_size_choice, preset_file, preset_names, recipe_names, resolve_train_config)
from pipeline.config.schema import (CompetitionConfig, Config, DistillConfig, EnsembleConfig, ExecutorConfig,
                                    FoldsConfig, LrFindConfig, PseudoConfig, StrictModel, TrainConfig, UserMetricConfig)

__all__ = ["ConfigError", "read_yaml", "yaml_load", "competition_settings", "settings_dump", "check_data_files",
           "load_config", "format_validation_error", "deep_merge", "parse_overrides", "PRESETS_DIR",
           "ImageSizeChoice", "check_recipe_fits_task", "config_file_hashes", "image_size_choice", "preset_file",
           "preset_names", "recipe_names", "resolve_train_config", "CompetitionConfig", "Config", "DistillConfig",
           "EnsembleConfig", "ExecutorConfig", "FoldsConfig", "LrFindConfig", "PseudoConfig", "StrictModel",
           "TrainConfig", "UserMetricConfig"]
