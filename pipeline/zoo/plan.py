"""The zoo file and the screen's plan: which architectures, on which rows, at which size, under which folder. The
coordinator and every worker derive the plan the same way.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, ValidationError, field_validator

from pipeline.config import (Config, ConfigError, StrictModel, TrainConfig, format_validation_error, read_yaml,
                             resolve_train_config, settings_dump)
from pipeline.core.hashing import json_hash
from pipeline.data import Competition, load_competition, median_short_side
from pipeline.task.tasks import get_task

DEFAULT_ZOO = "configs/zoo/default.yaml"


# -- the zoo file ------------------------------------------------------------------------------


class ScreenConfig(StrictModel):
    """How small and fast the screen is; ``auto`` values scale with the dataset."""

    rows: int | Literal["auto"] = "auto"  # stratified subset of train rows; auto: min(all, max(500, 30 per class))
    image_size: int | Literal["auto"] = (
        "auto"  # auto: the images' median shorter side, clamped to 64..128, never above the recipe's
    )
    epochs: int = Field(default=3, ge=1)
    folds: int = Field(default=1, ge=1)  # screen on the first k folds of the subset's split
    seed: int = 0
    timing_batch_size: int = Field(default=32, ge=1)
    timing_steps: int = Field(default=5, ge=1)
    accuracy_tolerance: float = Field(default=0.01, ge=0)  # "best per cost": the fastest within this of the best CV

    @field_validator("rows", "image_size")
    @classmethod
    def _positive(cls, value):
        if value != "auto" and value < 8:
            raise ValueError(f"must be 'auto' or at least 8, got {value}")
        return value


class ZooConfig(StrictModel):
    """``screen:`` settings and ``architectures:``, each a name or ``{name: {screening overrides}}``."""

    screen: ScreenConfig = Field(default_factory=ScreenConfig)
    architectures: list[str | dict[str, dict[str, Any]]]

    @field_validator("architectures")
    @classmethod
    def _entries(cls, entries):
        if not entries:
            raise ValueError("list at least one architecture")
        names = []
        for entry in entries:
            if isinstance(entry, dict) and len(entry) != 1:
                raise ValueError(f"an entry is a name or {{name: {{overrides}}}}, got {entry}")
            names.append(entry if isinstance(entry, str) else next(iter(entry)))
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"architectures listed twice: {duplicates}")
        return entries

    def entries(self) -> list[tuple[str, dict[str, Any]]]:
        return [(e, {}) if isinstance(e, str) else next(iter(e.items())) for e in self.architectures]


def load_zoo(path: str | Path, config: Config) -> ZooConfig:
    """Read and validate a zoo file; every architecture must resolve to valid training settings.

    Raises
    ------
    ConfigError
        Naming the bad key, value or architecture.
    """
    from pipeline.vision.models import resolve_model_name

    path = Path(path)
    try:
        zoo = ZooConfig.model_validate(read_yaml(path))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path), ZooConfig)) from None
    for name, overrides in zoo.entries():
        _, cfg = resolve_train_config(config, name)
        try:
            TrainConfig.model_validate({**cfg.model_dump(), **overrides})
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, f"{path}: {name}", TrainConfig)) from None
        try:
            resolve_model_name(cfg.model)
        except ValueError as exc:
            raise ConfigError(f"{path}: architecture {name!r}: {exc}") from None
    return zoo


# -- the screening data ------------------------------------------------------------------------


def stratified_subset(y: np.ndarray, rows: int, seed: int = 0) -> np.ndarray:
    """Row indices of a class-stratified subset of about ``rows`` rows (every class kept), sorted.

    Parameters
    ----------
    y : array of int
        Class index per row.
    rows : int
        Wanted size; all rows when it is at least ``len(y)``.
    seed : int
        Seed of the draw within each class.
    """
    if rows >= len(y):
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    fraction = rows / len(y)
    picked = []
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        take = min(len(members), max(2, round(fraction * len(members))))
        picked.append(rng.permutation(members)[:take])
    return np.sort(np.concatenate(picked))


def screen_rows(screen: ScreenConfig, y: np.ndarray) -> int:
    if screen.rows != "auto":
        return int(screen.rows)
    return int(min(len(y), max(500, 30 * len(np.unique(y)))))


def screen_image_size(screen: ScreenConfig, full_size: int, data_side: int) -> int:
    """The screening input size: small, but never above the architecture's full size."""
    if screen.image_size != "auto":
        return min(int(screen.image_size), full_size)
    return min(full_size, int(np.clip(data_side, 64, 128)))


