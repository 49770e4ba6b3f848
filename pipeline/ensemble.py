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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import blend, io, tasks
from pipeline.config import Config, config_hash
from pipeline.data import Competition, load_competition
from pipeline.decision import decision_for, nested_decision
from pipeline.errors import PipelineError
from pipeline.fitted import store_candidates
from pipeline.folds import iter_splits, read_folds
from pipeline.metrics import Metric, get_metric
from pipeline.report import format_seconds, format_table
from pipeline.store import StoreError, StoredRun, load_runs

log = logging.getLogger(__name__)

# what `make ensemble` runs when the config names no methods: the baselines first
DEFAULT_METHODS = ("mean", "optuna", "caruana", "slsqp", "hill_climb", "rank_mean", "geometric_mean",
                   "logit_mean", "logreg_stacker", "lgbm_stacker")


class SubmissionError(PipelineError, ValueError):
    """A submission does not match the sample submission's format."""


# -- submissions ----------------------------------------------------------------------------

def submission_frame(sample: pd.DataFrame, competition: Competition, metric: Metric, pred: np.ndarray,
                     decided: np.ndarray | None = None) -> pd.DataFrame:
    """A checked submission in the sample submission's format (:func:`pipeline.tasks.submission_frame`).

    Raises
    ------
    SubmissionError
        If the sample's columns fit no format of the task, or the result differs from the sample.
    """
    try:
        out = tasks.submission_frame(sample, competition.id_column, competition.target_column, competition.task,
                                     competition.targets, pred, decided, metric.needs)
    except tasks.TaskError as exc:
        raise SubmissionError(str(exc)) from None
    check_submission(out, sample, competition.id_column)
    return out


def check_submission(submission: pd.DataFrame, sample: pd.DataFrame, id_column: str) -> None:
    """Same ids in the same order, same columns, no NaN or inf.

    Raises
    ------
    SubmissionError
        Naming what differs.
    """
    if list(submission.columns) != list(sample.columns):
        raise SubmissionError(f"submission columns {list(submission.columns)} != sample's {list(sample.columns)}")
    if len(submission) != len(sample) or not (submission[id_column].astype(str).to_numpy() == sample[id_column].astype(str).to_numpy()).all():
        raise SubmissionError("submission ids differ from the sample submission's ids or order")
    values = submission.drop(columns=id_column)
    if values.isna().any().any():
        raise SubmissionError("submission has NaN values")
    numeric = values.select_dtypes(include="number")
    if len(numeric.columns) and not np.isfinite(numeric.to_numpy(dtype=float)).all():
        raise SubmissionError("submission has inf values")


