"""Teachers without leaks: the fold-k teacher of ``make pseudo`` and ``make distill``, and its pseudo-labels.

A k-fold student's fold k is scored on fold k's rows. Anything it trains on must carry no
information about fold k's labels, or its OOF score (and the ensemble's nested CV, which
reads that OOF) is optimistic. A teacher built from the whole ensemble breaks this: the
ensemble's test predictions are the mean over all folds' models, and the fold-j models
(j != k) were trained on fold k's rows. So fold k's student gets the **fold-k teacher**:

* the blend the ensemble chose (or one named), **refit on the OOF rows outside fold k**
  with the same method and parameters (the fit the ensemble's nested CV makes for fold k),
* applied to the predictions of the fold-k models of every run it blends: those models
  were trained on the rows outside fold k and never saw fold k's labels.

A blend fitted on all OOF rows would let fold k's labels into fold k's teacher through its
weights; the refit keeps them out. (The OOF predictions it is fitted on were made by
models that saw fold k, exactly as in the ensemble's nested CV: a second-order effect,
the same one nested CV accepts.)

Everything here is pure (arrays in, arrays out) but :func:`resolve_teacher`, which reads
the store and the fitted ensemble. No torch: the teacher's fold-k predictions on the
training rows (``make distill``) are computed by :mod:`pipeline.students.teacher`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from pipeline import blend
from pipeline.config import Config
from pipeline.core.errors import PipelineError
from pipeline.core.hashing import json_hash
from pipeline.store import RunLayout, StoredRun, load_runs
from pipeline.task.metrics import Metric
from pipeline.task.tasks import get_task

if TYPE_CHECKING:  # the fitted record is read lazily, where a teacher is resolved
    from pipeline.ensemble.records import FittedRecord

log = logging.getLogger(__name__)

#: The blend a teacher falls back to when its own method cannot be refit per fold (recorded in the run's meta).
FALLBACK_METHOD = "mean"


class TeacherError(PipelineError, ValueError):
    """The teacher cannot be built as asked; the message names what to run first."""


@dataclass
class Teacher:
    """A resolved teacher: the blend method, its parameters, and the stored runs it blends (in order).

    ``method`` is None for a single model. ``fallback`` says why the chosen method was replaced
    by :data:`FALLBACK_METHOD`; ``left_out`` names runs the fold-k teacher cannot use, with why.
    """

    name: str
    method: str | None
    params: dict
    runs: list[StoredRun]
    fallback: str | None = None
    left_out: list[tuple[str, str]] = field(default_factory=list)

    def identity(self) -> dict:
        """What decides the teacher's predictions: method, parameters, each run's name and settings hash."""
        return {"name": self.name, "method": self.method, "params": self.params, "fallback": self.fallback,
                "runs": [[r.name, r.meta.config_hash] for r in self.runs]}

    def key(self) -> str:
        """A hash of :meth:`identity`: part of the student run's settings hash (a changed teacher retrains)."""
        return json_hash(self.identity())

    def record(self) -> dict:
        """The teacher as the student's ``meta.json`` records it."""
        return {**self.identity(), "left_out": [list(x) for x in self.left_out]}

    def fold_position(self, fold: int) -> int:
        """The index of ``fold`` in the runs' stacked per-fold test predictions (sorted fold order)."""
        return sorted(int(f) for f in self.runs[0].meta.folds_done).index(int(fold))

    def oof(self) -> np.ndarray:
        """The runs' OOF predictions, ``(n_models, n_train, n_cols)``."""
        return np.stack([r.oof for r in self.runs])

    def fold_test(self, fold: int) -> np.ndarray:
        """The fold-``fold`` models' test predictions, ``(n_models, n_test, n_cols)``."""
        k = self.fold_position(fold)
        return np.stack([r.fold_tests[k] for r in self.runs])


