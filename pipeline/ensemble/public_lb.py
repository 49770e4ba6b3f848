"""Public-leaderboard scores beside the nested CV that chose them (``make lb``): can the CV be trusted?

A score is recorded against the exact file it was given for: the sha256 of the submission file, the candidate
that wrote it (from the stored ensemble, :mod:`pipeline.ensemble.fitted`), its CV and nested CV, and its runs'
config hashes. The records live in the run store (``runs/<competition>/_ensemble/public_lb.json``), which no
stage prunes; ``make ensemble`` shows each recorded score in the leaderboard's ``public LB`` column on the row
whose file has that content, and redraws the plot of nested CV against public LB over every recorded submission.
"""

from __future__ import annotations

import hashlib
import math
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import Config
from pipeline.core import io
from pipeline.core.errors import PipelineError
from pipeline.ensemble.fitted import FittedError, fitted_dir, load_fitted

#: The records, in the run store beside the fitted blends.
LB_FILE = "public_lb.json"
#: The plot, in ``submissions/<competition>/``.
LB_PLOT = "cv_vs_public_lb.png"


class PublicScoreError(PipelineError, ValueError):
    """A public score that cannot be recorded: no such submission, no stored ensemble, not a number."""


def records_path(config: Config) -> Path:
    return fitted_dir(config).parent / LB_FILE


def read_public_scores(config: Config) -> list[dict]:
    """Every recorded public score, oldest first (empty when none).

    Raises
    ------
    PublicScoreError
        If the records file is damaged.
    """
    path = records_path(config)
    if not path.is_file():
        return []
    try:
        entries = io.read_json(path)["submissions"]
    except (ValueError, KeyError, TypeError) as exc:
        raise PublicScoreError(f"{path} is damaged ({exc}); fix or delete it (it holds make lb records only)") from None
    return list(entries)


def frame_sha256(frame: pd.DataFrame) -> str:
    """The sha256 of a submission frame as :class:`~pipeline.ensemble.submissions.SubmissionWriter` writes it."""
    return hashlib.sha256(frame.to_csv(index=False).encode("utf-8")).hexdigest()


def record_public_score(config: Config, score: float, submission: str | None = None) -> dict:
    """Record ``score`` as the public-LB score of a submission file of the last ``make ensemble``.

    Parameters
    ----------
    config : Config
    score : float
        The public leaderboard's score, in the competition metric's units.
    submission : str, optional
        A file in ``submissions/<competition>/`` (``submission.csv`` by default, the chosen one) or the
        name of a candidate of the last ensemble (``optuna``, ``single-<run>``).

    Returns
    -------
    dict
        The record: file, sha256, candidate, kind, cv, nested_cv, public_lb, runs, recorded_at.

    Raises
    ------
    PublicScoreError
        A score that is not a finite number; a submission that is not there (the message lists the files);
        a file that no stored candidate wrote (edited by hand, or from an older ensemble).
    """
    try:
        score = float(score)
    except (TypeError, ValueError):
        raise PublicScoreError(f"SCORE={score!r} is not a number; give the public leaderboard's score") from None
    if not math.isfinite(score):
        raise PublicScoreError(f"SCORE={score} is not a finite number; give the public leaderboard's score")
    folder = config.submissions_dir
    name = submission or "submission.csv"
    try:
        record = load_fitted(config, "submission" if name == "submission.csv" else name.removesuffix(".csv"))
        file = "submission.csv" if name == "submission.csv" else record.submission_file
    except FittedError as exc:
        record, file = None, name
        if not (folder / name).is_file():
            there = sorted(p.name for p in folder.glob("*.csv")) if folder.is_dir() else []
            raise PublicScoreError(
                f"SUBMISSION={name}: no such file in {folder} nor candidate of the last ensemble ({exc}); "
                f"files there: {', '.join(there) or 'none (run make ensemble first)'}"
            ) from None
    if file is None or not (folder / file).is_file():
        raise PublicScoreError(f"SUBMISSION={name}: the last ensemble wrote no file for it in {folder}")
    sha = io.file_sha256(folder / file)
    if record is None or record.submission_file is None:
        record = _record_for_file(config, sha)
    entry = {
        "file": file,
        "sha256": sha,
        "candidate": record.name,
        "kind": record.kind,
        "cv": record.cv,
        "nested_cv": record.nested_cv,
        "public_lb": score,
        "runs": [f"{run.name}:{run.config_hash}" for run in record.runs],
        "recorded_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    entries = [e for e in read_public_scores(config) if e.get("sha256") != sha]  # a file re-scored: the new score
    io.write_json(records_path(config), {"submissions": entries + [entry]})
    return entry


def _record_for_file(config: Config, sha: str):
    """The stored candidate whose submission file has this content (a file given by its name)."""
    index_path = fitted_dir(config) / "index.json"
    try:
        names = list(io.read_json(index_path)["candidates"])
    except (OSError, ValueError, KeyError, TypeError):
        raise PublicScoreError(f"no stored ensemble in {fitted_dir(config)}: run make ensemble first") from None
    for name in names:
        record = load_fitted(config, name)
        path = config.submissions_dir / (record.submission_file or "")
        if record.submission_file and path.is_file() and io.file_sha256(path) == sha:
            return record
    raise PublicScoreError(
        "no candidate of the last ensemble wrote this file as it is now (edited by hand, or from an older "
        "ensemble): rerun make ensemble and record the score of the file it writes"
    )


def rank_correlation(entries: list[dict]) -> float | None:
    """Spearman's correlation of nested CV and public LB over the records; None under 3 records."""
    if len(entries) < 3:
        return None
    from scipy.stats import spearmanr

    value = spearmanr([e["nested_cv"] for e in entries], [e["public_lb"] for e in entries]).statistic
    return None if not np.isfinite(value) else float(value)


def public_lb_figure(entries: list[dict], metric_name: str):
    """Nested CV (x) against public LB (y), one point per recorded submission, the rank correlation in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 5))
    x = [e["nested_cv"] for e in entries]
    y = [e["public_lb"] for e in entries]
    ax.scatter(x, y)
    for e in entries:
        ax.annotate(e["candidate"], (e["nested_cv"], e["public_lb"]), fontsize=8, xytext=(3, 3),
                    textcoords="offset points")
    low, high = min(x + y), max(x + y)
    ax.plot([low, high], [low, high], linestyle=":", color="grey", label="public LB = nested CV")
    rho = rank_correlation(entries)
    ax.set_xlabel(f"nested CV ({metric_name})")
    ax.set_ylabel(f"public LB ({metric_name})")
    ax.set_title(f"{len(entries)} submissions; Spearman rank correlation "
                 + (f"{rho:.2f}" if rho is not None else "needs 3 or more"))
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
