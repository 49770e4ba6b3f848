"""Stage 3: the out-of-fold store. Every run's predictions, keyed by id, with their provenance.

This module owns the store: :class:`RunLayout` names every file of a run, :class:`RunMeta`
is ``meta.json`` (typed, with its schema version), and :func:`run_hash` decides when two
runs were made with the same settings. No other module spells a run's file names or reads
``meta.json`` by hand.

Layout, one folder per run::

    runs/<competition>/<run>/
        meta.json              status, resolved config, folds fingerprint, classes, scores, timings, versions
        oof.parquet            id, fold, one probability column per class (TTA applied)
        oof_plain.parquet      the same without TTA
        test.parquet           id, one probability column per class (mean over folds, TTA applied)
        fold<k>/best.safetensors   best checkpoint of fold k (by the validation metric)
        fold<k>/last.pt            training state after the last complete epoch (resume)
        fold<k>/valid.parquet, valid_plain.parquet, test.parquet, fold.json

A run is finished only when ``meta.json`` says ``"status": "finished"``; the
ensemble reads finished runs alone. Predictions from another notebook can be
dropped in with the same three files (``oof.parquet``, ``test.parquet`` and a
``meta.json`` with ``status``, ``folds_fingerprint`` and ``classes``).
"""

from __future__ import annotations

import dataclasses
import os
import platform
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline import io
from pipeline.config import Config, TrainConfig, config_hash
from pipeline.errors import PipelineError


class StoreError(PipelineError, ValueError):
    """A stored run is inconsistent with the competition or is held by another process."""


# -- where a run's files are ----------------------------------------------------------------

def previous_version(path: Path) -> Path:
    """Where the version of ``path`` before the last save is kept (``last.pt`` -> ``last.prev.pt``)."""
    return path.with_name(path.stem + ".prev" + path.suffix)


@dataclass(frozen=True)
class RunLayout:
    """Every path of one run folder, ``runs/<competition>/<run>/``."""

    run_dir: Path

    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def meta(self) -> Path:
        return self.run_dir / "meta.json"

    @property
    def oof(self) -> Path:
        return self.run_dir / "oof.parquet"

    @property
    def oof_plain(self) -> Path:
        return self.run_dir / "oof_plain.parquet"

    @property
    def test(self) -> Path:
        return self.run_dir / "test.parquet"

    @property
    def lock(self) -> Path:
        return self.run_dir / ".lock"

    def fold_dir(self, fold: int) -> Path:
        return self.run_dir / f"fold{fold}"

    def best(self, fold: int) -> Path:
        """The fold's best checkpoint (safetensors, with its epoch and score)."""
        return self.fold_dir(fold) / "best.safetensors"

    def fold_lock(self, fold: int) -> Path:
        """Held by the process training the fold when folds of one run train at once (``EXECUTOR=ray``)."""
        return self.fold_dir(fold) / "fold.lock"

    def fold_log(self, fold: int) -> Path:
        """The fold's log: every line training printed for it, with times (appended across resumes)."""
        return self.fold_dir(fold) / "train.log"

    def state(self, fold: int) -> Path:
        """The fold's training state after its last complete epoch (resume)."""
        return self.fold_dir(fold) / "last.pt"

    def previous_state(self, fold: int) -> Path:
        return previous_version(self.state(fold))

    def fold_info(self, fold: int) -> Path:
        """``fold.json``: the fold's scores, history and timings."""
        return self.fold_dir(fold) / "fold.json"

    def fold_predictions(self, fold: int, kind: str) -> Path:
        """A fold's row-indexed predictions: ``valid``, ``valid_plain`` or ``test``."""
        if kind not in ("valid", "valid_plain", "test"):
            raise ValueError(f"fold prediction kind {kind!r}: choose valid, valid_plain or test")
        return self.fold_dir(fold) / f"{kind}.parquet"

    def read_fold_info(self, fold: int) -> dict:
        return io.read_json(self.fold_info(fold))


# -- meta.json -------------------------------------------------------------------------------

#: Version of the meta.json schema this code writes; files without one are version 1. Version 2 added
#: ``config_files`` and ``image_size_source``, version 3 ``teacher`` (all optional: older files still load).
META_SCHEMA_VERSION = 3