class SubmissionWriter:
    """Writes the ensemble's files into ``submissions/<competition>/`` without ever replacing a user's file.

    Its manifest (``.written.json``: file name -> sha256 of what the pipeline wrote) is the record of what is
    the pipeline's. A file is replaced or removed only if the manifest lists it and its content is still what
    was written; a user's own file under the same name, or one of ours the user edited, stops the stage
    unless ``force``. Each name is recorded as ``pending`` *before* its file is written, so an ensemble killed
    between the two reruns cleanly: the rename that puts a file in place is atomic, and a pending name
    belongs to the pipeline whatever its content.
    """

    PENDING = "pending"

    def __init__(self, folder: Path, force: bool = False):
        self.folder = folder
        self.force = force
        self.manifest_path = folder / ".written.json"
        self.manifest = self._read_manifest()
        self.previous = set(self.manifest)
        self.written: list[str] = []

    def _read_manifest(self) -> dict[str, str | None]:
        if not self.manifest_path.is_file():
            return {}
        try:
            data = io.read_json(self.manifest_path)
        except (ValueError, UnicodeDecodeError) as exc:
            raise StoreError(f"{self.manifest_path} is damaged ({exc}); check the folder's files by hand, then delete "
                             "it or pass FORCE=1") from None
        if isinstance(data, list):  # the first format: names only, no hashes
            return {str(name): None for name in data}
        if not isinstance(data, dict):
            raise StoreError(f"{self.manifest_path} is not a manifest; delete it or pass FORCE=1")
        return {str(name): value for name, value in data.items()}

    def _problem(self, name: str) -> str | None:
        """Why ``name`` may not be replaced, or None if it may."""
        path = self.folder / name
        if self.force or not path.exists():
            return None
        if name not in self.manifest:
            return f"{path} exists and was not written by the pipeline"
        recorded = self.manifest[name]
        if recorded not in (None, self.PENDING) and recorded != io.file_sha256(path):
            return f"{path} changed since the pipeline wrote it"
        return None

    def check(self, names: list[str]) -> None:
        """Refuse before anything is written if any of ``names`` is a user's file.

        Raises
        ------
        StoreError
            Naming every such file, and the two ways out.
        """
        problems = [p for p in (self._problem(n) for n in names) if p]
        if problems:
            raise StoreError("; ".join(problems) + ": move it elsewhere, or pass FORCE=1 to replace it")

    def _save_manifest(self) -> None:
        io.write_json(self.manifest_path, dict(sorted(self.manifest.items())))

    def write_with(self, name: str, writer) -> Path:
        """Write ``name`` with ``writer(tmp_path)`` (atomically), recording it before and after."""
        self.check([name])
        self.folder.mkdir(parents=True, exist_ok=True)
        self.manifest[name] = self.PENDING
        self._save_manifest()
        path = io.write_with(self.folder / name, writer)
        self.manifest[name] = io.file_sha256(path)
        self._save_manifest()
        self.written.append(name)
        return path

    def write(self, name: str, frame: pd.DataFrame) -> Path:
        return self.write_with(name, lambda tmp: frame.to_csv(tmp, index=False))

    def finish(self) -> None:
        """Remove the pipeline's own files of earlier runs that this run did not write (an old CV score in a
        file name), so the folder shows this run only; an edited one is kept and forgotten."""
        for name in sorted(self.previous - set(self.written)):
            if self._problem(name) is None:  # ours and unchanged, or FORCE=1
                (self.folder / name).unlink(missing_ok=True)
            del self.manifest[name]
        self._save_manifest()
        # temporary files of a writer killed mid-write (".<name>.<random>.tmp"): never a finished file
        for stale in self.folder.glob(".*.tmp"):
            stale.unlink(missing_ok=True)


# -- the stage --------------------------------------------------------------------------------

@dataclass
class Candidate:
    """One leaderboard row: a single model or a blend."""

    name: str
    kind: str
    cv: float
    nested: float
    test: np.ndarray
    cv_plain: float | None = None
    gap: float | None = None
    weight_std: float | None = None
    weights: np.ndarray | None = None
    seconds: float = 0.0
    private: float | None = None
    test_decided: np.ndarray | None = None   # the test predictions after the tuned decision (thresholds, cut points)
    decision: dict | None = None
    fold_scores: dict | None = None          # fold -> nested score of its held-out rows (the selection rule's SE)
    simplicity: int = 2                      # blend.BlendMethod.simplicity; a single model ranks with the weights
    se: float | None = None                  # standard error against the best candidate (blend.standard_errors)
    temperature: float = 1.0
    test_other: np.ndarray | None = None     # the test predictions applied the other way (ensemble.apply), if they differ
    private_other: float | None = None
    fitted: object = None


def _method_params(config: Config, method: str, runs: list[StoredRun], fingerprint: str, storage_dir: Path) -> dict:
    # temperature scaling of the blend, kept only where nested CV says it helps (blend.nested_score)
    calibrate = {"calibrate": True} if config.competition.metric == "log_loss" else {}
    user = config.ensemble.method_params.get(method, {})
    if method != "optuna":
        return {**calibrate, **user}
    params = {**calibrate, "n_trials": config.ensemble.optuna_trials, "timeout": config.ensemble.optuna_timeout, "seed": config.ensemble.seed}
    # one stored study per set of runs (nested fold refits start afresh): a rerun on the same runs continues it.
    # The study runs in memory and its trials are written once afterwards (SQLite per trial was 10x slower).
    path = optuna_study_path(config, runs, fingerprint, storage_dir)
    if path.is_file() and "storage" not in user:
        try:
            params["previous_trials"] = io.read_json(path)["trials"]
        except (ValueError, KeyError, TypeError):
            log.info(f"optuna: {path} is unreadable; a new study starts")
    return {**params, **user}


def optuna_study_path(config: Config, runs: list[StoredRun], fingerprint: str, storage_dir: Path) -> Path:
    """Where the optuna study of this set of runs keeps its trials (one file per set of runs and metric)."""
    key = config_hash([fingerprint, [(r.name, r.meta.config_hash) for r in runs], config.competition.metric])
    return storage_dir / f"optuna-{key}.json"


