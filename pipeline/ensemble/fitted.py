"""The fitted ensemble kept: every candidate's blend state and decision as JSON, and the submission they reproduce.

``make ensemble`` writes one file per leaderboard candidate into
``runs/<competition>/_ensemble/fitted/`` (``<candidate>.json``) plus ``index.json``,
which names the chosen one. A file holds what it takes to recompute that candidate's
submission from the stored test predictions, or from new ones (``make export``):

* the runs it blends, in blend order, with their settings hash and each fold
  checkpoint's sha256 as the ensemble saw them;
* the blend's state (:meth:`pipeline.blend.BlendMethod.state`; none for a single model),
  how it met the test set (``per_fold`` or ``fold_mean``), the decision's parameters;
* the submission file it was written to, its nested CV and the folds fingerprint.

Everything is JSON (floats written by ``repr``, so they read back bit for bit); a
LightGBM stacker is its own text format inside the JSON. Nothing is pickled.
No torch here: the ensemble stage imports this.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import blend
from pipeline.config import Config
from pipeline.core import io
from pipeline.core.errors import PipelineError
from pipeline.core.io import file_sha256
from pipeline.ensemble.candidates import stacked_fold_tests, stacker_features
from pipeline.ensemble.records import FittedRecord, RecordError, parse_record
from pipeline.ensemble.submissions import submission_frame
from pipeline.task.decision import decision_from_params

log = logging.getLogger(__name__)

#: Version of the files this module writes.
FITTED_VERSION = 1
INDEX = "index.json"


class FittedError(PipelineError, ValueError):
    """A stored blend is missing, damaged, or does not match the runs it was fitted on."""


def fitted_dir(config: Config) -> Path:
    """Where the fitted candidates of a competition are kept."""
    return config.runs_dir / "_ensemble" / "fitted"


def run_record(run, runs_dir: Path) -> dict:
    """A run as a fitted blend names it: name, settings hash, the sha256 of each fold's checkpoint.

    Parameters
    ----------
    run : pipeline.store.StoredRun
    runs_dir : Path
        The competition's run store (``runs/<competition>``).

    Returns
    -------
    dict
        ``checkpoints`` maps fold id (str) to the sha256 of ``fold<k>/best.safetensors``;
        empty for a run without checkpoints (an imported run).
    """
    from pipeline.store import RunLayout

    layout = RunLayout(runs_dir / run.name)
    checkpoints = {}
    for fold in sorted(int(f) for f in run.meta.folds_done):
        path = layout.best(fold)
        if path.is_file():
            checkpoints[str(fold)] = file_sha256(path)
    return {"name": run.name, "config_hash": run.meta.config_hash, "checkpoints": checkpoints}


def candidate_record(cand, runs: list, apply: str, submission_file: str | None, fingerprint: str,
                     extra_features: list[str] | None) -> dict:
    """One leaderboard candidate as stored JSON.

    Parameters
    ----------
    cand : pipeline.ensemble.Candidate
    runs : list of dict
        :func:`run_record` of the runs it reads, in blend order (one run for a single model).
    apply : {"per_fold", "fold_mean"}
        How its blend met the test set (``fold_mean`` where no per-fold predictions were stored).
    submission_file : str or None
        The file in ``submissions/<competition>/`` it was written to.
    fingerprint : str
        The folds fingerprint the OOF rows were split by.
    extra_features : list of str or None
        ``ensemble.stacker_features`` when a stacker read them.

    Returns
    -------
    dict
    """
    fitted = cand.fitted if cand.kind != "single" else None
    return {
        "version": FITTED_VERSION,
        "name": cand.name,
        "kind": cand.kind,
        "runs": runs,
        "blend": None if fitted is None else fitted.state(),
        "apply": apply,
        "decision": cand.decision,
        "submission_file": submission_file,
        "cv": float(cand.cv),
        "nested_cv": float(cand.nested),
        "folds_fingerprint": fingerprint,
        "extra_features": extra_features if fitted is not None and fitted.kind == "stacker" else None,
    }


def _file_name(name: str) -> str:
    # candidate names are method names or single-<run>, both safe path components already
    return f"{io.safe_name(name, 'candidate')}.json"


def save_fitted(folder: Path, records: list[dict], chosen: str) -> None:
    """Write every record, then ``index.json`` naming the chosen one; drop files of earlier ensembles.

    Each file is written atomically and the index last, so a reader never sees an index
    naming a file that is not there.
    """
    folder.mkdir(parents=True, exist_ok=True)
    names = {}
    for record in records:
        file = _file_name(record["name"])
        io.write_json(folder / file, record)
        names[record["name"]] = file
    io.write_json(folder / INDEX, {"version": FITTED_VERSION, "submission": chosen, "candidates": names})
    for stale in folder.glob("*.json"):
        if stale.name != INDEX and stale.name not in names.values():
            stale.unlink(missing_ok=True)


def load_fitted(config: Config, method: str = "submission") -> FittedRecord:
    """The stored record of ``method`` (``submission``: the chosen one), checked against its schema.

    Raises
    ------
    FittedError
        If no ensemble was stored, ``method`` was not among its candidates (the message
        lists the ones that were and says what to run), or the record fails its schema
        (:class:`pipeline.ensemble.records.FittedRecord`: a run name that is a path,
        weights that are not finite or not one per run; the file and field are named).
    """
    folder = fitted_dir(config)
    index_path = folder / INDEX
    if not index_path.is_file():
        raise FittedError(f"no stored ensemble in {folder}: run 'make ensemble' first (it keeps every fitted blend)")
    try:
        index = io.read_json(index_path)
        name = index["submission"] if method == "submission" else method
        candidates = index["candidates"]
    except (ValueError, KeyError, TypeError) as exc:
        raise FittedError(f"{index_path} is damaged ({exc}); rerun 'make ensemble'") from None
    if name not in candidates:
        raise FittedError(f"METHOD={method}: the last ensemble stored no state for it; stored: "
                          f"submission (= {index['submission']}), {', '.join(candidates)}. Add it to ensemble.methods "
                          "and rerun 'make ensemble'")
    # the index names a file in this folder; a path there would read a record from anywhere
    path = folder / io.safe_name(str(candidates[name]), f"{index_path}: candidates.{name}")
    try:
        record = io.read_json(path)
    except (OSError, ValueError) as exc:
        raise FittedError(f"{path} is missing or damaged ({exc}); rerun 'make ensemble'") from None
    version = record.get("version", 1) if isinstance(record, dict) else 1
    if isinstance(version, int) and version > FITTED_VERSION:
        raise FittedError(f"{path} was written by a newer pipeline (version {record['version']}); upgrade it")
    try:
        checked = parse_record(record, path)
    except RecordError as exc:
        raise FittedError(str(exc)) from None
    return checked.model_copy(update={"chosen": name == index["submission"]})


def load_blend(record: FittedRecord):
    """The record's fitted blend (None for a single model) and decision (None without one)."""
    method = None if record.blend is None else blend.BlendMethod.from_state(record.blend.state())
    decision = None if not record.decision else decision_from_params(record.decision)
    return method, decision


