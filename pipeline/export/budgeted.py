"""The budget applied to an export: the store read, the plan chosen (:mod:`pipeline.export.budget`), the blend refitted.

:func:`plan_export` returns the plan and the refitted record; :func:`restrict_spec` narrows ``export.json``'s models,
fold models and views to the plan; :func:`apply_budget` does both to an export being built, and
:func:`log_piece_values` prints what each piece earns when there is no budget.  The refit scores itself by nested
CV on the kept runs and views, so ``export.json`` and ``manifest.json`` carry the expected score of what is exported,
not of the full ensemble.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import blend
from pipeline.config import Config
from pipeline.core.report import format_table
from pipeline.ensemble.records import FittedRecord
from pipeline.export.budget import (BudgetError, BudgetPlan, CostTable, Plan, RunPredictions, ScoreEstimator,
                                    choose_within_budget, drops_table, full_plan, load_run_predictions,
                                    single_drops)

log = logging.getLogger(__name__)


def _inputs(config, record: FittedRecord, competition, costs, startup: float):
    """The record's runs as stored per fold model and view, the estimator and the cost table."""
    from pipeline.export.cost import planning_costs
    from pipeline.store import RunLayout, read_meta
    from pipeline.task.decision import decision_from_params
    from pipeline.task.metrics import get_metric

    metric = get_metric(config.competition.metric)
    runs = []
    for stored in record.runs:
        layout = RunLayout(config.runs_dir / stored.name)
        runs.append(load_run_predictions(layout, read_meta(layout), len(competition.y), len(competition.test_ids)))
    decision = decision_from_params(record.decision) if record.decision else None
    estimator = ScoreEstimator(runs, None if record.blend is None else record.blend.state(), competition.y, metric,
                               competition.task, decide=None if decision is None else decision.apply)
    return runs, estimator, CostTable(planning_costs(costs), runs, startup), metric


def piece_values(config, record: FittedRecord, competition, costs, n_images: int, startup: float = 0.0) -> list[dict]:
    """What each run, fold model and TTA view of ``record`` earns (:func:`pipeline.export.budget.single_drops`), as
    rows of a table: what is dropped, the seconds it saves on ``n_images`` images, its estimated change."""
    runs, estimator, table, _ = _inputs(config, record, competition, costs, startup)
    return drops_table(single_drops(runs, table, estimator, n_images))


def plan_export(config, record: FittedRecord, competition, costs, budget_seconds: float | None,
                n_images: int, startup: float = 0.0, share: float | None = None) -> tuple[BudgetPlan, FittedRecord]:
    """Choose what of ``record`` to export within ``budget_seconds`` on ``n_images`` images (or within ``share`` of
    the whole ensemble's projected time), and refit its blend.

    Returns
    -------
    (BudgetPlan, FittedRecord)
        The plan, and the record to export (``record`` itself when nothing is dropped).

    Raises
    ------
    BudgetError
    """
    from pipeline.folds import read_folds

    runs, estimator, table, metric = _inputs(config, record, competition, costs, startup)
    folds, _ = read_folds(config, competition)
    y = competition.y
    if share is not None:  # of the whole ensemble's time, as timed by this export
        budget_seconds = share * table.seconds(full_plan(runs), n_images)
    plan = choose_within_budget(runs, table, estimator, budget_seconds, n_images)
    if not plan.dropped:
        return plan, record
    return plan, refit_record(record, plan.plan, runs, y, folds, metric, competition.task, config, competition)


def refit_record(record: FittedRecord, plan: Plan, runs: list[RunPredictions], y: np.ndarray, folds: np.ndarray,
                 metric, task: str, config, competition) -> FittedRecord:
    """``record`` refitted on the plan's runs and views, scored by nested CV there (its ``cv`` and ``nested_cv``).

    The fold models kept differ between runs after a budget, so the blend meets the test set as ``fold_mean``
    unless every run keeps the same fold models (then as the record did).
    """
    from pipeline.ensemble.candidates import stacker_features
    from pipeline.task.decision import decision_for, nested_decision

    kept = [r for r in runs if r.name in plan]
    preds = np.stack([r.oof(plan[r.name].views) for r in kept])
    n_grades = len(competition.targets.labels) if task == "ordinal" else None
    factory = None
    if record.decision and decision_for(task, metric, n_grades=n_grades) is not None:
        factory = lambda: decision_for(task, metric, n_grades=n_grades)  # noqa: E731
    update: dict = {"runs": [e.model_dump() for e in record.runs if e.name in plan]}
    if record.blend is None and factory is None:  # a single model: its OOF score with the kept views
        update.update(cv=float(metric(y, preds[0])), nested_cv=float(metric(y, preds[0])))
    elif record.blend is None:  # a single model with a tuned decision, scored as make ensemble scores it
        decided, _ = nested_decision(y, preds[0], folds, metric, factory)
        decision = factory().fit(y, preds[0], metric)
        update.update(cv=float(metric(y, decision.apply(preds[0]))), nested_cv=float(metric(y, decided)),
                      decision=decision.params)
    else:
        state = record.blend.state()
        extra = stacker_features(config, competition)[0] if record.extra_features else None
        result = blend.nested_score(state["method"], preds, y, folds, metric, extra=extra,
                                    params=state.get("params") or {}, task=task, decision=factory)
        update.update(blend=result.fitted.state(), cv=float(result.in_sample), nested_cv=float(result.nested),
                      decision=None if result.decision is None else result.decision.params)
    fold_sets = {plan[r.name].folds for r in kept}
    update["apply"] = record.apply if len(fold_sets) == 1 and record.apply == "per_fold" else "fold_mean"
    return FittedRecord.model_validate({**record.model_dump(), **update})