def stacker_features(config: Config, competition: Competition) -> tuple[np.ndarray, np.ndarray] | tuple[None, None]:
    """Per-row metadata columns for the stackers, from train.csv and the test table.

    Raises
    ------
    StoreError
        If a column is missing or not numeric, or a test id has no row.
    """
    columns = config.ensemble.stacker_features
    if not columns:
        return None, None
    tables = {"train.csv": competition.train, config.competition.test_csv: competition.test_table}
    out = []
    for where, table in tables.items():
        missing = [c for c in columns if c not in table.columns]
        if missing:
            raise StoreError(f"ensemble.stacker_features: {where} has no column(s) {missing}")
        values = table.set_index(table[competition.id_column].astype(str))
        ids = competition.train_ids if where == "train.csv" else competition.test_ids
        absent = [i for i in ids if i not in values.index]
        if absent:
            raise StoreError(f"ensemble.stacker_features: {where} has no row for id(s) {absent[:5]}")
        numeric = values.loc[ids, columns].apply(pd.to_numeric, errors="coerce")
        if numeric.isna().any().any():
            bad = numeric.columns[numeric.isna().any()].tolist()
            raise StoreError(f"ensemble.stacker_features: column(s) {bad} of {where} are not all numbers; encode them first")
        out.append(numeric.to_numpy(dtype=np.float64))
    return out[0], out[1]


def blend_candidates(preds: np.ndarray, tests: np.ndarray, y: np.ndarray, folds: np.ndarray, metric: Metric, methods: list[str], params_for, extra: np.ndarray | None = None, extra_test: np.ndarray | None = None,
                     task: str = "multiclass", n_grades: int | None = None, fold_tests: np.ndarray | None = None,
                     apply: str = "per_fold") -> list[Candidate]:
    """Score each method in-sample and by nested CV; refit on all rows and predict the test set.

    ``extra``/``extra_test`` are per-row metadata features; only the stackers read them.
    ``fold_tests`` (``(n_models, n_folds, n_test, n_cols)``) are the fold models' test
    predictions: with ``apply="per_fold"`` each blend is applied to every fold's models and
    the results averaged (:func:`pipeline.blend.predict_per_fold`); the fold-mean application
    is kept in ``test_other`` when it differs.  Without ``fold_tests`` both are the fold-mean one.
    Where the metric scores decisions (a tuned threshold or cut points, :mod:`pipeline.decision`),
    the decision is fitted inside the nested folds too, and the test set gets the all-rows one.
    Methods that do not apply to the task are left out with the reason.
    """
    candidates = []
    factory = _decision_factory(task, metric, n_grades)
    for method in methods:
        reason = blend.not_applicable_reason(method, task)
        if reason:
            log.info(f"skipped {method}: {reason}")
            continue
        result = blend.nested_score(method, preds, y, folds, metric, extra=extra, params=params_for(method),
                                    task=task, decision=factory)
        test = blend.predict_test(result.fitted, tests, fold_tests, apply, extra=extra_test)
        other = None
        if fold_tests is not None:
            other = blend.predict_test(result.fitted, tests, fold_tests, "fold_mean" if apply == "per_fold" else "per_fold",
                                       extra=extra_test)
            if np.allclose(other, test, rtol=0, atol=1e-9):
                other = None  # a linear blend without a temperature: both ways give the same predictions
        decided = result.decision.apply(test) if result.decision is not None else None
        candidates.append(Candidate(
            name=method, kind=blend.BLEND_METHODS[method].kind, cv=result.in_sample, nested=result.nested,
            test=test, gap=result.gap, weight_std=result.weight_std, weights=result.weights, seconds=result.seconds,
            test_decided=decided, decision=None if result.decision is None else result.decision.params,
            fold_scores=dict(result.fold_scores), simplicity=blend.BLEND_METHODS[method].simplicity,
            temperature=result.fitted.temperature_,
            test_other=other if other is None or result.decision is None else result.decision.apply(other),
            fitted=result.fitted,
        ))
    return candidates


def _decision_factory(task: str, metric: Metric, n_grades: int | None = None):
    # the ordinal scale comes from train.csv: a fold's rows may lack the top grade
    if decision_for(task, metric, n_grades=n_grades) is None:
        return None
    return lambda: decision_for(task, metric, n_grades=n_grades)


