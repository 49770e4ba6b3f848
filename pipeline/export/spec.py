"""``export.json`` as one pydantic schema, checked when ``make export`` writes it and when ``predict.py`` reads it.

The export folder travels (a Kaggle dataset, another machine), so ``predict.py`` trusts nothing in it:
every run name is one folder name, every checkpoint path stays inside the folder, the blend is the
fitted record's schema (:class:`pipeline.ensemble.records.FittedRecord`: finite weights, one per
model), the models are the blend's runs in its order, and :func:`verify_checkpoints` compares every
checkpoint with the sha256 recorded for it before any model is built. No torch here.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.core.io import file_sha256, safe_name
from pipeline.ensemble.records import SHA256_PATTERN, FittedRecord, RecordError, describe_error

SPEC_FILE = "export.json"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def _inside(relative: str, what: str) -> str:
    """``relative`` if it is a relative path that cannot leave the folder it is read under, else raise."""
    path = PurePosixPath(relative)
    if not relative or path.is_absolute() or "\\" in relative or any(part in ("..", "") for part in path.parts):
        raise ValueError(f"{what} {relative!r} must be a relative path inside the export folder")
    return relative


class FoldEntry(_Strict):
    """One fold model: its checkpoint under the export folder, its TTA views, its sha256."""

    fold: int = Field(ge=0)
    file: str
    tta: list[str] = Field(min_length=1)
    sha256: str = Field(pattern=SHA256_PATTERN)

    @field_validator("file")
    @classmethod
    def _file_inside(cls, file: str) -> str:
        return _inside(file, "checkpoint file")


class ModelEntry(_Strict):
    """One exported run (:func:`pipeline.export.build.model_entry`)."""

    run: str
    config_hash: str
    timm_name: str | None = None
    loss: str | None = None
    n_outputs: int = Field(ge=1)
    train: dict
    data: dict
    resize: dict
    batch_size: int = Field(ge=1)
    folds: list[FoldEntry] = Field(min_length=1)

    @field_validator("run")
    @classmethod
    def _one_folder(cls, run: str) -> str:
        return safe_name(run, "run")

    @model_validator(mode="after")
    def _files_in_its_folder(self) -> "ModelEntry":
        for fold in self.folds:
            if PurePosixPath(fold.file).parts[:2] != ("models", self.run):
                raise ValueError(f"checkpoint file {fold.file!r} is not under models/{self.run}/")
        return self


class ExportSpec(_Strict):
    """The whole ``export.json``."""

    version: int
    competition: str
    task: str
    classes: list[str]
    id_column: str
    target_column: str | None = None
    metric: str
    metric_needs: str
    submission_columns: list[str] = Field(min_length=1)
    image_pattern: str
    targets: dict
    ensemble: FittedRecord
    models: list[ModelEntry] = Field(min_length=1)
    test_csv: str | None = None

    @field_validator("image_pattern")
    @classmethod
    def _pattern_inside(cls, pattern: str) -> str:
        # joined to --images: a pattern with '..' or an absolute path would read images from anywhere
        return _inside(pattern, "image_pattern")

    @model_validator(mode="after")
    def _models_are_the_blends_runs(self) -> "ExportSpec":
        runs, models = self.ensemble.run_names(), [m.run for m in self.models]
        if runs != models:
            raise ValueError(f"models {models} are not the blend's runs {runs} (in blend order)")
        return self


def parse_spec(data, path, check_files: bool = False) -> ExportSpec:
    """``data`` (``export.json`` read from ``path``) checked against :class:`ExportSpec`.

    Parameters
    ----------
    data : dict
    path : Path
        The file, for the message; with ``check_files`` its folder holds the checkpoints.
    check_files : bool
        Also require that no checkpoint path resolves outside the folder (through a link).

    Raises
    ------
    RecordError
        Naming the file and every bad field.
    """
    try:
        spec = ExportSpec.model_validate(data)
    except ValidationError as exc:
        raise RecordError(f"{describe_error(exc, path)}; the export is damaged or was edited: run make export "
                          "again") from None
    if check_files:
        folder = Path(path).parent.resolve()
        for model in spec.models:
            for fold in model.folds:
                target = (folder / fold.file).resolve()
                if not target.is_relative_to(folder):
                    raise RecordError(f"{path}: field models.{model.run}.folds.{fold.fold}.file: {fold.file} "
                                      f"resolves to {target}, outside {folder}; run make export again")
    return spec


def verify_checkpoints(folder: Path, spec: ExportSpec) -> None:
    """Compare every checkpoint of the export with the sha256 ``export.json`` records for it.

    Called before any model is built: a checkpoint replaced (another model, a pickle) is refused, not loaded.

    Raises
    ------
    RecordError
        Naming the first file that is missing, outside the folder, or whose sha256 differs.
    """
    root = Path(folder).resolve()
    for model in spec.models:
        for fold in model.folds:
            path = (root / fold.file).resolve()
            if not path.is_relative_to(root):
                raise RecordError(f"{root / fold.file} resolves to {path}, outside the export folder {root}; "
                                  "run make export again")
            if not path.is_file():
                raise RecordError(f"{root / fold.file} is missing from the export; copy the whole folder "
                                  "make export wrote")
            if file_sha256(path) != fold.sha256:
                raise RecordError(f"{root / fold.file} is not the checkpoint exported (its sha256 differs from "
                                  f"the one {SPEC_FILE} records); copy the export folder again or run make "
                                  "export again")
