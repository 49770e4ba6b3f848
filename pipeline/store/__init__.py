"""The out-of-fold store, the one owner of every run's files.

``layout`` (:class:`RunLayout`, every path of a run), ``meta`` (``meta.json``, the run hash), ``frames`` (prediction
tables), ``runs`` (reading runs for the ensemble, ``clean-run``), ``lock`` (one trainer per run), ``imports``
(``make import-oof``) and ``context`` (what every stage after training reads first).
"""

from pipeline.store.frames import check_prediction_values, frame_probs, numeric_columns, prediction_frame, read_table
from pipeline.store.imports import import_run, validate_import
from pipeline.store.layout import RunLayout, StoreError, previous_version
from pipeline.store.lock import RunLock
from pipeline.store.meta import (META_SCHEMA_VERSION, RunMeta, code_version, library_versions, read_meta, run_hash,
                                 write_meta)
from pipeline.store.runs import StoredRun, check_run_name, describe_run, load_runs, read_fold_tests, remove_run

__all__ = ["StoreError", "previous_version", "RunLayout", "META_SCHEMA_VERSION", "RunMeta", "read_meta",
           "write_meta", "run_hash", "library_versions", "code_version", "prediction_frame", "frame_probs",
           "read_table", "numeric_columns", "check_prediction_values", "StoredRun", "load_runs", "read_fold_tests",
           "check_run_name", "describe_run", "remove_run", "RunLock", "validate_import", "import_run"]