def blend_outside_fold(method: str | None, params: dict, oof: np.ndarray, y: np.ndarray, folds: np.ndarray, fold: int,
                       inputs: np.ndarray, metric: Metric, task: str) -> np.ndarray:
    """The fold-``fold`` teacher on ``inputs``: the blend refit on the OOF rows outside ``fold``, applied.

    Parameters
    ----------
    method : str or None
        A blend method of :data:`pipeline.blend.BLEND_METHODS`; None: a single model (``inputs[0]``).
    params : dict
        The method's parameters (as the ensemble fitted it).
    oof : ndarray of shape (n_models, n_train, n_cols)
        The runs' OOF predictions; only the rows with ``folds != fold`` are read, with their labels.
    y, folds : ndarray of shape (n_train, ...)
        Targets and fold ids of the OOF rows.
    inputs : ndarray of shape (n_models, n_rows, n_cols)
        Predictions of the runs' fold-``fold`` models (on the test rows, or on the fold's training rows).

    Returns
    -------
    ndarray of shape (n_rows, n_cols)
        Of the task's output kind (probabilities, or values).
    """
    if method is None:
        return np.asarray(inputs[0], dtype=np.float64)
    outside = np.flatnonzero(np.asarray(folds) != fold)
    fitted = blend.make_blend(method, **params).fit(oof[:, outside], y[outside], metric, task=task)
    return fitted.predict(inputs)


def naive_teacher_test(method: str | None, params: dict, oof: np.ndarray, y: np.ndarray, fold_tests: np.ndarray,
                       metric: Metric, task: str) -> np.ndarray:
    """The leaky teacher, for comparison (the tests' leak check): the blend fitted on all OOF rows, applied to
    the mean over every fold's models. It is what ``submission.csv`` holds, and every fold's labels are in it."""
    means = np.asarray(fold_tests, dtype=np.float64).mean(axis=1)
    if method is None:
        return means[0]
    return blend.make_blend(method, **params).fit(oof, y, metric, task=task).predict(means)


# -- the pseudo-label table -------------------------------------------------------------------

@dataclass
class PseudoTable:
    """The pseudo-labelled test rows of one fold: which rows, their targets, and what they look like."""

    rows: np.ndarray          # indices into the test set
    targets: np.ndarray       # (n, n_cols): probabilities (soft or one-hot) or values
    hard: bool

    def stats(self, columns: list[str], output: str) -> dict:
        """Count and balance: the mean target per column (probabilities), or the values' mean and std."""
        out: dict = {"count": int(len(self.rows)), "hard": self.hard}
        if not len(self.rows):
            return out
        if output == "value":
            out["mean"] = float(self.targets.mean())
            out["std"] = float(self.targets.std())
        else:
            out["balance"] = {str(c): float(v) for c, v in zip(columns, self.targets.mean(axis=0))}
        return out


def confidence(pred: np.ndarray, output: str) -> np.ndarray | None:
    """How sure the teacher is of each row: the top probability (simplex), the least sure label's
    ``max(p, 1 - p)`` (probabilities: a row is as sure as its least sure label); None for values, which carry no
    confidence."""
    if output == "simplex":
        return pred.max(axis=1)
    if output == "probability":
        return np.maximum(pred, 1.0 - pred).min(axis=1)
    return None


def hard_labels(pred: np.ndarray, output: str) -> np.ndarray:
    """One-hot of the top class (simplex), 0/1 per label (probabilities)."""
    if output == "simplex":
        return np.eye(pred.shape[1])[pred.argmax(axis=1)]
    return (pred >= 0.5).astype(np.float64)


