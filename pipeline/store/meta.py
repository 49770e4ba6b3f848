"""`meta.json`, typed and versioned (:class:`RunMeta`), the run hash that says when two runs are the same run, and the
code and library versions a run records.
"""

from __future__ import annotations

import dataclasses
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import Config, TrainConfig, competition_settings, settings_dump
from pipeline.core import io
from pipeline.core.hashing import json_hash
from pipeline.store.layout import RunLayout, StoreError

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
    status: str  # running | partial | finished
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
    folds: dict | None = None  # fold id (str) -> that fold's fold.json without its history
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
    source: dict | None = None  # an imported run: the files it came from
    image_size_source: str | None = None  # which setting chose the input size (config.image_size_choice)
    config_files: dict | None = None  # path -> SHA-256 of every config file the run read
    teacher: dict | None = None  # make pseudo / make distill: the teacher, its runs and the settings
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
            raise StoreError(
                f"{source}: schema_version {version!r} is newer than this pipeline's "
                f"({META_SCHEMA_VERSION}); upgrade the pipeline"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise StoreError(f"{source}: unknown key(s) {unknown}; this pipeline reads {sorted(known)}")
        required = [
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
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
        raise StoreError(
            f"{layout.meta} is damaged ({exc}); retrain the run from scratch with FORCE=1 "
            f"(make train MODEL={layout.run_dir.name} FORCE=1)"
        ) from None
    return RunMeta.from_json(data, str(layout.meta))


def write_meta(layout: RunLayout, meta: RunMeta) -> None:
    io.write_json(layout.meta, meta.to_json())


# -- when two runs are the same run ------------------------------------------------------------


def run_hash(cfg: TrainConfig, config: Config, folds_fingerprint: str) -> str:
    """The hash that names a run's settings: a rerun with the same hash resumes, another needs FORCE=1."""
    return json_hash(
        {
            "train": settings_dump(cfg),
            "competition": competition_settings(config),
            "folds_fingerprint": folds_fingerprint,
        }
    )


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
            status = subprocess.run(
                ["git", "status", "--porcelain", "--", "."], cwd=source, capture_output=True, text=True, timeout=10
            )
            version["git_dirty"] = bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass  # no git on this machine (a Kaggle notebook): the package version is what we have
    return version