def blend_test(record: FittedRecord, tests: np.ndarray, fold_tests: np.ndarray | None,
               extra_test: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """A stored candidate applied to test predictions, as the ensemble applied it.

    Parameters
    ----------
    record : FittedRecord
        From :func:`load_fitted` (or an export's ``export.json``).
    tests : ndarray of shape (n_models, n_rows, n_cols)
        Each run's test predictions, the mean over its fold models, in the record's run order.
    fold_tests : ndarray of shape (n_models, n_folds, n_rows, n_cols) or None
        Each fold model's test predictions (needed when the record says ``per_fold``).
    extra_test : ndarray, optional
        The stacker's metadata features of the test rows.

    Returns
    -------
    (pred, decided)
        The blended predictions and, where a decision was tuned, the decided ones.
    """
    method, decision = load_blend(record)
    if method is None:
        pred = tests[0]
    else:
        pred = blend.predict_test(method, tests, fold_tests, record.apply, extra=extra_test)
    return pred, None if decision is None else decision.apply(pred)


def reproduce_submission(config: Config, method: str = "submission") -> tuple[pd.DataFrame, Path]:
    """Recompute a stored candidate's submission from the run store alone.

    Returns
    -------
    (frame, path)
        The submission and the file the ensemble wrote it to; they are equal.

    Raises
    ------
    FittedError
        If a run the record names is gone or was retrained with other settings.
    """
    from pipeline.data import load_competition
    from pipeline.folds import read_folds
    from pipeline.store import load_runs
    from pipeline.task.metrics import get_metric

    record = load_fitted(config, method)
    competition = load_competition(config, check_image_files=False)
    _, fingerprint = read_folds(config, competition)
    runs, _ = load_runs(config.runs_dir, competition.train_ids, competition.test_ids, competition.classes,
                        fingerprint, task=competition.task)
    by_name = {r.name: r for r in runs}
    picked = []
    for stored in record.runs:
        run = by_name.get(stored.name)
        if run is None or run.meta.config_hash != stored.config_hash:
            raise FittedError(f"run {stored.name} of the stored {record.name} is gone or was retrained; "
                              "rerun 'make ensemble'")
        picked.append(run)
    tests = np.stack([r.test for r in picked])
    fold_tests = stacked_fold_tests(picked)[0] if record.apply == "per_fold" else None
    extra_test = stacker_features(config, competition)[1] if record.extra_features else None
    pred, decided = blend_test(record, tests, fold_tests, extra_test)
    frame = submission_frame(competition.sample_submission, competition, get_metric(config.competition.metric),
                             pred, decided)
    name = "submission.csv" if method == "submission" else record.submission_file
    return frame, config.submissions_dir / name


def store_candidates(config: Config, candidates: list, chosen, runs: list, kept_runs: list, files: dict[str, str],
                     fingerprint: str, apply: str) -> Path:
    """Keep every candidate of an ensemble (``make ensemble`` calls this after writing the submissions).

    Parameters
    ----------
    candidates : list of pipeline.ensemble.Candidate
        Single models (named ``single-<run>``) and blends.
    chosen : Candidate
        The one in ``submission.csv``.
    runs, kept_runs : list of StoredRun
        Every usable run, and those the blends read (in blend order).
    files : dict
        Candidate name -> the submission file written for it (the best single and every blend).
    fingerprint : str
    apply : {"per_fold", "fold_mean"}
        How the blends met the test set.

    Returns
    -------
    Path
        The folder written.
    """
    records_by_run: dict[str, dict] = {}

    def record_of(run) -> dict:
        if run.name not in records_by_run:
            records_by_run[run.name] = run_record(run, config.runs_dir)
        return records_by_run[run.name]

    singles = {f"single-{r.name}": r for r in runs}
    extra = list(config.ensemble.stacker_features or []) or None
    records = []
    for cand in candidates:
        used = [singles[cand.name]] if cand.kind == "single" else kept_runs
        try:
            record = candidate_record(
                cand,
                [record_of(r) for r in used],
                "fold_mean" if cand.kind == "single" else apply,
                files.get(cand.name),
                fingerprint,
                extra,
            )
            json.dumps(record)  # a user's method whose parameters are not JSON is reported, not fatal
        except (TypeError, ValueError, NotImplementedError) as exc:
            log.info(f"not kept for make export: {cand.name} ({type(exc).__name__}: {exc})")
            continue
        records.append(record)
    if not any(r["name"] == chosen.name for r in records):
        log.info(f"the chosen {chosen.name} could not be kept: make export METHOD=submission will refuse")
    folder = fitted_dir(config)
    save_fitted(folder, records, chosen.name)
    return folder


def used_models(record: FittedRecord) -> list[int]:
    """Positions (in ``record.runs``) of the runs the stored candidate reads.

    A weight blend does not read a model of weight 0; a stacker reads only the models
    it kept (``max_models``); a mean reads all, a single model its one run.
    """
    state = record.blend
    if state is None:
        return [0]
    if state.fitted.get("models") is not None:
        return [int(m) for m in state.fitted["models"]]
    if state.method in blend.BLEND_METHODS and blend.BLEND_METHODS[state.method].kind == "weights":
        return [i for i, w in enumerate(state.weights or []) if w != 0.0]
    return list(range(state.n_models))


def reduce_record(record: FittedRecord) -> FittedRecord:
    """The record restricted to :func:`used_models`, renumbered: same predictions from fewer models.

    A weight blend's dropped terms were exact zeros; a stacker's dropped models were never read.
    """
    keep = used_models(record)
    if record.blend is None or len(keep) == record.blend.n_models:
        return record
    state = record.blend.state()
    state["n_models"] = len(keep)
    if state["weights"] is not None:
        state["weights"] = [state["weights"][i] for i in keep]
    if state["fitted"].get("models") is not None:
        state["fitted"] = {**state["fitted"], "models": list(range(len(keep)))}
    # validated again: the reduced record obeys the same schema (one weight per kept run)
    return FittedRecord.model_validate({**record.model_dump(), "runs": [record.runs[i].model_dump() for i in keep],
                                        "blend": state})