def single_candidate(run: StoredRun, y: np.ndarray, folds: np.ndarray, metric: Metric, task: str,
                     n_grades: int | None = None) -> Candidate:
    """One stored run as a leaderboard row; a tuned decision is scored by nested CV like the blends."""
    seconds = (run.meta.train_seconds or 0.0) + (run.meta.predict_seconds or 0.0)
    factory = _decision_factory(task, metric, n_grades)
    if factory is None:
        score = metric(y, run.oof)
        return Candidate(name=f"single-{run.name}", kind="single", cv=score, nested=score, test=run.test,
                         cv_plain=run.meta.cv_plain, seconds=seconds, fold_scores=per_fold_scores(y, run.oof, folds, metric))
    decided_oof, _ = nested_decision(y, run.oof, folds, metric, factory)
    decision = factory().fit(y, run.oof, metric)
    return Candidate(name=f"single-{run.name}", kind="single", cv=metric(y, decision.apply(run.oof)),
                     nested=metric(y, decided_oof), test=run.test, cv_plain=run.meta.cv_plain,
                     seconds=seconds, test_decided=decision.apply(run.test), decision=decision.params,
                     fold_scores=per_fold_scores(y, decided_oof, folds, metric))


def per_fold_scores(y: np.ndarray, pred: np.ndarray, folds: np.ndarray, metric: Metric) -> dict:
    """Fold id -> the metric on that fold's rows (what :func:`blend.nested_score` keeps for a blend)."""
    return {f: metric(y[test], pred[test]) for f, _, test in iter_splits(folds)}


def stacked_fold_tests(runs: list[StoredRun]) -> tuple[np.ndarray | None, list[str]]:
    """The runs' per-fold test predictions, ``(n_models, n_folds, n_test, n_cols)``, and the runs that lack them.

    A run without them (an imported run) enters every fold's blend with its fold-mean test
    predictions; None when no run has them (or their fold counts differ), so every blend is
    applied to the fold means.
    """
    have = [r.fold_tests for r in runs if r.fold_tests is not None]
    lacking = [r.name for r in runs if r.fold_tests is None]
    if not have or len({f.shape[0] for f in have}) != 1:
        return None, [r.name for r in runs]
    n_folds = have[0].shape[0]
    stack = [r.fold_tests if r.fold_tests is not None else np.repeat(r.test[None], n_folds, axis=0) for r in runs]
    return np.stack(stack), lacking


