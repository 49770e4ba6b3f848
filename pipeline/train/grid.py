"""The train stage as a grid of (run, fold) jobs on an executor (``make train EXECUTOR=ray``).

The driver (this process) resolves every run before any work, holds each run's lock for the whole
grid, and is the only writer of ``meta.json``: it records a fold as done when its job returns, and
assembles each run once all its folds are done. A job trains one fold with the normal fold code
(:func:`pipeline.train.loop.train_fold`) under that fold's own lock, writing only inside ``fold<k>/``,
so jobs of one run never write the same file, and a retried job resumes from the fold's last
complete epoch. Every job reads and writes the same ``output_dir``: on a cluster, a shared path.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from pipeline.config import Config, load_config
from pipeline.core.executors import Executor, Job, JobOutcome
from pipeline.core.report import format_seconds, log_to_file, progress_bar
from pipeline.store import RunLock, RunMeta, read_meta
from pipeline.train.distributed import SINGLE
from pipeline.train.loop import train_fold
from pipeline.train.runtime import select_runtime
from pipeline.train.spec import RunSpec, fold_list, prepare_run, view_list
from pipeline.train.stage import assemble_run, mark_fold_done, open_run, open_stores, with_batch_size

log = logging.getLogger(__name__)


def train_fold_job(
    config_path: str, model: str, fold: int, overrides: dict[str, Any], run_name: str | None = None
) -> dict:
    """One job of the grid: train fold ``fold`` of the run of ``model`` (named ``run_name``, default the recipe's)
    wherever the executor runs it.

    The run was opened by the driver (its ``meta.json`` exists); this reads it, never writes it.

    Returns
    -------
    dict with the fold's score, training seconds and the batch size used.
    """
    config = load_config(config_path, overrides)
    spec = prepare_run(config, model, overrides, run_name=run_name)
    layout = spec.layout
    meta = read_meta(layout)
    if meta is None:
        raise RuntimeError(f"run {layout.run_dir} has no meta.json: the driver opens a run before its fold jobs")
    with RunLock(layout.run_dir, lock_path=layout.fold_lock(fold)):
        data, target = open_stores(config, spec, SINGLE)
        runtime = select_runtime(spec.cfg, data.store.in_memory, SINGLE)
        cfg = with_batch_size(spec, meta, runtime, target)
        views, view_names = view_list(spec.cfg)
        with log_to_file(layout.fold_log(fold)):
            result = train_fold(
                spec.name, cfg, fold, data, spec.competition.classes, spec.metric, runtime, layout, views, view_names
            )
    return {"score": result["score"], "train_seconds": result["train_seconds"], "batch_size": cfg.batch_size}


@dataclass
class GridRun:
    """One run of the grid, as the driver tracks it."""

    spec: RunSpec
    meta: RunMeta
    fold_ids: list[int]
    errors: dict[int, str]


def open_grid(
    config: Config,
    models: list[str],
    folds_subset: list[int] | None,
    force: bool,
    overrides: dict[str, Any] | None,
    locks: contextlib.ExitStack,
    run_name: str | None = None,
) -> list[GridRun]:
    """Resolve and open every run before any job starts; the runs' locks are held by ``locks``."""
    if run_name and len(models) != 1:
        raise ValueError("a run name names one run: give one model with it")
    # every recipe checked before any work
    specs = [prepare_run(config, model, overrides, run_name=run_name) for model in models]
    runs = []
    for spec in specs:
        fold_ids = fold_list(spec, folds_subset)
        locks.enter_context(RunLock(spec.layout.run_dir))
        meta, finished = open_run(spec, config, fold_ids, force)
        runs.append(GridRun(spec, meta, [] if finished else [f for f in fold_ids if f not in meta.folds_done], {}))
    return runs


def record_outcome(run: GridRun, fold: int, outcome: JobOutcome) -> None:
    """The driver's bookkeeping for one finished job: the fold joins ``folds_done``, or its error is kept."""
    layout = run.spec.layout
    if not outcome.ok:
        run.errors[fold] = outcome.error
        log.warning(
            "job %s: FAILED on %s after %s - %s",
            outcome.job.key,
            outcome.worker,
            format_seconds(outcome.seconds),
            outcome.error,
        )
        return
    if run.meta.batch_size_found is None and run.spec.cfg.batch_size == "auto":
        run.meta.batch_size_found = int(outcome.value["batch_size"])
    mark_fold_done(layout, run.meta, fold)
    log.info(
        "job %s: done on %s in %s, %s %.4f",
        outcome.job.key,
        outcome.worker,
        format_seconds(outcome.seconds),
        run.spec.metric.name,
        outcome.value["score"],
    )


def run_train_grid(
    config: Config,
    models: list[str],
    executor: Executor,
    folds_subset: list[int] | None = None,
    force: bool = False,
    overrides: dict[str, Any] | None = None,
    run_name: str | None = None,
) -> list[tuple[str, RunMeta | None, str]]:
    """Train every (model, fold) as one job on ``executor``, then assemble each run whose folds all finished.

    Parameters
    ----------
    config : Config
        Loaded from a file (jobs reload it by path, with ``overrides``).
    models : list of str
        Recipe names, aliases or timm names; each names a run.
    executor : Executor
        Where the jobs run (:mod:`pipeline.core.executors`).
    folds_subset, force, overrides
        As for :func:`pipeline.train.run_train`.
    run_name : str, optional
        ``NAME=``: the run's name when one model is trained (default: the recipe's).

    Returns
    -------
    list of (model, meta or None, error): one per model; ``error`` is empty when every fold finished.
    """
    if config.source is None:
        raise ValueError("run_train_grid needs a config loaded from a file: its jobs reload it by path")
    overrides = overrides or {}
    with contextlib.ExitStack() as locks:
        runs = open_grid(config, models, folds_subset, force, overrides, locks, run_name)
        jobs, owner = [], {}
        for run in runs:
            for fold in run.fold_ids:
                job = Job(
                    f"{run.spec.name} fold {fold}",
                    train_fold_job,
                    (config.source, run.spec.recipe or run.spec.name, fold, overrides, run.spec.name),
                )
                jobs.append(job)
                owner[job.key] = (run, fold)
        log.info("grid: %d job(s) of %d run(s) on %s", len(jobs), len(runs), executor.describe())
        bar = progress_bar(total=len(jobs), desc="grid", unit="job")
        for outcome in executor.run(jobs):
            run, fold = owner[outcome.job.key]
            record_outcome(run, fold, outcome)
            bar.update(1)
        bar.close()
        results = []
        for run in runs:
            if run.errors:
                failed = ", ".join(f"fold {f}: {e}" for f, e in sorted(run.errors.items()))
                results.append((run.spec.name, run.meta, failed))
                continue
            results.append((run.spec.name, assemble_run(run.spec, run.meta), ""))
    return results
