"""The exported predictor's inputs, checked before any model is built: ``export.json`` (its schema), the
command line's arguments, the sample submission's ids and every test image's header.

A refusal here costs seconds; the same problem found after predicting would cost a Kaggle notebook's hours.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from pipeline.core.errors import PipelineError
from pipeline.ensemble.records import RecordError
from pipeline.export.spec import SPEC_FILE, ExportSpec, parse_spec

SPEC = SPEC_FILE


class ExportPredictError(PipelineError, ValueError):
    """The export folder or the test inputs cannot be used; the message says which file and what to do."""


def _pattern_start(parts: tuple[str, ...]) -> int:
    """Where the config's test-image pattern stops being fixed folders: its first part with a ``{field}``."""
    return next((i for i, part in enumerate(parts) if "{" in part), len(parts) - 1)


def image_pattern(test_images: str) -> str:
    """A test image's path under the test folder: the config's pattern without its leading fixed folders.

    ``test/{id}.png`` -> ``{id}.png``; ``images/test/{id}/0.jpg`` -> ``{id}/0.jpg``.
    """
    parts = Path(test_images).parts
    return str(Path(*parts[_pattern_start(parts):]))


def image_folder(test_images: str) -> str:
    """The test folder under the competition's folder: the pattern's leading fixed folders (``.`` for none).

    ``test/{id}.png`` -> ``test``; ``images/test/{id}/0.jpg`` -> ``images/test``; ``{id}.png`` -> ``.``.
    """
    parts = Path(test_images).parts
    return str(Path(*parts[:_pattern_start(parts)]))


def test_image_paths(config, competition, limit: int = 200) -> list[Path]:
    """Up to ``limit`` of the competition's test images, as predict.py would read them (to time their decoding); []
    when they are not there (a code competition's hidden set)."""
    from pipeline.export.predict import image_paths

    folder = config.data_dir / image_folder(config.competition.test_images)
    try:
        return image_paths(folder, image_pattern(config.competition.test_images), list(competition.test_ids)[:limit])
    except ExportPredictError:
        return []


def load_spec(folder: Path) -> ExportSpec:
    """The export's ``export.json``, checked against its schema (:class:`pipeline.export.spec.ExportSpec`).

    Raises
    ------
    ExportPredictError
        If the folder is not an export, or ``export.json`` is not valid JSON or fails the schema
        (the field is named).
    """
    path = Path(folder) / SPEC
    if not path.is_file():
        raise ExportPredictError(f"{path} does not exist: pass the folder 'make export' wrote (it holds {SPEC})")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ExportPredictError(f"{path} cannot be read as JSON ({exc}); copy the export folder again") from None
    try:
        return parse_spec(data, path, check_files=True)
    except RecordError as exc:
        raise ExportPredictError(str(exc)) from None


def read_spec(folder: Path) -> dict:
    """``export.json`` as plain data, after the same checks as :func:`load_spec`."""
    return load_spec(folder).model_dump(mode="json")


def check_arguments(out: Path, images: Path, sample_submission: Path, batch_size: int | None,
                    workers: int | None, test_csv: Path | None) -> None:
    """Refuse arguments that would fail only after the test set was predicted (or not at all).

    Raises
    ------
    ExportPredictError
        ``--out`` a folder, in a missing or read-only folder; ``--batch-size`` or ``--workers`` out of
        range; ``--images`` not a readable folder; ``--sample-submission`` or ``--test-csv`` not a file.
    """
    if out.is_dir():
        raise ExportPredictError(f"--out {out} is a folder; pass a file name such as {out / 'submission.csv'}")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise ExportPredictError(f"--out {out}: the folder {parent} does not exist; create it or write elsewhere")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ExportPredictError(f"--out {out}: the folder {parent} is not writable; write elsewhere "
                                 "(on Kaggle: /kaggle/working)")
    if batch_size is not None and batch_size < 1:
        raise ExportPredictError(f"--batch-size {batch_size}: pass at least 1 (or leave it out: the run's batch)")
    if workers is not None and workers < 0:
        raise ExportPredictError(f"--workers {workers}: pass 0 (decode in this process) or more")
    if not images.is_dir() or not os.access(images, os.R_OK | os.X_OK):
        raise ExportPredictError(f"--images {images} is not a readable folder; pass the test images' folder")
    for flag, path in (("--sample-submission", sample_submission), ("--test-csv", test_csv)):
        if path is not None and not (path.is_file() and os.access(path, os.R_OK)):
            raise ExportPredictError(f"{flag} {path} is not a readable file")


def read_sample(sample_submission: Path, spec: ExportSpec) -> pd.DataFrame:
    """The sample submission, checked: the export's columns, and ids present, none empty, none twice.

    Raises
    ------
    ExportPredictError
        Naming the file and what is wrong.
    """
    try:
        sample = pd.read_csv(sample_submission, dtype=str, keep_default_na=True)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ExportPredictError(f"{sample_submission} cannot be read as CSV ({exc})") from None
    if list(sample.columns) != spec.submission_columns:
        raise ExportPredictError(
            f"{sample_submission} has columns {list(sample.columns)}; the export was made for "
            f"{spec.submission_columns}"
        )
    ids = sample[spec.id_column]
    if ids.empty:
        raise ExportPredictError(f"{sample_submission} has no rows: there is nothing to predict")
    if ids.isna().any():
        raise ExportPredictError(f"{sample_submission} has {int(ids.isna().sum())} row(s) without an id "
                                 f"(column {spec.id_column!r})")
    twice = ids[ids.duplicated()].unique().tolist()
    if twice:
        raise ExportPredictError(f"{sample_submission} lists id(s) {twice[:5]} more than once")
    return sample


def check_images_open(paths: list[Path]) -> None:
    """Open every test image's header (cheap: no pixels decoded), so a file that is no image fails now.

    Raises
    ------
    ExportPredictError
        Naming the first file PIL cannot identify, and the fix.
    """
    from PIL import Image, UnidentifiedImageError

    for path in paths:
        try:
            with Image.open(path):
                pass
        except (UnidentifiedImageError, OSError) as exc:
            raise ExportPredictError(f"test image {path} cannot be decoded ({exc}); replace it with a readable "
                                     "copy: every id of the sample submission needs its image") from None