def select_runs(runs: list, excluded: list[tuple[str, str]], names: list[str]) -> list:
    """The runs ``ensemble.runs`` names, in the store's order.

    Raises
    ------
    StoreError
        For a name that is not a usable run: why it was left out, or the runs there are.
    """
    usable = {r.name: r for r in runs}
    reasons = dict(excluded)
    for name in names:
        if name in reasons:
            raise StoreError(f"ensemble.runs names {name!r}, which cannot be blended: {reasons[name]}")
        if name not in usable:
            raise StoreError(f"ensemble.runs names {name!r}, which is not a run here; finished runs: {', '.join(usable)}")
    left = [r.name for r in runs if r.name not in names]
    if left:
        log.info(f"left out {', '.join(left)}: not in ensemble.runs")
    return [r for r in runs if r.name in names]


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
        raise StoreError(f"no finished runs in {config.runs_dir} on the current folds; train some first: make train MODEL=<name>")

    y = competition.y
    preds = np.stack([r.oof for r in runs])
    tests = np.stack([r.test for r in runs])
    n_grades = len(competition.targets.labels) if task == "ordinal" else None
    singles = [single_candidate(r, y, folds, metric, task, n_grades) for r in runs]

    keep, pruned = blend.prune_correlated(preds, threshold=config.ensemble.prune_correlation,
                                          scores=np.array([s.cv for s in singles]), metric=metric, task=task)
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
            return _method_params(config, method, kept_runs, fingerprint, storage_dir)

        extra, extra_test = stacker_features(config, competition)
        fold_tests, lacking = stacked_fold_tests(kept_runs)
        apply = config.ensemble.apply
        blend_apply = apply if fold_tests is not None else "fold_mean"
        if apply == "per_fold":
            if fold_tests is None:
                log.info("per-fold application: no run has its fold models' test predictions stored; "
                         "every blend is applied to the fold means")
            elif lacking:
                log.info(f"per-fold application: no per-fold test predictions stored for {', '.join(lacking)} "
                         f"(an imported run has none); its fold-mean test predictions enter every fold's blend")
        if "optuna" in methods:
            log.info(f"optuna budget: {config.ensemble.optuna_trials} trials per fit"
                     + (f" (timeout {config.ensemble.optuna_timeout:g}s)" if config.ensemble.optuna_timeout else "")
                     + f", {len(np.unique(folds)) + 1} fits (nested CV + all rows), {len(kept_runs)} models x {len(y)} rows")
        candidates += blend_candidates(preds[keep], tests[keep], y, folds, metric, methods, params_for, extra, extra_test,
                                       task=task, n_grades=n_grades, fold_tests=fold_tests, apply=apply)
        save_optuna_trials(candidates, optuna_study_path(config, kept_runs, fingerprint, storage_dir))
    else:
        log.info("only one distinct model: no blend to search (train another architecture to ensemble)")

    private = competition.solution_labels()
    if private is not None:
        for cand in candidates:
            cand.private = metric(private, cand.test if cand.test_decided is None else cand.test_decided)
            if cand.test_other is not None:
                cand.private_other = metric(private, cand.test_other)

    best_single = max(singles, key=lambda c: c.nested if metric.greater_is_better else -c.nested)
    chosen = choose_candidate(candidates, metric, config.ensemble.selection)
    frames = {}  # every file is made, and every name checked, before the first one is written
    for cand in candidates:
        if cand.kind == "single" and cand is not best_single:
            continue
        label = "best-single" if cand.kind == "single" else cand.name
        frames[cand.name] = (f"{label}_cv{cand.nested:.4f}.csv",
                             submission_frame(competition.sample_submission, competition, metric, cand.test, cand.test_decided))
    frames["submission"] = ("submission.csv", submission_frame(competition.sample_submission, competition, metric,
                                                               chosen.test, chosen.test_decided))
    rows = leaderboard_rows(candidates, metric, chosen,
                            other_apply="fold_mean" if config.ensemble.apply == "per_fold" else "per_fold")
    frames["leaderboard"] = ("leaderboard.csv", pd.DataFrame(rows))
    writer = SubmissionWriter(config.submissions_dir, force=force)
    writer.check([name for name, _ in frames.values()] + [PLOT_NAME])
    paths = {key: writer.write(name, frame) for key, (name, frame) in frames.items()}
    paths.pop("leaderboard")
    save_figure(writer, PLOT_NAME, ensemble_figure(runs, preds, candidates, keep))
    writer.finish()
    # every candidate's fitted state, for `make export` and to recompute its file (pipeline.fitted)
    store_candidates(config, candidates, chosen, runs, kept_runs,
                     {key: name for key, (name, _) in frames.items() if key != "leaderboard"}, fingerprint, blend_apply)

    log.info(format_table(rows, f"ensemble leaderboard - {metric.name} ({'higher' if metric.greater_is_better else 'lower'} is better); "
                                f"'nested CV' fits each blend on K-1 folds' OOF and scores the held-out fold; "
                                f"'SE' is its standard error against the best, over the folds"))
    log.info(f"chosen by nested CV ({describe_rule(config.ensemble.selection)}): {chosen.name} -> {paths['submission']}"
             f"{tie_note(candidates, chosen)}")
    log.info(f"all submissions: {config.submissions_dir}/")
    return {"chosen": chosen.name, "rows": rows, "paths": {k: str(v) for k, v in paths.items()}}


def save_optuna_trials(candidates: list[Candidate], path: Path) -> None:
    """Keep the all-rows optuna study's trials, so that a rerun on the same runs continues it."""
    for cand in candidates:
        if cand.name == "optuna" and hasattr(cand.fitted, "trials_record") and getattr(cand.fitted, "study_", None) is not None:
            io.write_json(path, {"trials": cand.fitted.trials_record()})


def choose_candidate(candidates: list[Candidate], metric: Metric, rule: str = "one_se") -> Candidate:
    # the one selection rule (blend.select_method): with one_se, the simplest candidate within one standard error
    # of the best nested score; ties to the earlier candidate (singles, then the methods in the configured order).
    # Keyed by position, as names may repeat.
    scored = {i: blend.Scored(c.nested, c.fold_scores, c.simplicity) for i, c in enumerate(candidates)}
    for i, se in blend.standard_errors(scored, metric).items():
        candidates[i].se = None if np.isnan(se) else se
    return candidates[blend.select_method(scored, metric, rule=rule)]


def describe_rule(rule: str) -> str:
    """The selection rule in words, for the line that names the chosen candidate."""
    if rule == "one_se":
        return ("the simplest within one standard error of the best nested CV: means, then weights and single models, "
                "then stackers; among equally simple ones the better nested CV, a tie to the earlier listed")
    return "the best nested CV, a tie to the earlier listed (single models first, then the methods in the configured order)"


