"""Loading a competition config: read the YAML, merge the overrides, validate, check the data files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from pipeline.config.dialect import ConfigError, read_yaml
from pipeline.config.messages import format_validation_error
from pipeline.config.overrides import checked_overrides, deep_merge
from pipeline.config.schema import Config


def load_config(path: str | Path, overrides: dict[str, Any] | None = None, check_files: bool = True,
                training: bool = True) -> Config:
    """Read, merge and validate a competition config.

    Parameters
    ----------
    path : str or Path
        The competition YAML file.
    overrides : dict, optional
        Nested settings applied on top: ``ARGS=`` parsed once by the command line
        (:func:`parse_overrides`), or built by a caller such as the zoo.
    check_files : bool
        Also check that the data files exist (skipped for a demo competition
        whose data is built on first use).
    training : bool
        Also check ``train``'s augmentation steps and TTA views against
        :mod:`pipeline.vision` (torch, albumentations). False for commands that
        never train, so they start without torch; training re-checks them in
        :func:`resolve_train_config`.

    Returns
    -------
    Config
    """
    path = Path(path)
    raw = deep_merge(read_yaml(path), checked_overrides(overrides))
    raw["source"] = str(path)
    try:
        config = Config.model_validate(raw, context={"skip_training_checks": not training})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path))) from None
    if check_files and config.competition.demo is None:
        check_data_files(config)
    return config


def check_data_files(config: Config) -> None:
    """Raise :class:`ConfigError` if a file the config names is missing."""
    comp = config.competition
    optional = tuple(key for key in ("solution", "test_csv") if getattr(comp, key))
    for key in ("train_csv", "sample_submission") + optional:
        file = config.data_path(getattr(comp, key))
        if not file.is_file():
            raise ConfigError(f"competition.{key}: file {file} does not exist; fix the path in {config.source}")


