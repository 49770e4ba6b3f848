"""Issue 29's measurement: the CIFAR-10 dev set's chosen ensemble exported at full, half and a quarter of its time.

For each budget: ``make export`` (the plan, the estimated change, the projected time: forward passes, each fold
model's loading and decoding, the start), then the export's own ``predict.py`` on the 3,000 test images, timed, scored
on the hidden ``solution.csv``. Prints one row per budget; writes a JSON beside.

    PYTHONPATH=. python docs/scripts/budget_cifar.py --out bench/budget      (about 30 min on the 2-core CPU machine)

Needs ``data/cifar10-dev`` and the trained runs of ``configs/bench/cifar10_dev.yaml`` (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from pipeline.export.cost import planning_costs, projected_seconds

CONFIG = "configs/bench/cifar10_dev.yaml"
DATA = Path("data/cifar10-dev")


def export(out: Path, budget: str | None, method: str) -> dict:
    command = [sys.executable, "-m", "pipeline", "export", "--config", CONFIG, "--out", str(out), "--force",
               "--method", method]
    if budget is not None:
        command += ["--budget", budget, "--test-images", "3000"]
    started = time.perf_counter()
    log = subprocess.run(command, capture_output=True, text=True)
    if log.returncode:
        raise SystemExit(log.stdout + log.stderr)
    print(log.stdout + log.stderr, flush=True)
    manifest = json.loads((out / "manifest.json").read_text())
    costs = pd.read_csv(out / "cost.csv")
    return {"export_seconds": time.perf_counter() - started, "manifest": manifest,
            "projected_seconds": projected_seconds(planning_costs(costs), 3000, manifest["startup_seconds"]),
            "pieces": len(costs)}


def predict(out: Path) -> dict:
    submission = out.parent / f"{out.name}-submission.csv"
    started = time.perf_counter()
    log = subprocess.run([sys.executable, str(out / "predict.py"), "--images", str(DATA / "test"),
                          "--sample-submission", str(DATA / "sample_submission.csv"), "--out", str(submission),
                          "--no-progress"], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if log.returncode:
        raise SystemExit(log.stdout + log.stderr)
    got = pd.read_csv(submission, dtype={"id": str})
    truth = pd.read_csv(DATA / "solution.csv", dtype={"id": str})
    merged = truth.merge(got, on="id", suffixes=("_true", "_pred"))
    return {"predict_seconds": seconds, "private": float((merged["label_true"] == merged["label_pred"]).mean()),
            "predict_log": log.stderr[-2000:]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/budget")
    parser.add_argument("--method", default="submission")
    args = parser.parse_args()
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    full = export(root / "full", None, args.method)
    full.update(predict(root / "full"))
    rows.append({"budget": "full", "budget_seconds": None, **full})
    for share in ("50%", "25%"):  # of the whole ensemble's time as each export times it (the CPU's speed drifts)
        row = export(root / f"share{share[:-1]}", share, args.method)
        row.update(predict(root / f"share{share[:-1]}"))
        rows.append({"budget": share, "budget_seconds": row["manifest"]["budget"]["seconds"], **row})
    for row in rows:
        plan = row["manifest"].get("budget") or {}
        print(f"{row['budget']:>12}  pieces {row['pieces']:3d}  projected {row['projected_seconds']:7.1f}s  "
              f"actual {row['predict_seconds']:7.1f}s  "
              f"({row['predict_seconds'] / row['projected_seconds'] - 1:+.1%})  "
              f"private {row['private']:.4f} ({row['private'] - rows[0]['private']:+.4f})  "
              f"estimated {plan.get('estimated_change', 0.0):+.4f}  "
              f"nested {row['manifest']['expected_cv']['nested_cv']}")
    (root / "budget_cifar.json").write_text(json.dumps(rows, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