def restrict_spec(spec: dict, plan: Plan) -> list[str]:
    """Narrow ``export.json``'s models to the plan (in place); returns the checkpoint files no longer read."""
    removed, models = [], []
    for model in spec["models"]:
        piece = plan.get(model["run"])
        if piece is None:
            removed.extend(f["file"] for f in model["folds"])
            continue
        folds = []
        for fold in model["folds"]:
            if fold["fold"] in piece.folds:
                folds.append({**fold, "tta": [v for v in fold["tta"] if v in piece.views]})
            else:
                removed.append(fold["file"])
        models.append({**model, "folds": folds})
    spec["models"] = models
    return removed


def log_piece_values(config: Config, record: FittedRecord, competition, costs: pd.DataFrame, n_images: int,
                      startup: float) -> None:
    """Print what each run, fold model and view earns (each dropped alone): what a budget would weigh."""
    from pipeline.store import StoreError

    try:
        rows = piece_values(config, record, competition, costs, n_images, startup)
    except (BudgetError, StoreError, OSError, ValueError) as exc:  # a run stored otherwise: the export stands
        log.info(f"what each piece earns: not estimated ({exc})")
        return
    if rows:
        log.info(format_table(rows, f"what each piece earns on the {n_images} test images, dropped alone (most "
                                    "harmful first; make export BUDGET= drops the least useful first)"))


def apply_budget(config: Config, record: FittedRecord, competition, costs: pd.DataFrame, startup: float, spec: dict,
                  tmp: Path, budget_seconds: float | None, n_images: int, share: float | None = None) -> tuple:
    """Narrow the export in ``tmp`` to what fits the budget: spec, checkpoints, costs; the blend refitted.

    Returns
    -------
    (BudgetPlan, FittedRecord, DataFrame)
        The plan, the record exported, the costs of what is kept.
    """
    from pipeline.core import io
    from pipeline.core.durations import format_duration
    from pipeline.export.spec import SPEC_FILE, parse_spec

    plan, record = plan_export(config, record, competition, costs, budget_seconds, n_images, startup, share)
    budget_seconds = plan.budget_seconds
    where = costs["device"].iloc[0]
    if not plan.dropped:
        log.info(f"budget {format_duration(budget_seconds)} for {n_images} test images: the whole ensemble fits "
                 f"({format_duration(plan.seconds)} on {where}); nothing dropped")
        return plan, record, costs
    for file in restrict_spec(spec, plan.plan):
        (tmp / file).unlink()
    for folder in sorted((tmp / "models").iterdir()):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    spec["ensemble"] = record.model_dump(mode="json")
    parse_spec(spec, tmp / SPEC_FILE, check_files=True)  # what predict.py will check (RecordError)
    io.write_json(tmp / SPEC_FILE, spec)
    kept = {(r, f, v) for r, piece in plan.plan.items() for f in piece.folds for v in piece.views}
    costs = costs[[(r.model, r.fold, r.view) in kept for r in costs.itertuples()]].reset_index(drop=True)
    log.info(format_table(plan.table(), f"budget {format_duration(budget_seconds)} for {n_images} test images on "
                                        f"{where}: dropped, in order (estimated change in the metric)")
             + f"\nprojected: {format_duration(plan.seconds_full)} -> {format_duration(plan.seconds)}; "
             f"estimated change {plan.estimated_change:+.4f}; the blend refitted on what is kept: nested CV "
             f"{record.nested_cv:.4f}")
    return plan, record, costs


def row_labels(frame: pd.DataFrame, id_column: str) -> np.ndarray:
    """What each submission row decides: the top column of probability columns, else its values as one string."""
    values = frame.drop(columns=id_column)
    if values.shape[1] > 1 and all(pd.api.types.is_float_dtype(values[c]) for c in values.columns):
        return values.to_numpy().argmax(axis=1)
    return values.astype(str).agg("|".join, axis=1).to_numpy()


__all__ = ["BudgetError", "piece_values", "plan_export", "refit_record", "restrict_spec"]