@dataclass
class RunMeta:
    """A run's ``meta.json``: what was trained, how, on which folds, and how well.

    Fields that a run does not have (a trained run's ``source``, an imported run's
    ``config``, scores of an unfinished run) are None and are not written.
    """

    name: str
    status: str                              # running | partial | finished
    classes: list
    folds_fingerprint: str
    task: str = "multiclass"
    model: str | None = None
    timm_name: str | None = None
    family: str | None = None
    competition: str | None = None
    metric: str | None = None
    loss: str | None = None
    n_folds: int | None = None
    config_hash: str | None = None
    config: dict | None = None
    seed: int | None = None
    versions: dict | None = None
    code_version: dict | None = None
    created: str | None = None
    folds_done: list = field(default_factory=list)
    batch_size_found: int | None = None
    folds: dict | None = None                # fold id (str) -> that fold's fold.json without its history
    cv: float | None = None
    cv_plain: float | None = None
    tta_gain: float | None = None
    private_lb: float | None = None
    train_seconds: float | None = None
    predict_seconds: float | None = None
    params: int | None = None
    image_size: int | None = None
    tta: list | None = None
    finished: str | None = None
    source: dict | None = None               # an imported run: the files it came from
    image_size_source: str | None = None     # which setting chose the input size (config.image_size_choice)
    config_files: dict | None = None         # path -> SHA-256 of every config file the run read
    teacher: dict | None = None              # make pseudo / make distill: the teacher, its runs and the settings
    schema_version: int = META_SCHEMA_VERSION

    def to_json(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, data: Any, source: str = "meta.json") -> "RunMeta":
        """Parse a ``meta.json`` mapping.

        Raises
        ------
        StoreError
            If it is not a mapping, lacks a required key, has a key this schema does not
            know, or was written by a newer schema.
        """
        if not isinstance(data, dict):
            raise StoreError(f"{source}: expected a JSON object, got {type(data).__name__}")
        version = data.get("schema_version", 1)
        if not isinstance(version, int) or version > META_SCHEMA_VERSION:
            raise StoreError(f"{source}: schema_version {version!r} is newer than this pipeline's "
                             f"({META_SCHEMA_VERSION}); upgrade the pipeline")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise StoreError(f"{source}: unknown key(s) {unknown}; this pipeline reads {sorted(known)}")
        required = [f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [k for k in required if k not in data]
        if missing:
            raise StoreError(f"{source}: missing key(s) {missing}")
        return cls(**data)


def read_meta(layout: RunLayout) -> RunMeta | None:
    """The run's metadata, or None when the run has no ``meta.json`` yet.

    Raises
    ------
    StoreError
        If ``meta.json`` is not valid JSON or not a run's metadata.
    """
    if not layout.meta.is_file():
        return None
    try:
        data = io.read_json(layout.meta)
    except (ValueError, UnicodeDecodeError) as exc:
        raise StoreError(f"{layout.meta} is damaged ({exc}); retrain the run from scratch with FORCE=1 "
                         f"(make train MODEL={layout.run_dir.name} FORCE=1)") from None
    return RunMeta.from_json(data, str(layout.meta))


def write_meta(layout: RunLayout, meta: RunMeta) -> None:
    io.write_json(layout.meta, meta.to_json())


# -- when two runs are the same run ------------------------------------------------------------

# settings that change how fast a run goes or how it is shown, not what it learns
_NOT_HASHED = ("log_every", "num_workers", "tta", "compile", "ddp_backend", "cache", "cache_margin", "pin_memory",
               "persistent_workers", "prefetch_factor", "image_size_from",    # image_size_from: image_size is hashed
               "return_freed_memory")
# settings hashed only when set away from their default, so runs made before they existed keep their hash
_HASHED_WHEN_SET = {"amp_dtype": "auto", "sync_bn": False, "loss": "auto", "device_augment": [], "small_input": False,
                    "ema": False, "ema_decay": 0.999, "ema_warmup": True, "mixup_alpha": 0.0, "cutmix_alpha": 0.0,
                    "mixup_prob": 1.0, "mixup_switch_prob": 0.5, "mixup_mode": "batch", "mixup_off_epochs": 0,
                    "grad_accum_steps": 1, "freeze_epochs": 0, "layer_decay": None, "average_last": 0,
                    "progressive_sizes": None, "augment_policy": "none",
                    "preset": None, "optimizer": "adamw"}
# competition keys added with the tasks: hashed only when set, so runs made before them keep their hash
_COMPETITION_KEYS_WHEN_SET = ("target_columns", "positive_class", "target_range", "metrics")


def settings_dump(cfg: TrainConfig) -> dict:
    """The training settings that decide what a run learns (the part of the run's hash that comes from ``train``)."""
    dump = cfg.model_dump(exclude=set(_NOT_HASHED))
    for key, default in _HASHED_WHEN_SET.items():
        if dump.get(key) == default:
            dump.pop(key)
    return dump


def competition_settings(config: Config) -> dict:
    """The competition part of a run's hash."""
    dump = config.competition.model_dump()
    for key in _COMPETITION_KEYS_WHEN_SET:
        if not dump.get(key):
            dump.pop(key, None)
    return dump


def run_hash(cfg: TrainConfig, config: Config, folds_fingerprint: str) -> str:
    """The hash that names a run's settings: a rerun with the same hash resumes, another needs FORCE=1."""
    return config_hash({"train": settings_dump(cfg), "competition": competition_settings(config),
                        "folds_fingerprint": folds_fingerprint})


# -- reading runs for the ensemble -----------------------------------------------------------

@dataclass
class StoredRun:
    """One finished run's predictions aligned to the competition's row order.

    ``fold_tests`` holds each fold model's test predictions, ``(n_folds, n_test, n_cols)`` in
    fold order, whose mean is ``test``; None when the run has none stored (an imported run).
    """

    name: str
    oof: np.ndarray
    test: np.ndarray
    meta: RunMeta
    fold_tests: np.ndarray | None = None


def prediction_frame(ids: np.ndarray, probs: np.ndarray, classes: list[str], folds: np.ndarray | None = None) -> pd.DataFrame:
    """Predictions keyed by id, one named column per class."""
    frame = pd.DataFrame({"id": np.asarray(ids, dtype=str)})
    if folds is not None:
        frame["fold"] = np.asarray(folds, dtype=np.int64)
    for k, name in enumerate(classes):
        frame[str(name)] = probs[:, k].astype(np.float64)
    return frame


def frame_probs(frame: pd.DataFrame, ids: np.ndarray, classes: list[str], source: str) -> np.ndarray:
    """Class columns of ``frame`` in the order of ``ids``; raise if ids or columns differ."""
    missing_cols = [c for c in classes if str(c) not in frame.columns]
    if missing_cols:
        raise StoreError(f"{source}: no column for class(es) {missing_cols[:5]}")
    indexed = frame.set_index(frame["id"].astype(str))
    if indexed.index.has_duplicates:
        raise StoreError(f"{source}: duplicate ids")
    ids = np.asarray(ids, dtype=str)
    if len(indexed) != len(ids) or not indexed.index.isin(ids).all():
        raise StoreError(f"{source}: ids differ from the competition's ({len(indexed)} rows vs {len(ids)})")
    try:
        probs = indexed.loc[ids, [str(c) for c in classes]].to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"{source}: a prediction column is not numeric ({exc})") from None
    if not np.isfinite(probs).all():
        raise StoreError(f"{source}: NaN or inf predictions")
    return probs


