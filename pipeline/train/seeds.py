"""Seed bags (``make train MODEL=x SEEDS=3``): one recipe trained with seeds s, s+1, ... as separate runs.

Averaging the predictions of the same recipe trained with different seeds (a "seed
bag", the simplest of ensembles) lowers the variance a single run's random
initialisation, data order and augmentation draws add. Each seed is its own run,
``<name>-seed<k>``, whose settings differ only by ``train.seed`` (so its settings hash
differs too), and ``make ensemble`` sees each one as a model. :func:`bag_summary`
shows what the bag adds: each seed's CV and the CV of the seed runs' mean OOF
predictions.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.config import Config, resolve_train_config
from pipeline.core.errors import PipelineError
from pipeline.core.report import format_table
from pipeline.data import Competition
from pipeline.store import RunLayout, RunMeta, frame_probs
from pipeline.task.metrics import Metric

log = logging.getLogger(__name__)


class SeedBagError(PipelineError, ValueError):
    """A seed bag cannot be trained or scored as asked."""


def seed_run_names(base: str, n_seeds: int) -> list[str]:
    """The bag's run names: ``<base>-seed0`` ... ``<base>-seed<n-1>``."""
    if n_seeds < 1:
        raise SeedBagError(f"SEEDS={n_seeds}: give the number of seeds to train, 1 or more (e.g. SEEDS=3)")
    return [f"{base}-seed{k}" for k in range(n_seeds)]


def seed_overrides(overrides: dict[str, Any] | None, seed: int) -> dict[str, Any]:
    """``overrides`` with ``train.seed`` set to ``seed`` (a copy; the other settings untouched)."""
    out = copy.deepcopy(overrides or {})
    out.setdefault("train", {})["seed"] = int(seed)
    return out


def bag_seeds(config: Config, model: str, overrides: dict[str, Any] | None, n_seeds: int) -> list[int]:
    """The seeds of the bag: the recipe's ``train.seed`` (with ``ARGS``) and the ``n_seeds - 1`` after it."""
    _, cfg = resolve_train_config(config, model, overrides)
    return [cfg.seed + k for k in range(n_seeds)]


def mean_oof(layouts: list[RunLayout], train_ids: np.ndarray, classes: list[str]) -> np.ndarray:
    """The mean of the runs' OOF probabilities (``oof.parquet``), aligned to ``train_ids``."""
    import pandas as pd

    probs = [frame_probs(pd.read_parquet(layout.oof), train_ids, classes, str(layout.oof)) for layout in layouts]
    return np.mean(probs, axis=0)


@dataclass
class BagSummary:
    """Each seed run's CV and the CV of their mean OOF predictions."""

    names: list[str]
    seeds: list[int]
    cvs: list[float]
    bag_cv: float
    metric: str

    def table(self) -> str:
        """The bag's leaderboard: one line per seed, then the bag's mean-OOF line."""
        rows = [{"run": n, "seed": s, "CV": cv} for n, s, cv in zip(self.names, self.seeds, self.cvs)]
        rows.append({"run": f"bag of {len(self.names)} (mean OOF)", "seed": "", "CV": self.bag_cv})
        mean_single = float(np.mean(self.cvs))
        title = (f"seed bag ({self.metric}): mean OOF CV {self.bag_cv:.4f} vs the seeds' mean CV {mean_single:.4f} "
                 f"({self.bag_cv - mean_single:+.4f})")
        return format_table(rows, title)


def bag_summary(metas: list[RunMeta], runs_dir, competition: Competition, metric: Metric) -> BagSummary:
    """Score the bag: each finished seed run's CV and the metric on the mean of their OOF probabilities.

    Raises
    ------
    SeedBagError
        If a seed run is not finished (trained on a subset of folds): there is no full OOF to average.
    """
    unfinished = [m.name for m in metas if m.status != "finished"]
    if unfinished:
        raise SeedBagError(f"seed run(s) {unfinished} are not finished (FOLDS= trained a subset); train every fold "
                           "to score the bag")
    layouts = [RunLayout(runs_dir / m.name) for m in metas]
    probs = mean_oof(layouts, competition.train_ids, competition.classes)
    return BagSummary([m.name for m in metas], [int(m.seed) for m in metas], [float(m.cv) for m in metas],
                      float(metric(competition.y, probs)), metric.name)
