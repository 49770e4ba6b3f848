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
        fold<k>/valid_views.parquet, test_views.parquet   each TTA view on its own (what make export BUDGET= drops)

A run is finished only when ``meta.json`` says ``"status": "finished"``; the
ensemble reads finished runs alone. Predictions from another notebook can be
dropped in with the same three files (``oof.parquet``, ``test.parquet`` and a
``meta.json`` with ``status``, ``folds_fingerprint`` and ``classes``).
"""


from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.core import io
from pipeline.core.errors import PipelineError


class StoreError(PipelineError, ValueError):
    """A stored run is inconsistent with the competition or is held by another process."""


#: the prediction files of one fold (:meth:`RunLayout.fold_predictions`)
FOLD_PREDICTION_KINDS = ("valid", "valid_plain", "test", "valid_views", "test_views")


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
        """A fold's row-indexed predictions: ``valid``, ``valid_plain``, ``test``, or each TTA view's on its own
        (``valid_views``, ``test_views``: a ``view`` column, written when a run has more than one view)."""
        if kind not in FOLD_PREDICTION_KINDS:
            raise ValueError(f"fold prediction kind {kind!r}: choose one of {', '.join(FOLD_PREDICTION_KINDS)}")
        return self.fold_dir(fold) / f"{kind}.parquet"

    def read_fold_info(self, fold: int) -> dict:
        return io.read_json(self.fold_info(fold))
