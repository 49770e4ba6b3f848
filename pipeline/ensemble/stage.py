"""Stage 4: blend the stored runs, score every blend honestly, write Kaggle submissions.

Every finished run made on the current folds and classes is read from the OOF store;
runs made on other folds are left out with the reason (mixing splits leaks). Each
blend method of :mod:`pipeline.blend` is scored in-sample and by nested
cross-validation over the same folds; the choice is the simplest candidate within one
standard error of the best *nested* score (``ensemble.selection``). Each fitted blend is
applied to the test predictions of every fold's models and the k results averaged
(``ensemble.apply: per_fold``), so it meets inputs shaped like the OOF rows it was
fitted on. One submission per method is written, each checked against
``sample_submission.csv`` first; ``submission.csv`` is the chosen one. Only the CSVs
and the stored predictions are read: no image file is needed.
"""


from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import blend
from pipeline.config import Config
from pipeline.core import io
from pipeline.core.report import format_table
from pipeline.data import Competition, load_competition
from pipeline.ensemble.candidates import (Candidate, blend_candidates, estimate_averaging, method_params,
                                          optuna_study_path, select_runs, single_candidate, stacked_fold_tests,
                                          stacker_features)
from pipeline.ensemble.fitted import store_candidates
from pipeline.ensemble.leaderboard import (PLOT_NAME, choose_candidate, describe_rule, ensemble_figure,
                                           leaderboard_rows, save_figure, stand_in_note, tie_note)
from pipeline.ensemble.public_lb import LB_PLOT, frame_sha256, public_lb_figure, read_public_scores
from pipeline.ensemble.submissions import SubmissionWriter, submission_frame
from pipeline.folds import read_folds
from pipeline.store import StoreError, load_runs
from pipeline.task.metrics import get_metric
from pipeline.tracking import track

log = logging.getLogger(__name__)


# what `make ensemble` runs when the config names no methods: the baselines first
DEFAULT_METHODS = ("mean", "optuna", "caruana", "slsqp", "hill_climb", "rank_mean", "geometric_mean",
                   "logit_mean", "logreg_stacker", "lgbm_stacker")


