"""Command-line overrides (``key=value``, the ``ARGS=`` of every make target) and the merge of nested settings."""

from __future__ import annotations

from typing import Any

import yaml

from pipeline.config.dialect import ConfigError, yaml_load
from pipeline.config.schema import TrainConfig


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """Parse ``key=value`` strings into a nested dict; values are read as YAML.

    A bare key that names a training setting (``lr=1e-3``) means ``train.<key>``.

    Raises
    ------
    ConfigError
        For an item without ``=``, a value that is not plain YAML (a tag such as
        ``!!python/...`` is refused), or a key that clashes with another.
    """
    nested: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value (e.g. train.lr=1e-3)")
        key, raw = item.split("=", 1)
        try:
            value = yaml_load(raw) if raw != "" else None
        except yaml.constructor.ConstructorError as exc:
            raise ConfigError(f"override {item!r}: the value has a YAML tag ({exc.problem}); "
                              "write plain values (numbers, strings, [lists], {mappings})") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({exc}); quote it or fix it") from None
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(
                f"override {item!r}: the key {key!r} has an empty part; write section.key=value, e.g. train.lr=1e-3"
            )
        if len(parts) == 1 and parts[0] in TrainConfig.model_fields:
            parts = ["train", parts[0]]
        node = nested
        for depth, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(
                    f"override {item!r}: {'.'.join(parts[: depth + 1])} was already set to a value, not a section"
                )
        node[parts[-1]] = value
    return nested


def checked_overrides(overrides: Any) -> dict[str, Any]:
    # a list of strings here is a caller that skipped the command line's parsing: say so, do not guess
    if overrides is None:
        return {}
    if not isinstance(overrides, dict):
        raise TypeError(
            f"overrides must be a dict of settings (parse key=value strings once with parse_overrides); "
            f"got {type(overrides).__name__}"
        )
    return overrides


def deep_merge(base: dict, update: dict) -> dict:
    """Merge ``update`` into a copy of ``base``; nested dicts merge, other values replace."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key != "model_kwargs":
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