def library_versions() -> dict[str, str]:
    """The versions of the libraries a run depends on, read from the installed packages' metadata (no import)."""
    from importlib.metadata import PackageNotFoundError, version

    import pipeline

    versions = {"python": platform.python_version()}
    for package in ("torch", "timm", "albumentations", "numpy", "pandas", "scikit-learn"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "not installed"
    versions["pipeline"] = pipeline.__version__
    return versions


def code_version() -> dict[str, str | bool]:
    """The pipeline's version and, inside a git checkout, its commit and whether it has local changes."""
    import subprocess

    import pipeline

    version: dict[str, str | bool] = {"pipeline": pipeline.__version__}
    source = Path(pipeline.__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True, timeout=10)
        if commit.returncode == 0:
            version["git_commit"] = commit.stdout.strip()
            status = subprocess.run(["git", "status", "--porcelain", "--", "."], cwd=source, capture_output=True, text=True, timeout=10)
            version["git_dirty"] = bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass  # no git on this machine (a Kaggle notebook): the package version is what we have
    return version


def load_runs(runs_dir: Path, train_ids: np.ndarray, test_ids: np.ndarray, classes: list[str], folds_fingerprint: str,
              task: str = "multiclass") -> tuple[list[StoredRun], list[tuple[str, str]]]:
    """Every finished run made on these folds, for this task and these columns, and the runs left out with why.

    Returns
    -------
    (runs, excluded) where excluded is a list of ``(run name, reason)``.
    """
    runs, excluded = [], []
    if not runs_dir.is_dir():
        return runs, excluded
    for run_dir in sorted(p for p in runs_dir.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
        layout = RunLayout(run_dir)
        try:
            meta = read_meta(layout)
        except StoreError as exc:
            excluded.append((run_dir.name, f"unreadable: {exc}"))
            continue
        if meta is None:
            continue
        if meta.status != "finished":
            done = sorted(meta.folds_done)
            excluded.append((run_dir.name, f"unfinished (folds done: {done or 'none'}); finish it with make train, "
                                           f"or delete it with make clean-run NAME={run_dir.name}"))
            continue
        if meta.folds_fingerprint != folds_fingerprint:
            excluded.append((run_dir.name, f"made on other folds (fingerprint {meta.folds_fingerprint} != {folds_fingerprint}); mixing splits leaks"))
            continue
        if meta.task != task:
            excluded.append((run_dir.name, f"made for task {meta.task!r}, not {task!r}"))
            continue
        if [str(c) for c in meta.classes] != [str(c) for c in classes]:
            excluded.append((run_dir.name, "its class list differs from train.csv's"))
            continue
        try:
            oof = frame_probs(_read_table(layout.oof), train_ids, classes, str(layout.oof))
            test = frame_probs(_read_table(layout.test), test_ids, classes, str(layout.test))
            check_prediction_values(oof, task, str(layout.oof), classes)
            check_prediction_values(test, task, str(layout.test), classes)
        except StoreError as exc:
            excluded.append((run_dir.name, f"unreadable: {exc}"))
            continue
        runs.append(StoredRun(run_dir.name, oof, test, meta, read_fold_tests(layout, meta, test)))
    return runs, excluded


def read_fold_tests(layout: RunLayout, meta: RunMeta, test: np.ndarray) -> np.ndarray | None:
    """Each fold model's test predictions, ``(n_folds, n_test, n_cols)``, or None where not all are stored.

    The fold files are keyed by row (the sample submission's order when the run was
    made); they are used only when every fold's file is there, has the test set's shape,
    and their mean is the run's id-keyed ``test.parquet`` (so the rows are the same rows).
    """
    folds = sorted(int(f) for f in meta.folds_done)
    if not folds:
        return None
    stack = []
    for fold in folds:
        path = layout.fold_predictions(fold, "test")
        if not path.is_file():
            return None
        try:
            frame = pd.read_parquet(path)
        except (OSError, ValueError):
            return None
        if "row" not in frame.columns or len(frame) != len(test) or frame.shape[1] - 1 != test.shape[1]:
            return None
        values = frame.sort_values("row").drop(columns="row").to_numpy(dtype=np.float64)
        stack.append(values)
    fold_tests = np.stack(stack)
    if not np.isfinite(fold_tests).all() or not np.allclose(fold_tests.mean(axis=0), test, rtol=1e-5, atol=1e-6):
        return None
    return fold_tests


def check_run_name(name: str, what: str = "NAME") -> str:
    """``name`` if it can name a run folder, else an error saying what is allowed (:func:`pipeline.io.safe_name`)."""
    return io.safe_name(name, what)


def describe_run(run_dir: Path) -> str:
    """A run's status in a few words, for a question or a message (unreadable runs say so)."""
    try:
        meta = read_meta(RunLayout(run_dir))
    except StoreError as exc:
        return f"unreadable: {exc}"
    if meta is None:
        return "no meta.json"
    done = sorted(meta.folds_done)
    return f"{meta.status}, folds done {done or 'none'}" + (f", CV {meta.cv:.4f}" if meta.cv is not None else "")


def remove_run(runs_dir: Path, name: str) -> Path:
    """Delete the run folder ``runs_dir/name`` under its lock (a run being trained is refused).

    Returns
    -------
    Path
        The folder that was removed.

    Raises
    ------
    StoreError
        If the name is not a run name, there is no such run, or a live process holds its lock.
    """
    run_dir = runs_dir / check_run_name(name)
    if not run_dir.is_dir() or name.startswith(("_", ".")):
        known = sorted(p.name for p in runs_dir.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))) \
            if runs_dir.is_dir() else []
        raise StoreError(f"no run {run_dir}; runs: {', '.join(known) or 'none'}")
    with RunLock(run_dir):
        for child in run_dir.iterdir():
            if child.name != ".lock":
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    run_dir.rmdir()
    return run_dir


