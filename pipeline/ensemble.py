"""Stage 4: blend the stored runs, score every blend honestly, write Kaggle submissions.

Every finished run made on the current folds and classes is read from the OOF store;
runs made on other folds are left out with the reason (mixing splits leaks). Each
blend method of :mod:`pipeline.blend` is scored in-sample and by nested
cross-validation over the same folds; the method with the best *nested* score is
chosen. One submission per method is written, each checked against
``sample_submission.csv`` first; ``submission.csv`` is the chosen one.
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
from pipeline.folds import read_folds
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
    """Writes submissions and remembers which files it wrote.

    Only files listed in its manifest are replaced or removed; a user's own file
    with a clashing name is left alone unless ``force`` is set.
    """

    def __init__(self, folder: Path, force: bool = False):
        self.folder = folder
        self.force = force
        self.manifest_path = folder / ".written.json"
        self.previous = set(io.read_json(self.manifest_path)) if self.manifest_path.is_file() else set()
        self.written: list[str] = []

    def write(self, name: str, frame: pd.DataFrame) -> Path:
        path = self.folder / name
        if path.exists() and name not in self.previous and not self.force:
            raise StoreError(f"{path} exists and was not written by the pipeline; move it or pass FORCE=1")
        io.write_csv(path, frame)
        self.written.append(name)
        return path

    def finish(self) -> None:
        # drop our own stale files (e.g. an old CV score in a file name) so the folder shows this run only
        for name in self.previous - set(self.written):
            (self.folder / name).unlink(missing_ok=True)
        io.write_json(self.manifest_path, sorted(self.written))


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


def _method_params(config: Config, method: str, runs: list[StoredRun], fingerprint: str, storage_dir: Path) -> dict:
    # temperature scaling of the blend, kept only where it lowers the log loss (checked inside the method)
    calibrate = {"calibrate": True} if config.competition.metric == "log_loss" else {}
    user = config.ensemble.method_params.get(method, {})
    if method != "optuna":
        return {**calibrate, **user}
    params = {**calibrate, "n_trials": config.ensemble.optuna_trials, "timeout": config.ensemble.optuna_timeout, "seed": config.ensemble.seed}
    # one stored study per set of runs (nested fold refits stay in memory): a rerun on the same runs continues it
    key = config_hash([fingerprint, [(r.name, r.meta.config_hash) for r in runs], config.competition.metric])
    params.update(storage=f"sqlite:///{(storage_dir / 'optuna.db').resolve()}", study_name=f"blend-{key}")
    return {**params, **user}


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
                     task: str = "multiclass", n_grades: int | None = None) -> list[Candidate]:
    """Score each method in-sample and by nested CV; refit on all rows and predict the test set.

    ``extra``/``extra_test`` are per-row metadata features; only the stackers read them.
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
        test = result.fitted.predict(tests, extra=extra_test)
        decided = result.decision.apply(test) if result.decision is not None else None
        candidates.append(Candidate(
            name=method, kind=blend.BLEND_METHODS[method].kind, cv=result.in_sample, nested=result.nested,
            test=test, gap=result.gap, weight_std=result.weight_std, weights=result.weights, seconds=result.seconds,
            test_decided=decided, decision=None if result.decision is None else result.decision.params,
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
                         cv_plain=run.meta.cv_plain, seconds=seconds)
    decided_oof, _ = nested_decision(y, run.oof, folds, metric, factory)
    decision = factory().fit(y, run.oof, metric)
    return Candidate(name=f"single-{run.name}", kind="single", cv=metric(y, decision.apply(run.oof)),
                     nested=metric(y, decided_oof), test=run.test, cv_plain=run.meta.cv_plain,
                     seconds=seconds, test_decided=decision.apply(run.test), decision=decision.params)


def run_ensemble(config: Config, force: bool = False, competition: Competition | None = None) -> dict:
    """Blend every usable run, print the leaderboard, write the submissions.

    Returns
    -------
    dict with the chosen method, the leaderboard rows and the submission paths.
    """
    competition = competition or load_competition(config)
    folds, fingerprint = read_folds(config, competition)
    metric = get_metric(config.competition.metric)
    task = competition.task
    runs, excluded = load_runs(config.runs_dir, competition.train_ids, competition.test_ids, competition.classes,
                               fingerprint, task=task)
    for name, reason in excluded:
        log.info(f"left out {name}: {reason}")
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
    if len(kept_runs) >= 2:
        storage_dir = config.runs_dir / "_ensemble"
        storage_dir.mkdir(parents=True, exist_ok=True)
        methods = list(config.ensemble.methods or DEFAULT_METHODS)  # names checked when the config was loaded

        def params_for(method: str) -> dict:
            return _method_params(config, method, kept_runs, fingerprint, storage_dir)

        extra, extra_test = stacker_features(config, competition)
        candidates += blend_candidates(preds[keep], tests[keep], y, folds, metric, methods, params_for, extra, extra_test,
                                       task=task, n_grades=n_grades)
    else:
        log.info("only one distinct model: no blend to search (train another architecture to ensemble)")

    private = competition.solution_labels()
    if private is not None:
        for cand in candidates:
            cand.private = metric(private, cand.test if cand.test_decided is None else cand.test_decided)

    best_single = max(singles, key=lambda c: c.nested if metric.greater_is_better else -c.nested)
    chosen = _choose(candidates, metric)
    writer = SubmissionWriter(config.submissions_dir, force=force)
    paths = {}
    for cand in candidates:
        if cand.kind == "single" and cand is not best_single:
            continue
        frame = submission_frame(competition.sample_submission, competition, metric, cand.test, cand.test_decided)
        label = "best-single" if cand.kind == "single" else cand.name
        paths[cand.name] = writer.write(f"{label}_cv{cand.nested:.4f}.csv", frame)
    chosen_frame = submission_frame(competition.sample_submission, competition, metric, chosen.test, chosen.test_decided)
    paths["submission"] = writer.write("submission.csv", chosen_frame)

    rows = leaderboard_rows(candidates, metric)
    writer.write("leaderboard.csv", pd.DataFrame(rows))
    plot = plot_ensemble(config.submissions_dir / "ensemble.png", runs, preds, candidates, keep)
    if plot:
        writer.written.append(plot.name)
    writer.finish()

    log.info(format_table(rows, f"ensemble leaderboard - {metric.name} ({'higher' if metric.greater_is_better else 'lower'} is better); "
                                f"'nested CV' fits each blend on K-1 folds' OOF and scores the held-out fold"))
    log.info(f"chosen by nested CV: {chosen.name} -> {paths['submission']}{tie_note(candidates, metric)}")
    log.info(f"all submissions: {config.submissions_dir}/")
    return {"chosen": chosen.name, "rows": rows, "paths": {k: str(v) for k, v in paths.items()}}


def _choose(candidates: list[Candidate], metric: Metric) -> Candidate:
    # the one selection rule (blend.select_method): best nested score to 6 decimals, a tie to the earlier,
    # simpler candidate (singles, then the methods in the configured order); keyed by position, as names may repeat
    return candidates[blend.select_method({i: c.nested for i, c in enumerate(candidates)}, metric)]


def tie_note(candidates: list[Candidate], metric: Metric) -> str:
    """``; tied with ...`` naming the candidates whose nested score equals the chosen one's, and the rule; else ''."""
    tied = blend.ties_with_best({i: c.nested for i, c in enumerate(candidates)}, metric)
    if len(tied) < 2:
        return ""
    others = ", ".join(candidates[i].name for i in tied[1:])
    return (f" (tied at nested CV {candidates[tied[0]].nested:.6f} with {others}: a tie goes to the simplest, "
            "single models first, then the blend methods in the configured order)")


def leaderboard_rows(candidates: list[Candidate], metric: Metric) -> list[dict]:
    """The leaderboard, best first by the selection rule itself: the first row is the chosen one, marked ``*``."""
    order = blend.rank_candidates({i: c.nested for i, c in enumerate(candidates)}, metric)
    ordered = [candidates[i] for i in order]
    chosen = ordered[0]
    rows = []
    for cand in ordered:
        rows.append({
            "submission": cand.name + (" *" if cand is chosen else ""),
            "kind": cand.kind,
            "CV": cand.cv,
            "CV no TTA": cand.cv_plain,
            "nested CV": None if cand.kind == "single" and not cand.decision else cand.nested,
            "gap": cand.gap,
            "weight std": cand.weight_std,
            "private LB": cand.private,
            "time": format_seconds(cand.seconds),
        })
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


def plot_ensemble(path: Path, runs: list[StoredRun], preds: np.ndarray, candidates: list[Candidate], keep: np.ndarray) -> Path | None:
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
    io.write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return path
