"""A run's plan before any training: its folds, TTA views, resolved settings and layout (:class:`RunSpec`), the folds
to train, a new ``meta.json``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from pipeline.config import (Config, ConfigError, TrainConfig, config_file_hashes, image_size_choice,
                             resolve_train_config)
from pipeline.data import Competition, load_competition, median_short_side
from pipeline.data.images import image_size_report, input_size
from pipeline.folds import FoldsError, read_folds, run_folds
from pipeline.store import RunLayout, RunMeta, check_run_name, code_version, library_versions, run_hash
from pipeline.task.metrics import Metric, get_metric
from pipeline.task.tasks import resolve_loss
from pipeline.train.heads import Head, make_head
from pipeline.train.predict import check_views_fit_model
from pipeline.vision.models import create_model, model_family, resolve_model_name
from pipeline.vision.views import parse_view

log = logging.getLogger(__name__)


def ensure_folds(config: Config, competition: Competition) -> tuple[np.ndarray, str]:
    """The saved folds; made now (and said so) if this competition has none yet."""
    try:
        return read_folds(config, competition)
    except FoldsError:
        if config.folds_csv.is_file():
            raise
        folds, fingerprint, _ = run_folds(config, competition)
        log.info("made folds: %s (fingerprint %s)", config.folds_csv, fingerprint)
        return folds, fingerprint


def view_list(cfg: TrainConfig) -> tuple[list[Callable], list[str]]:
    """The TTA views of a run, the plain view first (its predictions give the "CV without TTA" figure)."""
    names = ["identity"] + [v for v in cfg.tta if v.strip() != "identity"]
    return [parse_view(v) for v in names], names


@dataclass
class RunSpec:
    """Everything a run needs, resolved and checked before any work."""

    name: str
    cfg: TrainConfig
    layout: RunLayout
    settings_hash: str
    competition: Competition
    folds: np.ndarray
    fingerprint: str
    metric: Metric
    head: Head
    recipe: str = ""                 # the recipe, alias or timm name the run was made from
    image_size_source: str = ""      # which setting chose the input size


def prepare_run(config: Config, model: str, overrides: dict[str, Any] | None = None,
                competition: Competition | None = None, run_name: str | None = None) -> RunSpec:
    """Resolve the recipe, check the model name, the weights file and the data: fail before any work.

    ``run_name`` (``NAME=``) names the run folder; by default the recipe's name does. The input
    size and where it came from are logged, with a warning when it rescales the images a lot.
    """
    default_name, cfg = resolve_train_config(config, model, overrides)   # the recipe's name, -<preset> under a preset
    name = check_run_name(run_name) if run_name else default_name
    resolve_model_name(cfg.model)
    if cfg.pretrained is not False or cfg.model_kwargs or cfg.small_input:
        # built once before any work: a mismatched weights file, a failed download, an unknown keyword or an
        # architecture small_input cannot adapt stops here
        create_model(cfg.model, 2, cfg.pretrained, small_input=cfg.small_input, **cfg.model_kwargs)
    try:
        # a recipe's loss fits the task: checked before the data is read
        resolve_loss(config.competition.task, cfg.loss)
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None
    competition = competition or load_competition(config)
    head = make_head(config.competition.task, cfg.loss, competition.targets, cfg.label_smoothing)
    folds, fingerprint = ensure_folds(config, competition)
    choice = image_size_choice(config, model, overrides)
    size = input_size(cfg, len(competition.classes))
    check_views_fit_model(cfg, *view_list(cfg), size)  # a resize view the model cannot take: refused before training
    line, warnings = image_size_report(choice, size, median_short_side(competition.train_paths))
    log.info("%s: %s%s", name, line, "" if name == model else f", recipe {model}")
    for warning in warnings:
        log.warning("%s: warning: %s", name, warning)
    return RunSpec(
        name,
        cfg,
        RunLayout(config.runs_dir / name),
        run_hash(cfg, config, fingerprint),
        competition,
        folds,
        fingerprint,
        get_metric(config.competition.metric),
        head,
        model,
        choice.source,
    )


def fold_list(spec: RunSpec, folds_subset: list[int] | None) -> list[int]:
    """The folds to train: all of them, or the checked subset ``FOLDS=`` names."""
    all_folds = sorted(int(f) for f in np.unique(spec.folds))
    if not folds_subset:
        return all_folds
    bad = [f for f in folds_subset if f not in all_folds]
    if bad:
        raise ConfigError(
            f"FOLDS={','.join(map(str, folds_subset))}: fold(s) {bad} do not exist; folds are {all_folds}"
        )
    return sorted(set(folds_subset))


def new_meta(config: Config, spec: RunSpec) -> RunMeta:
    """The metadata of a run about to start: what is trained, how, on which folds, with which code."""
    return RunMeta(
        name=spec.name,
        status="running",
        model=spec.cfg.model,
        timm_name=resolve_model_name(spec.cfg.model),
        family=model_family(spec.cfg.model),
        competition=config.competition.name,
        metric=config.competition.metric,
        task=config.competition.task,
        classes=spec.competition.classes,
        loss=spec.head.loss_name,
        folds_fingerprint=spec.fingerprint,
        n_folds=int(len(np.unique(spec.folds))),
        config_hash=spec.settings_hash,
        config=spec.cfg.model_dump(),
        seed=spec.cfg.seed,
        versions=library_versions(),
        code_version=code_version(),
        created=time.strftime("%Y-%m-%dT%H:%M:%S"),
        image_size_source=spec.image_size_source,
        config_files=config_file_hashes(config, spec.recipe, spec.cfg),
    )