class RunLock:
    """An exclusive lock on a run folder; a lock whose owner process died is taken over.

    Two processes training the same run would overwrite each other's checkpoints. The
    lock names its owner as ``host:pid``: on a folder shared by several machines, a lock
    held from another machine is never taken over (its process cannot be checked from
    here); the message names the machine and the file to delete if that job is gone.
    """

    def __init__(self, run_dir: Path, lock_path: Path | None = None):
        # lock_path: a finer lock inside the run, e.g. one fold's, for jobs that train folds of one run at once
        self.path = lock_path or RunLayout(run_dir).lock

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                owner = self._owner()
                if owner is not None and owner[0] != _HOST:
                    raise StoreError(f"{self.path.parent} is being trained by process {owner[1]} on machine {owner[0]}; "
                                     f"wait for it, or delete {self.path} if that job is gone") from None
                if owner is not None and _alive(owner[1]):
                    raise StoreError(f"{self.path.parent} is being trained by process {owner[1]}; wait for it or stop it") from None
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as handle:
                handle.write(f"{_HOST}:{os.getpid()}")
            return self
        raise StoreError(f"could not lock {self.path}")

    def _owner(self) -> tuple[str, int] | None:
        """(machine, process id) of the holder; a lock written as a bare pid is from this machine."""
        try:
            host, _, pid = self.path.read_text().strip().rpartition(":")
            return host or _HOST, int(pid)
        except (OSError, ValueError):
            return None

    def __exit__(self, *exc) -> None:
        self.path.unlink(missing_ok=True)


