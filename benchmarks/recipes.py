"""Ablation of training recipes on a competition with a hidden solution (``make bench-recipes``).

Usage::

    python -m benchmarks.recipes --config configs/bench/cifar10_dev.yaml \\
        --rows configs/bench/recipes_cifar.yaml [--only default,ema] [--out bench/recipes.json]

The rows file is a YAML list; each row is one run of the real ``train`` command::

    - name: ema                  # the run's name (NAME=), unique per row
      model: test_resnet         # MODEL=
      preset: strong             # optional: --preset
      folds: [0]                 # optional: the folds to train (default: the file's `folds`, else [0])
      set: {train.ema: true}     # optional: ARGS key=value settings

Each row trains through ``python -m pipeline train`` in its own process (the run store resumes
or skips finished work, so a rerun only scores). A row's score is its validation score on the
folds it trained (the fold score for one fold, the OOF CV for all); its private score is the
competition metric of those folds' test predictions (averaged over the folds trained) against
``competition.solution``. Printed: the table (name, settings, epochs, fold/CV score, private
score, training seconds); written: the same as JSON.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from pipeline.config import ConfigError, load_config, read_yaml
from pipeline.core.errors import PipelineError
from pipeline.core.io import safe_name, write_json
from pipeline.core.report import format_table
from pipeline.data import load_competition
from pipeline.store import RunLayout
from pipeline.task.metrics import get_metric
from pipeline.store.views import read_fold_predictions

ROW_KEYS = {"name", "model", "preset", "folds", "set", "note"}


def read_rows(path: Path) -> list[dict]:
    """The rows of a rows file, checked: a list of mappings with known keys and unique names.

    Parameters
    ----------
    path : Path
        A YAML file holding ``rows:`` (a list) and optionally ``folds:`` (the default folds).

    Returns
    -------
    list of dict
        One per row, with ``folds`` filled in.
    """
    if not path.is_file():
        raise ConfigError(f"ROWS={path} does not exist; pass a rows file such as configs/bench/recipes_cifar.yaml")
    data = read_yaml(path)
    rows = data.get("rows") if isinstance(data, dict) else None
    if not isinstance(rows, list) or not rows:
        raise ConfigError(f"{path}: expected 'rows:' holding a list of runs (name, model, optional preset/folds/set)")
    default_folds = data.get("folds", [0])
    seen: set[str] = set()
    checked = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or "name" not in row or "model" not in row:
            raise ConfigError(f"{path}: row {i} needs at least 'name' and 'model', got {row!r}")
        unknown = sorted(set(row) - ROW_KEYS)
        if unknown:
            raise ConfigError(f"{path}: row {row['name']!r} has unknown keys {unknown}; known: {sorted(ROW_KEYS)}")
        safe_name(str(row["name"]), "row name")
        if row["name"] in seen:
            raise ConfigError(f"{path}: row name {row['name']!r} appears twice; names are run names and must differ")
        seen.add(row["name"])
        checked.append({**row, "folds": list(row.get("folds", default_folds)), "set": dict(row.get("set") or {})})
    return checked


def train_command(config_path: str, row: dict) -> list[str]:
    """The ``python -m pipeline train`` command line of a row."""
    command = [sys.executable, "-m", "pipeline", "train", "--config", config_path, "--model", str(row["model"]),
               "--name", str(row["name"]), "--folds", ",".join(str(f) for f in row["folds"])]
    if row.get("preset"):
        command += ["--preset", str(row["preset"])]
    command += [
        f"{key}={json.dumps(value) if not isinstance(value, str) else value}" for key, value in row["set"].items()
    ]
    return command


def score_row(layout: RunLayout, folds: list[int], y_hidden: np.ndarray, metric) -> dict:
    """Validation and private scores of a row's folds, read from its run folder.

    The validation score is the fold's score (one fold) or the mean of the folds' scores;
    the private score is the metric of the mean of those folds' test predictions.
    """
    infos = [json.loads(layout.fold_info(f).read_text()) for f in folds]
    tests = []
    for fold in folds:
        rows, probs = read_fold_predictions(layout, fold, "test")
        tests.append(probs[np.argsort(rows)])  # keyed by row: the sample submission's order
    test = np.mean(tests, axis=0)
    return {
        "score": float(np.mean([i["score"] for i in infos])),
        "score_plain": float(np.mean([i["score_plain"] for i in infos])),
        "private": float(metric(y_hidden, test)),
        "epochs": int(max(i["epochs_run"] for i in infos)),
        "train_seconds": float(sum(i["train_seconds"] for i in infos)),
    }


def main(argv: list[str] | None = None) -> int:
    """``make bench-recipes``: the pipeline's own errors end it as the CLI's do, ``error: ...`` and exit code 2."""
    try:
        return run(argv)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def run(argv: list[str] | None = None) -> int:
    """Parse the arguments, check the config and every row before training, train and score each row."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="a competition config whose competition.solution exists")
    parser.add_argument("--rows", required=True, help="the rows file (YAML)")
    parser.add_argument("--only", default="", help="comma-separated row names to run (default: all)")
    parser.add_argument("--out", default="bench/recipes.json")
    args = parser.parse_args(argv)

    rows = read_rows(Path(args.rows))  # first: a bad rows file is reported before the competition is read
    config = load_config(args.config)
    competition = load_competition(config, check_image_files=False)
    y_hidden = competition.solution_labels()
    if y_hidden is None:
        raise ConfigError(
            f"{args.config}: the ablation scores the private leaderboard, so competition.solution must "
            "name the hidden labels file (e.g. solution: solution.csv)"
        )
    metric = get_metric(config.competition.metric)
    if args.only:
        wanted = set(args.only.split(","))
        rows = [r for r in rows if r["name"] in wanted]
    results = []
    for row in rows:
        started = time.perf_counter()
        done = subprocess.run(train_command(args.config, row), check=False)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            print(f"{row['name']}: train failed (exit {done.returncode}); see its log above", file=sys.stderr)
            continue
        scores = score_row(RunLayout(config.runs_dir / row["name"]), row["folds"], y_hidden, metric)
        results.append(
            {
                "name": row["name"],
                "model": row["model"],
                "preset": row.get("preset"),
                "settings": row["set"],
                "folds": row["folds"],
                "wall_seconds": round(wall, 1),
                **scores,
            }
        )
    table = [
        {
            "row": r["name"],
            "preset": r["preset"] or "",
            "settings": " ".join(f"{k.removeprefix('train.')}={v}" for k, v in r["settings"].items()),
            "epochs": r["epochs"],
            config.competition.metric: round(r["score"], 4),
            "private LB": round(r["private"], 4),
            "train s": round(r["train_seconds"]),
        }
        for r in results
    ]
    if table:
        print(
            format_table(
                table, title=f"recipes on {config.competition.name} (private LB: {config.competition.solution})"
            )
        )
    write_json(Path(args.out), {"config": args.config, "rows": results})
    return 0 if len(results) == len(rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
