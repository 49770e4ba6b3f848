"""The zoo's leaderboard and its offline report: Pareto front, learning curves, OOF error correlation, shortlist.

Reads what the screen left (``screen.json`` records and the screening runs' fold predictions);
trains nothing.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import TrainConfig
from pipeline.core import io
from pipeline.core.report import format_seconds, format_table
from pipeline.store import RunLayout
from pipeline.task.tasks import get_task
from pipeline.zoo.plan import ScreenPlan


def leaderboard(records: list[dict], metric_name: str) -> pd.DataFrame:
    """One row per architecture, best screening CV first, failed ones last."""
    from pipeline.task.metrics import get_metric

    metric = get_metric(metric_name)
    rows = []
    for r in records:
        ok = r["status"] == "ok"
        rows.append({
            "architecture": r["name"], "model": r.get("timm_name", ""), "cv": r["cv"] if ok else math.nan,
            "params_m": r["params"] / 1e6 if ok else math.nan, "gflops": r["gflops"] if ok else math.nan,
            "image_size": f"{r['screen_image_size']}/{r['full_image_size']}" if ok else "",
            "train_ips": r["train_ips"] if ok else math.nan, "infer_ips": r["infer_ips"] if ok else math.nan,
            "peak_memory_mb": r["peak_memory_mb"] if ok else math.nan,
            "wall_seconds": r["wall_seconds"] if ok else math.nan,
            "status": "ok" if ok else "failed", "error": r.get("error", ""),
        })
    board = pd.DataFrame(rows)
    sign = -1 if metric.greater_is_better else 1
    board["_order"] = np.where(board["status"] == "ok", sign * board["cv"].fillna(0), np.inf)
    return board.sort_values(["_order", "architecture"]).drop(columns="_order").reset_index(drop=True)


def format_leaderboard(board: pd.DataFrame, metric_name: str) -> str:
    rows = []
    for r in board.to_dict("records"):
        ok = r["status"] == "ok"
        rows.append(
            {
                "architecture": r["architecture"],
                f"CV ({metric_name})": f"{r['cv']:.4f}" if ok else "-",
                "params (M)": f"{r['params_m']:.1f}" if ok else "-",
                "GFLOPs": f"{r['gflops']:.2f}" if ok else "-",
                "size screen/full": r["image_size"] or "-",
                "train img/s": f"{r['train_ips']:.0f}" if ok else "-",
                "infer img/s": f"{r['infer_ips']:.0f}" if ok else "-",
                "peak MB": f"{r['peak_memory_mb']:.0f}" if ok else "-",
                "wall": format_seconds(r["wall_seconds"]) if ok else "-",
                "status": "ok" if ok else f"failed: {r['error'][:60]}",
            }
        )
    return format_table(rows, "zoo leaderboard (screening CV on a subset; throughput at the screening size)")


def pareto_front(score: np.ndarray, speed: np.ndarray, greater_is_better: bool = True) -> np.ndarray:
    """Boolean mask of the points no other point beats on both score and speed (higher speed is better)."""
    score = np.asarray(score, dtype=float) * (1 if greater_is_better else -1)
    speed = np.asarray(speed, dtype=float)
    front = np.ones(len(score), dtype=bool)
    for i in range(len(score)):
        dominated = (score >= score[i]) & (speed >= speed[i]) & ((score > score[i]) | (speed > speed[i]))
        front[i] = not dominated.any()
    return front


def oof_residual_correlation(plan: ScreenPlan, names: list[str]) -> pd.DataFrame:
    """Correlation of the architectures' OOF errors (probabilities minus the one-hot truth) on the screened rows.

    Two strong models agree on easy rows whatever they are; the errors show whether they
    fail on the same rows, which is what decides whether averaging them helps.
    """
    residuals = {}
    for name in names:
        parts = []
        for fold in plan.folds:
            frame = pd.read_parquet(RunLayout(plan.screen_config.runs_dir / name).fold_predictions(fold, "valid"))
            parts.append(frame)
        frame = pd.concat(parts).sort_values("row")
        probs = frame.drop(columns="row").to_numpy(dtype=np.float64)
        truth = get_task(plan.competition.task).truth(plan.competition.y[frame["row"].to_numpy()], probs.shape[1])
        residuals[name] = (probs - truth).ravel()
    return pd.DataFrame(residuals).corr()


def _oof_probs(plan: ScreenPlan, name: str) -> tuple[np.ndarray, np.ndarray]:
    frame = pd.concat(
        [
            pd.read_parquet(RunLayout(plan.screen_config.runs_dir / name).fold_predictions(f, "valid"))
            for f in plan.folds
        ]
    )
    frame = frame.sort_values("row")
    return frame["row"].to_numpy(), frame.drop(columns="row").to_numpy(dtype=np.float64)


def shortlist(plan: ScreenPlan, board: pd.DataFrame) -> list[dict]:
    """Best accuracy; best accuracy per cost (the fastest within the tolerance of the best); most complementary pair."""
    from pipeline.task.metrics import get_metric

    metric = get_metric(plan.config.competition.metric)
    ok = board[board["status"] == "ok"].reset_index(drop=True)
    if ok.empty:
        return []
    best = ok.iloc[0]
    picks = [{"pick": "best accuracy", "architectures": best["architecture"], "why": f"CV {best['cv']:.4f}"}]
    tolerance = plan.zoo.screen.accuracy_tolerance
    close = ok[np.abs(ok["cv"] - best["cv"]) <= tolerance]
    fastest = close.sort_values("infer_ips", ascending=False).iloc[0]
    picks.append(
        {
            "pick": "best accuracy per cost",
            "architectures": fastest["architecture"],
            "why": f"CV {fastest['cv']:.4f} (within {tolerance} of the best) at {fastest['infer_ips']:.0f} img/s, "
            f"{fastest['infer_ips'] / best['infer_ips']:.1f}x the best one's speed",
        }
    )
    names = ok["architecture"].tolist()
    if len(names) >= 2:
        probs = {n: _oof_probs(plan, n) for n in names}
        rows = probs[names[0]][0]
        y = plan.competition.y[rows]
        corr = oof_residual_correlation(plan, names)
        scored = []
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                blend = (probs[a][1] + probs[b][1]) / 2
                scored.append((metric(y, blend), -corr.loc[a, b] if metric.greater_is_better else corr.loc[a, b], a, b))
        scored.sort(reverse=metric.greater_is_better)
        score, _, a, b = scored[0]
        picks.append(
            {
                "pick": "most complementary pair",
                "architectures": f"{a} + {b}",
                "why": f"their average scores {score:.4f} on the screened rows; error correlation {corr.loc[a, b]:.2f}",
            }
        )
    return picks


def _figures(plan: ScreenPlan, board: pd.DataFrame, records: list[dict]) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.task.metrics import get_metric

    metric = get_metric(plan.config.competition.metric)
    ok = board[board["status"] == "ok"]
    figures: dict[str, Path] = {}
    if ok.empty:
        return figures
    front_mask = pareto_front(ok["cv"], ok["infer_ips"], metric.greater_is_better)
    for key, column, label, log in (
        ("pareto_throughput", "infer_ips", "inference images/s (screening size)", True),
        ("pareto_params", "params_m", "parameters (millions)", True),
    ):
        fig, ax = plt.subplots(figsize=(7, 5))
        ax.scatter(ok[column], ok["cv"], c=np.where(front_mask, "tab:red", "tab:blue"), zorder=3)
        for _, r in ok.iterrows():
            ax.annotate(r["architecture"], (r[column], r["cv"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
        if key == "pareto_throughput":
            front = ok[front_mask].sort_values(column)
            ax.step(front[column], front["cv"], where="pre", color="tab:red", alpha=0.6, label="Pareto front")
            ax.legend()
        ax.set_xscale("log" if log else "linear")
        ax.set_xlabel(label)
        ax.set_ylabel(f"screening CV ({metric.name})")
        ax.set_title(f"{plan.config.competition.name}: accuracy against {label.split(' (')[0]}")
        ax.grid(alpha=0.3)
        figures[key] = _save_figure(fig, plan.out_dir / f"{key}.png")
    fig, ax = plt.subplots(figsize=(7, 5))
    for r in records:
        if r["status"] != "ok":
            continue
        history = (
            r["history"][str(r["folds"][0])]
            if str(r["folds"][0]) in r["history"]
            else next(iter(r["history"].values()))
        )
        ax.plot([h["epoch"] for h in history], [h["valid_score"] for h in history], marker="o", label=r["name"])
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"validation {metric.name} (fold {plan.folds[0]})")
    ax.set_title("learning curves")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    figures["learning_curves"] = _save_figure(fig, plan.out_dir / "learning_curves.png")
    if len(ok) >= 2:
        corr = oof_residual_correlation(plan, ok["architecture"].tolist())
        fig, ax = plt.subplots(figsize=(1.0 + 0.5 * len(corr), 0.6 + 0.5 * len(corr)))
        image = ax.imshow(corr.to_numpy(), vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set_xticks(range(len(corr)), corr.columns, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(len(corr)), corr.index, fontsize=8)
        for i in range(len(corr)):
            for j in range(len(corr)):
                ax.text(j, i, f"{corr.iat[i, j]:.2f}", ha="center", va="center", fontsize=6)
        fig.colorbar(image, ax=ax, fraction=0.046)
        ax.set_title("correlation of OOF errors (lower = more diverse)")
        figures["oof_correlation"] = _save_figure(fig, plan.out_dir / "oof_correlation.png")
    return figures


def _save_figure(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    io.write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return path


def write_report(plan: ScreenPlan, board: pd.DataFrame, records: list[dict]) -> dict[str, Path]:
    """Write leaderboard.csv/.md, the figures and report.html (self-contained) under the zoo folder."""
    metric_name = plan.config.competition.metric
    text = format_leaderboard(board, metric_name)
    picks = shortlist(plan, board)
    figures = _figures(plan, board, records)
    out = {"csv": io.write_csv(plan.out_dir / "leaderboard.csv", board)}
    md = (
        [
            f"# Zoo screen: {plan.config.competition.name}",
            "",
            f"{len(plan.competition.y)} training rows, fold(s) {plan.folds}, {plan.zoo.screen.epochs} epochs; "
            f"throughput measured on {_device_name()} at the screening size.",
            "",
            "```",
            text,
            "```",
            "",
            "## Shortlist",
            "",
        ]
        + [f"- **{p['pick']}**: {p['architectures']} ({p['why']})" for p in picks]
        + [""]
    )
    md += [f"![{key}]({path.name})" for key, path in figures.items()]
    out["md"] = io.write_text(plan.out_dir / "leaderboard.md", "\n".join(md) + "\n")
    images = "".join(
        f'<figure><img alt="{key}" src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}">'
        f"<figcaption>{html.escape(key.replace('_', ' '))}</figcaption></figure>"
        for key, path in figures.items()
    )
    picks_html = "".join(
        f"<li><b>{html.escape(p['pick'])}</b>: {html.escape(p['architectures'])} ({html.escape(p['why'])})</li>"
        for p in picks
    )
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>zoo: "
        f"{html.escape(plan.config.competition.name)}</title>"
        "<style>body{font-family:sans-serif;margin:2em;max-width:1100px}pre{background:#f6f6f6;padding:1em;overflow:auto}"
        "figure{display:inline-block;margin:0.5em}img{max-width:520px}</style></head><body>"
        f"<h1>Zoo screen: {html.escape(plan.config.competition.name)}</h1><pre>{html.escape(text)}</pre>"
        f"<h2>Shortlist</h2><ul>{picks_html}</ul><h2>Figures</h2>{images}</body></html>"
    )
    out["html"] = io.write_text(plan.out_dir / "report.html", page)
    out.update(figures)
    return out


def _device_name() -> str:
    from pipeline.train.runtime import select_runtime
    from pipeline.train.timing import device_description

    return device_description(select_runtime(TrainConfig(), images_in_memory=True))