_HOST = platform.node() or "localhost"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_table(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise StoreError(f"{path} does not exist")
    if path.suffix == ".parquet":
        try:
            return pd.read_parquet(path)
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise StoreError(f"{path} is not a parquet file pandas can read ({str(exc).splitlines()[0][:120]}); "
                             "write it with DataFrame.to_parquet, or pass a .csv") from None
    if path.suffix == ".csv":
        try:
            return pd.read_csv(path, dtype={"id": str})
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise StoreError(f"{path} is not a CSV file pandas can read ({str(exc).splitlines()[0][:120]}); "
                             "write it with DataFrame.to_csv(index=False)") from None
    raise StoreError(f"{path}: expected a .csv or .parquet file")


def _numeric_columns(frame: pd.DataFrame, columns: list[str], source: str) -> None:
    """Each named column must hold numbers only; name the first that does not, with an example value."""
    for column in columns:
        values = frame[column]
        numbers = pd.to_numeric(values, errors="coerce")
        bad = numbers.isna() & values.notna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise StoreError(f"{source}: column {column!r} holds {values.iat[row]!r} (id {frame['id'].iat[row]}), "
                             "not a number; every prediction column must be numeric")


def check_prediction_values(probs: np.ndarray, task: str, source: str, classes: list[str]) -> None:
    """Probabilities lie in [0, 1] (and sum to 1 per row for multiclass); values (regression, ordinal) are
    only required to be finite, which :func:`frame_probs` checks.

    Raises
    ------
    StoreError
        Naming the file, the range found and the fix (logits need a sigmoid or softmax first).
    """
    from pipeline.tasks import get_task

    output = get_task(task).output
    if output == "value" or probs.size == 0:
        return
    if probs.min() < 0 or probs.max() > 1:
        raise StoreError(f"{source}: values outside [0, 1] (min {probs.min():.3g}, max {probs.max():.3g}); "
                         "store probabilities, not logits")
    if output == "simplex" and len(classes) > 1 and not np.allclose(probs.sum(axis=1), 1.0, atol=1e-3):
        raise StoreError(f"{source}: rows do not sum to 1 (e.g. {probs.sum(axis=1)[0]:.4f}); apply a softmax first")


def validate_import(oof: pd.DataFrame, test: pd.DataFrame, train_ids: np.ndarray, test_ids: np.ndarray, folds: np.ndarray, classes: list[str], source: str,
                    task: str = "multiclass") -> tuple[np.ndarray, np.ndarray]:
    """Check predictions made elsewhere against this competition; return them in our row order.

    Parameters
    ----------
    oof : DataFrame
        ``id``, ``fold`` and one column per prediction column (class, label or the
        target, :mod:`pipeline.tasks`), one row per train id.
    test : DataFrame
        ``id`` and the same prediction columns, one row per test id.
    train_ids, test_ids, folds, classes
        The competition's ids, our fold of each train row, the prediction column names.
    task : str
        Probabilities are checked to lie in [0, 1] (and to sum to 1 for multiclass);
        regression and ordinal values only to be finite.

    Returns
    -------
    (oof_probs, test_probs) aligned to ``train_ids`` and ``test_ids``.

    Raises
    ------
    StoreError
        Naming the first problem: a missing column, ids that differ, a fold
        assignment that differs from ours (mixing splits leaks), NaN, or values
        that are not probabilities.
    """
    for frame, what in ((oof, "OOF"), (test, "test")):
        if "id" not in frame.columns:
            raise StoreError(f"{source}: the {what} file needs an 'id' column (columns: {list(frame.columns)[:8]})")
    if "fold" not in oof.columns:
        raise StoreError(f"{source}: the OOF file needs a 'fold' column with each row's validation fold (ours: folds/<competition>.csv)")
    _numeric_columns(oof, ["fold"], f"{source} (OOF)")
    for frame, what in ((oof, "OOF"), (test, "test")):
        _numeric_columns(frame, [str(c) for c in classes if str(c) in frame.columns], f"{source} ({what})")
    oof_probs = frame_probs(oof, train_ids, classes, f"{source} (OOF)")
    test_probs = frame_probs(test, test_ids, classes, f"{source} (test)")
    their_folds = oof.set_index(oof["id"].astype(str)).loc[np.asarray(train_ids, dtype=str), "fold"].to_numpy()
    if not np.all(np.asarray(their_folds, dtype=np.float64) % 1 == 0):
        raise StoreError(f"{source}: the 'fold' column must hold whole fold numbers")
    differ = np.flatnonzero(their_folds.astype(np.int64) != folds)
    if len(differ):
        raise StoreError(
            f"{source}: fold assignment differs from ours on {len(differ)} rows (e.g. id {train_ids[differ[0]]}: "
            f"fold {their_folds[differ[0]]} vs {folds[differ[0]]}); retrain that model on folds/<competition>.csv - mixing splits leaks"
        )
    for probs, what in ((oof_probs, "OOF"), (test_probs, "test")):
        check_prediction_values(probs, task, f"{source} ({what})", classes)
    return oof_probs, test_probs


def import_run(run_dir: Path, oof_path: Path, test_path: Path, train_ids: np.ndarray, test_ids: np.ndarray, folds: np.ndarray, folds_fingerprint: str, classes: list[str], metric, y: np.ndarray, force: bool = False,
               task: str = "multiclass") -> RunMeta:
    """Validate predictions from another notebook and add them to the store as a finished run."""
    layout = RunLayout(run_dir)
    if layout.meta.is_file() and not force:
        raise StoreError(f"run {run_dir} exists; choose another NAME or pass FORCE=1")
    oof_probs, test_probs = validate_import(_read_table(oof_path), _read_table(test_path), train_ids, test_ids, folds, classes, str(oof_path), task)
    io.write_parquet(layout.oof, prediction_frame(train_ids, oof_probs, classes, folds))
    io.write_parquet(layout.test, prediction_frame(test_ids, test_probs, classes))
    meta = RunMeta(name=run_dir.name, status="finished", model="imported", family="imported",
                   source={"oof": str(oof_path), "test": str(test_path)}, task=task, classes=list(classes),
                   folds_fingerprint=folds_fingerprint, cv=metric(y, oof_probs), metric=metric.name,
                   created=pd.Timestamp.now().isoformat(timespec="seconds"), folds_done=sorted(set(np.asarray(folds).tolist())))
    write_meta(layout, meta)
    return meta