def zoo_config(config: Config) -> Config:
    """The competition config whose store, folds and runs hold the screening runs."""
    competition = config.competition.model_copy(update={"name": f"{config.competition.name}.zoo"})
    return config.model_copy(update={"competition": competition})


def subset_competition(competition: Competition, rows: np.ndarray) -> Competition:
    """The training rows ``rows`` of a competition, with no test set (a screen predicts none)."""
    return Competition(
        train=competition.train.iloc[rows].reset_index(drop=True),
        sample_submission=competition.sample_submission.iloc[:0],
        targets=dataclasses.replace(competition.targets, y=competition.y[rows]),
        train_paths=[competition.train_paths[i] for i in rows],
        test_paths=[],
        id_column=competition.id_column,
        target_column=competition.target_column,
        task=competition.task,
    )


@dataclass
class ScreenPlan:
    """Everything both the coordinator and each worker derive the same way."""

    config: Config  # the real competition
    screen_config: Config  # the ".zoo" competition that stores the screening runs
    zoo: ZooConfig
    competition: Competition  # the screening subset
    folds: list[int]
    data_side: int
    out_dir: Path

    def overrides(self, name: str, extra: dict[str, Any]) -> tuple[dict[str, Any], int, int]:
        """The training settings that shrink a recipe to its screen, with its screening and full input sizes."""
        from pipeline.data.images import input_size

        _, cfg = resolve_train_config(self.config, name)
        full = input_size(cfg, len(self.competition.classes))
        settings = {
            "image_size": screen_image_size(self.zoo.screen, full, self.data_side),
            "epochs": self.zoo.screen.epochs,
            "patience": None,
            "tta": ["identity"],
            **extra,
        }
        return {"train": settings}, int(settings["image_size"]), int(full)

    def settings_hash(self, name: str, extra: dict[str, Any]) -> str:
        overrides, _, _ = self.overrides(name, extra)
        _, cfg = resolve_train_config(self.config, name, overrides)
        return json_hash(
            {
                "train": settings_dump(cfg),
                "screen": self.zoo.screen.model_dump(),
                "folds": self.folds,
                "rows": self.competition.train_ids.tolist(),
            }
        )


def make_plan(config: Config, zoo: ZooConfig, out_dir: Path | None = None) -> ScreenPlan:
    """Draw the screening subset, save its folds, and fix what every architecture is screened on."""
    from pipeline.folds import run_folds

    competition = load_competition(config)
    strata = get_task(competition.task).strata(competition.y, 2)
    rows = stratified_subset(strata, screen_rows(zoo.screen, strata), zoo.screen.seed)
    subset = subset_competition(competition, rows)
    screen_config = zoo_config(config)
    folds, _, _ = run_folds(screen_config, subset, force=True)  # the subset's split is derived, never hand-made
    n_folds = len(np.unique(folds))
    if zoo.screen.folds > n_folds:
        raise ConfigError(f"screen.folds={zoo.screen.folds} but the split has {n_folds} folds; lower screen.folds")
    out_dir = out_dir or config.out / "zoo" / config.competition.name
    return ScreenPlan(
        config,
        screen_config,
        zoo,
        subset,
        list(range(zoo.screen.folds)),
        median_short_side(subset.train_paths),
        out_dir,
    )


# -- one architecture (in its own process) ----------------------------------------------------------