def pseudo_table(pred: np.ndarray, task: str, n_train: int, hard_threshold: float | None = None,
                 max_share: float = 1.0, seed: int = 0) -> PseudoTable:
    """Which test rows become training rows of a fold, and their targets.

    Parameters
    ----------
    pred : ndarray of shape (n_test, n_cols)
        The fold's teacher on the test set (:func:`blend_outside_fold`).
    task : str
        multiclass/binary/multilabel: probabilities; regression/ordinal: values.
    n_train : int
        The fold's training rows; the pseudo rows are capped at ``max_share * n_train``.
    hard_threshold : float or None
        None: soft targets (the teacher's probabilities, or values). Else keep the rows whose
        confidence (:func:`confidence`) reaches it, with one-hot / 0-1 targets. Values have no
        confidence: refused.
    max_share : float
        The cap on pseudo rows as a share of the fold's training rows; the most confident rows
        are kept (values: a random subset drawn with ``seed``).

    Returns
    -------
    PseudoTable
        Rows in increasing order.
    """
    output = get_task(task).output
    conf = confidence(pred, output)
    rows = np.arange(len(pred))
    if hard_threshold is not None:
        if conf is None:
            raise TeacherError(f"pseudo.hard_threshold={hard_threshold}: a {task} teacher gives values, which have no "
                               "confidence to threshold; use soft targets (pseudo.hard_threshold=null)")
        rows = rows[conf[rows] >= hard_threshold]
    cap = int(np.floor(max_share * n_train))
    if len(rows) > cap:
        if conf is None:
            rows = np.random.default_rng(seed).permutation(rows)[:cap]
        else:
            rows = rows[np.argsort(-conf[rows], kind="stable")[:cap]]   # the most confident, ties to the earlier row
        rows = np.sort(rows)
    targets = pred[rows] if hard_threshold is None else hard_labels(pred[rows], output)
    return PseudoTable(rows, np.asarray(targets, dtype=np.float64), hard_threshold is not None)


# -- resolving TEACHER= -------------------------------------------------------------------------

def _fitted_record(config: Config, teacher: str) -> FittedRecord | None:
    """The fitted ensemble's record for ``teacher`` (``submission`` or a candidate), or None if it names a run."""
    from pipeline.ensemble.fitted import FittedError, load_fitted

    if teacher != "submission" and (config.runs_dir / teacher / "meta.json").is_file() \
            and teacher not in stored_candidates(config):
        return None   # a run name: that run alone teaches
    try:
        return load_fitted(config, teacher)
    except FittedError as exc:
        if teacher == "submission":
            raise TeacherError(f"TEACHER=submission needs the ensemble's chosen blend: {exc}") from None
        raise TeacherError(f"TEACHER={teacher} is neither a run in {config.runs_dir} (train it first: make train "
                           f"MODEL={teacher}) nor a stored blend ({exc})") from None


def stored_candidates(config: Config) -> list[str]:
    """The candidate names of the last ensemble (none when there is no readable ``index.json``)."""
    from pipeline.core import io
    from pipeline.ensemble.fitted import INDEX, fitted_dir

    try:
        return list(io.read_json(fitted_dir(config) / INDEX).get("candidates", {}))
    except (OSError, ValueError, AttributeError):
        return []


def _checked_run(name: str, by_name: dict, excluded: dict, config: Config, n_folds: int) -> StoredRun | tuple[str, str]:
    """The teacher run ``name``, or (name, why it is left out) for an imported run without per-fold predictions.

    Raises
    ------
    TeacherError
        The run is missing, unfinished, made on other folds or unreadable, or a fold's test
        predictions are missing; the message names what to run first.
    """
    if name in excluded:
        reason = excluded[name]
        if "other folds" in reason:
            raise TeacherError(f"teacher run {name} was {reason}: retrain it on the current folds (make train "
                               f"MODEL={name} FORCE=1), then make ensemble")
        raise TeacherError(f"teacher run {name} is {reason}")
    run = by_name.get(name)
    if run is None:
        raise TeacherError(f"teacher run {name} is missing from {config.runs_dir}: train it first (make train "
                           f"MODEL={name}), then make ensemble")
    if run.fold_tests is not None and run.fold_tests.shape[0] == n_folds:
        return run
    if run.meta.model == "imported":
        # its test predictions are a mean over every fold's models: fold k's labels are in them
        return name, "imported: no per-fold test predictions, and its fold-mean ones saw every fold's labels"
    layout = RunLayout(config.runs_dir / name)
    for fold in range(n_folds):
        if not layout.fold_predictions(fold, "test").is_file():
            fix = (f"make predict MODEL={name}" if layout.best(fold).is_file()
                   else f"make train MODEL={name} FOLDS={fold} FORCE=1")
            raise TeacherError(f"teacher run {name} has no test predictions of fold {fold} "
                               f"({layout.fold_predictions(fold, 'test')} is missing): run '{fix}' first")
    raise TeacherError(f"teacher run {name}: its per-fold test predictions do not match its test.parquet; rewrite "
                       f"them with 'make predict MODEL={name}'")


