"""Submission files: a prediction as the sample submission's format, checked, and written under a manifest so that a
file the pipeline did not write is never overwritten.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core import io
from pipeline.core.errors import PipelineError
from pipeline.data import Competition
from pipeline.store import StoreError
from pipeline.task import tasks
from pipeline.task.metrics import Metric


class SubmissionError(PipelineError, ValueError):
    """A submission does not match the sample submission's format."""


# -- submissions ----------------------------------------------------------------------------


def submission_frame(
    sample: pd.DataFrame, competition: Competition, metric: Metric, pred: np.ndarray, decided: np.ndarray | None = None
) -> pd.DataFrame:
    """A checked submission in the sample submission's format (:func:`pipeline.task.tasks.submission_frame`).

    Raises
    ------
    SubmissionError
        If the sample's columns fit no format of the task, or the result differs from the sample.
    """
    try:
        out = tasks.submission_frame(
            sample,
            competition.id_column,
            competition.target_column,
            competition.task,
            competition.targets,
            pred,
            decided,
            metric.needs,
        )
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
    if (
        len(submission) != len(sample)
        or not (submission[id_column].astype(str).to_numpy() == sample[id_column].astype(str).to_numpy()).all()
    ):
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
            raise StoreError(
                f"{self.manifest_path} is damaged ({exc}); check the folder's files by hand, then delete "
                "it or pass FORCE=1"
            ) from None
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
