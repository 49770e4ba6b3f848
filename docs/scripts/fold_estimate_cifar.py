"""Issue 29's check of the fold-model estimate on the CIFAR-10 dev set's hidden labels, from stored predictions only.

For each stored run and for the chosen blend: keep j of the 5 fold models (every subset of that size, averaged), and
compare the estimated change in accuracy (:class:`pipeline.export.budget.ScoreEstimator`, as ``make export BUDGET=``
computes it) with the change measured on ``solution.csv``. No forward pass: the fold models' stored test predictions.

    PYTHONPATH=. python docs/scripts/fold_estimate_cifar.py        (under a minute)
"""

from __future__ import annotations

import itertools
import sys

import numpy as np
import pandas as pd

from pipeline.config import load_config
from pipeline.data import load_competition
from pipeline.ensemble.fitted import load_fitted, reduce_record
from pipeline.export.budget import Piece, ScoreEstimator, full_plan, load_run_predictions
from pipeline.store import RunLayout, read_meta
from pipeline.task.metrics import get_metric

CONFIG = "configs/bench/cifar10_dev.yaml"


def main() -> int:
    config = load_config(CONFIG)
    competition = load_competition(config, check_image_files=False)
    metric = get_metric(config.competition.metric)
    solution = pd.read_csv(config.data_dir / "solution.csv", dtype={"id": str}).set_index("id")
    classes = list(competition.classes)
    truth = np.array([classes.index(c) for c in solution.loc[list(competition.test_ids), "label"]])
    record = reduce_record(load_fitted(config, "submission"))
    names = sorted({p.name for p in config.runs_dir.iterdir() if (p / "meta.json").is_file()}
                   - {"convnext", "efficientnet", "resnet_default", "lite0_96_strong", "lite0_96_strong_peer"})

    def load(name):
        layout = RunLayout(config.runs_dir / name)
        return load_run_predictions(layout, read_meta(layout), len(competition.y), len(competition.test_ids))

    cases = [(f"single {n}", [load(n)], None) for n in names]
    cases.append((f"{record.name} (chosen)", [load(r.name) for r in record.runs], record.blend.state()))
    print(f"{'candidate':<28} {'fold models':>11} {'estimated':>10} {'measured':>10}")
    for label, runs, state in cases:
        estimator = ScoreEstimator(runs, state, competition.y, metric, competition.task)
        full = full_plan(runs)
        measured_full = metric(truth, estimator.test_pred(full))
        for j in (4, 3, 2, 1):
            estimated, measured = [], []
            for kept in itertools.combinations(range(5), j):  # the same j kept in every run of a blend
                plan = {name: Piece(piece.views, kept) for name, piece in full.items()}
                estimated.append(estimator.in_metric_units(estimator.gain(plan)))
                measured.append(metric(truth, estimator.test_pred(plan)) - measured_full)
            print(f"{label:<28} {j:>11} {np.mean(estimated):>+10.4f} {np.mean(measured):>+10.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