def resolve_teacher(config: Config, teacher: str, competition, fingerprint: str, student: str | None = None) -> Teacher:
    """The teacher ``TEACHER=`` names, checked against the store: ``submission`` (the blend ``make ensemble``
    chose), a method of the last ensemble (``optuna``, ``single-<run>``), or a run name (that run alone).

    Raises
    ------
    TeacherError
        No ensemble stored (for a blend), a run missing, unfinished, made on other folds,
        retrained since the ensemble, lacking a fold's test predictions, or the student itself;
        each message names what to run first.
    """
    record = _fitted_record(config, teacher)
    if record is None:
        names, method, params, label = [teacher], None, {}, teacher
    else:
        names = record.run_names()
        state = record.blend
        method, params = (None, {}) if state is None else (state.method, dict(state.state().get("params") or {}))
        label = record.name
        if record.folds_fingerprint not in (None, fingerprint):
            raise TeacherError(f"the stored ensemble ({label}) was made on other folds (fingerprint "
                               f"{record.folds_fingerprint} != {fingerprint}): run 'make ensemble' first")
    if student is not None and student in names:
        raise TeacherError(f"the teacher ({label}) blends {student}, the run this command writes; delete it first "
                           f"(make clean-run NAME={student}) and rerun make ensemble, or name the new run otherwise "
                           "(NAME=)")
    runs, excluded = load_runs(config.runs_dir, competition.train_ids, competition.test_ids, competition.classes,
                               fingerprint, task=competition.task)
    by_name, excluded = {r.name: r for r in runs}, dict(excluded)
    n_folds = len(np.unique(competition_folds(config, competition)))
    picked, left_out = [], []
    for name in names:
        got = _checked_run(name, by_name, excluded, config, n_folds)
        (left_out if isinstance(got, tuple) else picked).append(got)
    if record is not None:
        hashes = {r.name: r.config_hash for r in record.runs}
        changed = [r.name for r in picked if hashes.get(r.name) != r.meta.config_hash]
        if changed:
            raise TeacherError(f"teacher run(s) {changed} were retrained since the ensemble was fitted: run "
                               "'make ensemble' first")
    if not picked:
        raise TeacherError(f"the teacher ({label}) has no run with per-fold test predictions "
                           f"({'; '.join(f'{n}: {why}' for n, why in left_out)}); train one (make train MODEL=...) and "
                           "rerun make ensemble")
    fallback = None
    if method is not None:
        fallback = fallback_reason(method, record)
        if fallback:
            method, params = FALLBACK_METHOD, {}
        elif len(picked) == 1:
            method, params = None, {}    # a blend of one run is that run
    return Teacher(label, method, params, picked, fallback, left_out)


def fallback_reason(method: str, record: FittedRecord) -> str | None:
    """Why a stored blend cannot be refit per fold (and the teacher falls back to a mean), or None."""
    if method not in blend.BLEND_METHODS:
        return f"blend method {method!r} is not registered here"
    if record.extra_features:
        return f"{method} read metadata columns {record.extra_features}, which the per-fold refit does not read"
    return None


def competition_folds(config: Config, competition) -> np.ndarray:
    """The competition's fold of every training row (``folds/<competition>.csv``)."""
    from pipeline.folds import read_folds

    return read_folds(config, competition)[0]