def run_ensemble(config: Config, force: bool = False, competition: Competition | None = None) -> dict:
    """Blend every usable run, print the leaderboard, write the submissions.

    Returns
    -------
    dict with the chosen method, the leaderboard rows and the submission paths.
    """
    # blending reads the CSVs and the stored predictions only: no image file is needed
    competition = competition or load_competition(config, check_image_files=False)
    folds, fingerprint = read_folds(config, competition)
    metric = get_metric(config.competition.metric)
    task = competition.task
    runs, excluded = load_runs(config.runs_dir, competition.train_ids, competition.test_ids, competition.classes,
                               fingerprint, task=task)
    for name, reason in excluded:
        log.info(f"left out {name}: {reason}")
    if config.ensemble.runs is not None:
        runs = select_runs(runs, excluded, config.ensemble.runs)
    if not runs:
        raise StoreError(
            f"no finished runs in {config.runs_dir} on the current folds; train some first: make train MODEL=<name>"
        )

    y = competition.y
    preds = np.stack([r.oof for r in runs])
    tests = np.stack([r.test for r in runs])
    n_grades = len(competition.targets.labels) if task == "ordinal" else None
    singles = [single_candidate(r, y, folds, metric, task, n_grades) for r in runs]

    keep, pruned = blend.prune_correlated(
        preds,
        threshold=config.ensemble.prune_correlation,
        scores=np.array([s.cv for s in singles]),
        metric=metric,
        task=task,
    )
    for dropped, kept, corr in pruned:
        log.info(f"pruned {runs[dropped].name}: OOF correlation {corr:.4f} with {runs[kept].name} (adds nothing)")
    kept_runs = [runs[i] for i in keep]

    candidates = list(singles)
    blend_apply = "fold_mean"  # how the blends met the test set: per_fold needs the fold models' predictions
    if len(kept_runs) >= 2:
        storage_dir = config.runs_dir / "_ensemble"
        storage_dir.mkdir(parents=True, exist_ok=True)
        methods = list(config.ensemble.methods or DEFAULT_METHODS)  # names checked when the config was loaded

        def params_for(method: str) -> dict:
            return method_params(config, method, kept_runs, fingerprint, storage_dir)

        extra, extra_test = stacker_features(config, competition)
        fold_tests, lacking = stacked_fold_tests(kept_runs)
        apply = config.ensemble.apply
        blend_apply = apply if fold_tests is not None else "fold_mean"
        if apply == "per_fold":
            if fold_tests is None:
                log.info(
                    "per-fold application: no run has its fold models' test predictions stored; "
                    "every blend is applied to the fold means"
                )
            elif lacking:
                log.info(
                    f"per-fold application: no per-fold test predictions stored for {', '.join(lacking)} "
                    f"(an imported run has none); its fold-mean test predictions enter every fold's blend"
                )
        if "optuna" in methods:
            log.info(
                f"optuna budget: {config.ensemble.optuna_trials} trials per fit"
                + (f" (timeout {config.ensemble.optuna_timeout:g}s)" if config.ensemble.optuna_timeout else "")
                + f", {len(np.unique(folds)) + 1} fits (nested CV + all rows), {len(kept_runs)} models x {len(y)} rows"
            )
        candidates += blend_candidates(
            preds[keep],
            tests[keep],
            y,
            folds,
            metric,
            methods,
            params_for,
            extra,
            extra_test,
            task=task,
            n_grades=n_grades,
            fold_tests=fold_tests,
            apply=apply,
        )
        save_optuna_trials(candidates, optuna_study_path(config, kept_runs, fingerprint, storage_dir))
    else:
        log.info("only one distinct model: no blend to search (train another architecture to ensemble)")

    # what averaging k fold models gains each candidate on the test set, unseen by nested CV (blend.averaging)
    estimate_averaging(candidates, y, metric, task, seed=config.ensemble.seed)
    selection_score = config.ensemble.selection_score
    if selection_score == "expected" and all(c.expected is None for c in candidates):
        selection_score = "nested"
        log.info(
            f"ensemble.selection_score=expected: no fold-averaging estimate for {metric.name} here (it is made for "
            "metrics of decided labels, from the fold models' test predictions); chosen on nested CV"
        )
    private = competition.solution_labels()
    if private is not None:
        for cand in candidates:
            cand.private = metric(private, cand.test if cand.test_decided is None else cand.test_decided)
            if cand.test_other is not None:
                cand.private_other = metric(private, cand.test_other)

    best_single = max(singles, key=lambda c: c.nested if metric.greater_is_better else -c.nested)
    chosen = choose_candidate(candidates, metric, config.ensemble.selection, selection_score)
    frames = {}  # every file is made, and every name checked, before the first one is written
    for cand in candidates:
        if cand.kind == "single" and cand is not best_single:
            continue
        label = "best-single" if cand.kind == "single" else cand.name
        frames[cand.name] = (
            f"{label}_cv{cand.nested:.4f}.csv",
            submission_frame(competition.sample_submission, competition, metric, cand.test, cand.test_decided),
        )
    frames["submission"] = (
        "submission.csv",
        submission_frame(competition.sample_submission, competition, metric, chosen.test, chosen.test_decided),
    )
    # make lb's public scores, on the rows whose file has the content each was recorded for
    recorded = read_public_scores(config)
    by_sha = {e["sha256"]: e["public_lb"] for e in recorded}
    if by_sha:
        for cand in candidates:
            if cand.name in frames:
                cand.public = by_sha.get(frame_sha256(frames[cand.name][1]))
    rows = leaderboard_rows(
        candidates, metric, chosen, other_apply="fold_mean" if config.ensemble.apply == "per_fold" else "per_fold"
    )
    frames["leaderboard"] = ("leaderboard.csv", pd.DataFrame(rows))
    writer = SubmissionWriter(config.submissions_dir, force=force)
    writer.check([name for name, _ in frames.values()] + [PLOT_NAME] + ([LB_PLOT] if recorded else []))
    paths = {key: writer.write(name, frame) for key, (name, frame) in frames.items()}
    board_path = paths.pop("leaderboard")
    save_figure(writer, PLOT_NAME, ensemble_figure(runs, preds, candidates, keep))
    if recorded:
        save_figure(writer, LB_PLOT, public_lb_figure(recorded, metric.name))
    writer.finish()
    # every candidate's fitted state, for `make export` and to recompute its file (pipeline.ensemble.fitted)
    store_candidates(
        config,
        candidates,
        chosen,
        runs,
        kept_runs,
        {key: name for key, (name, _) in frames.items() if key != "leaderboard"},
        fingerprint,
        blend_apply,
    )

    table = format_table(
        rows,
        f"ensemble leaderboard - {metric.name} ({'higher' if metric.greater_is_better else 'lower'} is better); "
        f"'nested CV' fits each blend on K-1 folds' OOF and scores the held-out fold; "
        f"'SE' is its standard error against the best, over the folds"
        + (
            "; 'fold-avg gain' what averaging its k fold models is expected to gain on the test set "
            "(OOF rows have one), 'expected' nested CV + that gain"
            if any(c.expected is not None for c in candidates)
            else ""
        ),
    )
    log.info(table)
    log.info(
        f"chosen by {describe_rule(config.ensemble.selection, selection_score, any(c.exact for c in candidates))}: "
        f"{chosen.name} -> {paths['submission']}"
        f"{tie_note(candidates, chosen)}"
        f"{stand_in_note(candidates, chosen, metric, config.ensemble.selection, selection_score)}"
    )
    log.info(f"all submissions: {config.submissions_dir}/")
    track(config.tracking.settings(config.out, config.competition.name), "ensemble",
          {"competition": config.competition.name, "folds_fingerprint": fingerprint, "stage": "ensemble",
           "chosen": chosen.name, "runs": ",".join(r.name for r in runs)},
          metrics={"nested_cv": chosen.nested, "cv": chosen.cv, "candidates": len(candidates),
                   **({"private_lb": chosen.private} if chosen.private is not None else {})},
          texts={"leaderboard.txt": table}, artifacts=[board_path, config.submissions_dir / PLOT_NAME])
    return {"chosen": chosen.name, "rows": rows, "paths": {k: str(v) for k, v in paths.items()}}


def save_optuna_trials(candidates: list[Candidate], path: Path) -> None:
    """Keep the all-rows optuna study's trials, so that a rerun on the same runs continues it."""
    for cand in candidates:
        if (
            cand.name == "optuna"
            and hasattr(cand.fitted, "trials_record")
            and getattr(cand.fitted, "study_", None) is not None
        ):
            io.write_json(path, {"trials": cand.fitted.trials_record()})