def tie_note(candidates: list[Candidate], chosen: Candidate) -> str:
    """`` (tied with ...)`` naming the candidates whose nested score equals the chosen one's (6 decimals), else ''."""
    tied = [c.name for c in candidates if c is not chosen and not np.isnan(c.nested)
            and round(c.nested, 6) == round(chosen.nested, 6)]
    if not tied:
        return ""
    return f" (tied at nested CV {chosen.nested:.6f} with {', '.join(tied)}; the rule above broke the tie)"


def leaderboard_rows(candidates: list[Candidate], metric: Metric, chosen: Candidate, other_apply: str = "fold_mean") -> list[dict]:
    """The leaderboard: the chosen candidate first (marked ``*``), then the others best first by nested CV,
    equal scores in the order the selection rule breaks ties (the earlier listed first), NaN last."""
    rest = [i for i, c in enumerate(candidates) if c is not chosen]
    order = blend.rank_candidates({i: candidates[i].nested for i in rest}, metric) if rest else []
    ordered = [chosen] + [candidates[i] for i in order]
    rows = []
    for cand in ordered:
        rows.append({
            "submission": cand.name + (" *" if cand is chosen else ""),
            "kind": cand.kind,
            "CV": cand.cv,
            "CV no TTA": cand.cv_plain,
            "nested CV": None if cand.kind == "single" and not cand.decision else cand.nested,
            "SE": cand.se,
            "gap": cand.gap,
            "weight std": cand.weight_std,
            "private LB": cand.private,
            "time": format_seconds(cand.seconds),
        })
        if any(c.private_other is not None for c in candidates):
            # the other application (ensemble.apply) where it gives other test predictions than the chosen one
            rows[-1][f"private LB ({other_apply})"] = cand.private_other
        if any(c.temperature != 1.0 for c in candidates):
            rows[-1]["temperature"] = None if cand.kind == "single" else cand.temperature
        if any(c.decision for c in candidates):
            rows[-1]["decision (tuned on OOF)"] = describe_decision(cand.decision)
    return rows


def describe_decision(params: dict | None) -> str:
    """A tuned decision in a few characters: one threshold, a range of per-label thresholds, or the cut points."""
    if not params:
        return ""
    if "cutpoints" in params:
        return "cuts " + " ".join(f"{c:.2f}" for c in params["cutpoints"])
    thresholds = params.get("thresholds", [])
    if len(thresholds) == 1:
        return f"threshold {thresholds[0]:.2f}"
    return f"thresholds {min(thresholds):.2f}..{max(thresholds):.2f}" if thresholds else ""


PLOT_NAME = "ensemble.png"


def save_figure(writer: SubmissionWriter, name: str, fig) -> Path:
    """Write a matplotlib figure as a PNG through ``writer`` (so it is recorded as the pipeline's) and close it."""
    import matplotlib.pyplot as plt

    try:
        return writer.write_with(name, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    finally:
        plt.close(fig)


def ensemble_figure(runs: list[StoredRun], preds: np.ndarray, candidates: list[Candidate], keep: np.ndarray):
    """Two panels: each weight method's weights per model, and the models' OOF correlation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.name for r in runs]
    corr = np.corrcoef(preds.reshape(len(runs), -1)) if len(runs) > 1 else np.ones((1, 1))
    weighted = [c for c in candidates if c.weights is not None and c.kind != "single"]
    fig, (ax_w, ax_c) = plt.subplots(1, 2, figsize=(12, 4.5))
    kept_names = [names[i] for i in keep]
    width = 0.8 / max(1, len(weighted))
    for j, cand in enumerate(weighted):
        ax_w.bar(np.arange(len(kept_names)) + j * width, cand.weights, width=width, label=cand.name)
    ax_w.set_xticks(np.arange(len(kept_names)) + 0.4 - width / 2, kept_names, rotation=20, ha="right")
    ax_w.set_ylabel("weight")
    ax_w.set_title("blend weights per model")
    if weighted:
        ax_w.legend(fontsize=8)
    image = ax_c.imshow(corr, vmin=min(0.9, corr.min()), vmax=1.0, cmap="viridis")
    ax_c.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax_c.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(names)):
            ax_c.text(j, i, f"{corr[i, j]:.3f}", ha="center", va="center", color="w", fontsize=8)
    ax_c.set_title("OOF prediction correlation (lower = more diverse)")
    fig.colorbar(image, ax=ax_c)
    fig.tight_layout()
    return fig
