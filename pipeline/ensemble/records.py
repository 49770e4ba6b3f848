"""The fitted-blend record as one pydantic schema: what ``make ensemble`` stores, checked whenever it is read back.

A record is plain JSON that names run folders and checkpoint files, so a hand-edited or damaged one
could steer ``make export`` outside the run store (a run name ``../../x``), or blend with weights that
give garbage with exit code 0 (``[NaN, 1]``, ``[1000, -999]``), or for a model count that is not the
record's. :func:`parse_record` refuses each of these, naming the file and the field. The export's
``export.json`` holds the same record and is checked by the same schema
(:mod:`pipeline.export.spec`). No torch here.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.core.errors import PipelineError
from pipeline.core.io import safe_name

#: A checkpoint's sha256 as :func:`pipeline.core.io.file_sha256` writes it.
SHA256_PATTERN = r"^[0-9a-f]{64}$"


class RecordError(PipelineError, ValueError):
    """A stored record (a fitted blend, an export's ``export.json``) fails its schema; the message names the field."""


class _Record(BaseModel):
    # unknown keys are refused: a key this code does not read is a file of another version or a hand edit
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class RunEntry(_Record):
    """A run as a fitted blend names it: its folder name, settings hash, and each fold checkpoint's sha256."""

    name: str
    config_hash: str
    checkpoints: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _one_folder(cls, name: str) -> str:
        # the name becomes runs/<competition>/<name> and models/<name>/ in the export: one path component only
        return safe_name(name, "run name")

    @field_validator("checkpoints")
    @classmethod
    def _fold_digests(cls, checkpoints: dict[str, str]) -> dict[str, str]:
        import re

        for fold, digest in checkpoints.items():
            if not fold.isdigit():
                raise ValueError(f"fold {fold!r} is not a fold number")
            if not re.fullmatch(SHA256_PATTERN, digest):
                raise ValueError(f"fold {fold}'s checksum {digest[:80]!r} is not a sha256 (64 hex digits)")
        return checkpoints


class BlendRecord(BaseModel):
    """A fitted blend's state (:meth:`pipeline.blend.BlendMethod.state`); the keys a blend reads are checked here,
    the method's own fitted attributes are kept as they are (its ``from_state`` checks them)."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    method: str
    n_models: int = Field(ge=1)
    weights: list[float] | None = None
    temperature: float | None = Field(default=None, gt=0)
    fitted: dict = Field(default_factory=dict)

    @model_validator(mode="after")
    def _weights_fit(self) -> "BlendRecord":
        if self.weights is not None:
            if len(self.weights) != self.n_models:
                raise ValueError(f"weights has {len(self.weights)} entries for n_models={self.n_models}")
            # the weight methods fit non-negative weights (hill_climb only with allow_negative): other weights
            # blend into garbage (every row the same class) without any error
            negative_allowed = bool((self.model_extra or {}).get("params", {}).get("allow_negative"))
            if (not negative_allowed and any(w < 0 for w in self.weights)) or not math.fsum(self.weights) > 0:
                raise ValueError(f"weights {self.weights} must be non-negative with a positive sum")
        models = self.fitted.get("models") if isinstance(self.fitted, dict) else None
        if models is not None and any(not isinstance(m, int) or not 0 <= m < self.n_models for m in models):
            raise ValueError(f"fitted.models {models} names a model outside 0..{self.n_models - 1}")
        return self

    def state(self) -> dict:
        """The state as :meth:`pipeline.blend.BlendMethod.from_state` reads it."""
        return self.model_dump()


class FittedRecord(_Record):
    """One leaderboard candidate as ``make ensemble`` stored it (:func:`pipeline.ensemble.fitted.candidate_record`)."""

    version: int = 1
    name: str
    kind: str
    runs: list[RunEntry] = Field(min_length=1)
    blend: BlendRecord | None = None
    apply: Literal["per_fold", "fold_mean"]
    decision: dict | None = None
    submission_file: str | None = None
    cv: float
    nested_cv: float
    folds_fingerprint: str | None = None
    extra_features: list[str] | None = None
    chosen: bool = False  # set on load: whether the index names it as the submission

    @field_validator("name")
    @classmethod
    def _candidate_name(cls, name: str) -> str:
        return safe_name(name, "candidate name")

    @field_validator("submission_file")
    @classmethod
    def _submission_in_folder(cls, name: str | None) -> str | None:
        return None if name is None else safe_name(name, "submission_file")

    @model_validator(mode="after")
    def _models_match_runs(self) -> "FittedRecord":
        if self.blend is not None and self.blend.n_models != len(self.runs):
            raise ValueError(f"the blend was fitted on {self.blend.n_models} models but the record names "
                             f"{len(self.runs)} run(s)")
        names = [r.name for r in self.runs]
        if len(set(names)) != len(names):
            raise ValueError(f"runs {names} name a run twice")
        return self

    def run_names(self) -> list[str]:
        """The runs in blend order."""
        return [r.name for r in self.runs]


def describe_error(error: ValidationError, path) -> str:
    """One line per bad field of a record: ``<file>: field <a.b.c>: <why>``."""
    lines = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "(the whole record)"
        message = str(item["msg"]).removeprefix("Value error, ")
        lines.append(f"field {field}: {message}")
    return f"{path}: " + "; ".join(lines)


def parse_record(data, path) -> FittedRecord:
    """``data`` (a record read from ``path``) checked against :class:`FittedRecord`.

    Raises
    ------
    RecordError
        Naming ``path`` and every bad field, with what to do.
    """
    try:
        return FittedRecord.model_validate(data)
    except ValidationError as exc:
        raise RecordError(f"{describe_error(exc, path)}; the stored blend is damaged or was edited: rerun "
                          "'make ensemble'") from None
