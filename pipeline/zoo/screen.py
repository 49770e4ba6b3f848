"""Screen many architectures on the user's data, small and fast: ``make zoo``; then ``make zoo-promote TOP=K``.

Each architecture is a recipe (``configs/recipes/<name>.yaml``: model, image size,
batch size, learning rate), or a model alias/timm name with the competition's
defaults. The screen trains it on a stratified subset of the training rows, at a
small image size, for a few epochs, on the first fold(s), with the normal train
stage (so it resumes after a crash), in its own process (so one architecture that
runs out of memory or cannot take the input size is recorded and the screen goes
on). Every architecture is then timed the same way: parameters, GFLOPs at its full
input size, training and inference images/s at the screening size (warm-up
excluded, synchronised on a GPU) and peak memory.

Outputs, under ``<output_dir>/zoo/<competition>/``: ``leaderboard.csv`` and
``leaderboard.md``, ``report.html`` (opens offline: the figures are embedded) and
the figures as PNG files, one ``<architecture>/screen.json`` per architecture.
The screening runs themselves live in the store under the competition name
``<competition>.zoo``, apart from the real runs.
"""


from __future__ import annotations

import argparse
import json
import logging
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.config import Config, ConfigError, TrainConfig, load_config, resolve_train_config
from pipeline.core import io
from pipeline.core.report import configure_logging, format_seconds
from pipeline.store import RunLayout
from pipeline.zoo.plan import DEFAULT_ZOO, ScreenPlan, load_zoo, make_plan
from pipeline.tracking import track
from pipeline.zoo.report import leaderboard, write_report

log = logging.getLogger(__name__)


def measure_cost(model_name: str, n_classes: int, screen_size: int, full_size: int, batch_size: int, steps: int,
                 model_kwargs: dict | None = None, small_input: bool = False) -> dict:
    """Parameters, GFLOPs at the full input size, and training/inference images/s at the screening size.

    Every architecture is timed the same way, with ``make bench``'s own measurements: a
    synthetic batch of ``batch_size``, two warm-up steps that are not counted, then
    ``steps`` timed steps of the training step the folds use (AMP and channels_last on a
    GPU, synchronised before each clock read).
    """
    import torch

    from pipeline.train.runtime import autocast, select_runtime, to_device
    from pipeline.train.steps import make_optimizer
    from pipeline.train.timing import forward_flops, step_rate, synchronize
    from pipeline.vision.models import count_parameters, create_model

    cfg = TrainConfig()
    runtime = select_runtime(cfg, images_in_memory=True)
    model = create_model(model_name, n_classes, False, small_input=small_input, **(model_kwargs or {}))
    params = count_parameters(model)
    model.to(runtime.device)
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    flops = forward_flops(model, full_size, runtime)
    optimizer = make_optimizer(model, cfg, runtime)
    scaler = torch.amp.GradScaler("cuda", enabled=runtime.amp_dtype == torch.float16)
    train_ips = step_rate(model, optimizer, scaler, torch.nn.CrossEntropyLoss(), runtime, batch_size, screen_size,
                          n_classes, steps, warmup=2)
    x = to_device(torch.randn(batch_size, 3, screen_size, screen_size), runtime)
    model.eval()
    with torch.inference_mode(), autocast(runtime):
        for k in range(2 + steps):
            if k == 2:  # the clock starts after two warm-up passes
                synchronize(runtime)
                started = time.perf_counter()
            model(x)
        synchronize(runtime)
    infer_ips = batch_size * steps / (time.perf_counter() - started)
    return {"params": params, "gflops": (flops or math.nan) / 1e9, "train_ips": train_ips, "infer_ips": infer_ips}


def peak_memory_mb() -> tuple[float, str]:
    """Peak memory of this process: GPU memory allocated on a GPU, else the process's maximum RSS."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20, "gpu"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cpu rss"


def screen_one(plan: ScreenPlan, name: str, extra: dict[str, Any]) -> dict:
    """Train one architecture on the screening folds and time it; return its ``screen.json`` record."""
    from pipeline.train import run_train
    from pipeline.vision.models import model_family, resolve_model_name

    started = time.perf_counter()
    overrides, screen_size, full_size = plan.overrides(name, extra)
    # named as the zoo names it (a preset would add -<preset>): the record below reads the run by this name
    meta = run_train(plan.screen_config, name, plan.folds, overrides=overrides, competition=plan.competition, name=name)
    folds = {int(k): v for k, v in meta.folds.items()}
    _, cfg = resolve_train_config(plan.config, name, overrides)
    cost = measure_cost(cfg.model, len(plan.competition.classes), screen_size, full_size,
                        plan.zoo.screen.timing_batch_size, plan.zoo.screen.timing_steps, cfg.model_kwargs,
                        cfg.small_input)
    memory, memory_kind = peak_memory_mb()
    layout = RunLayout(plan.screen_config.runs_dir / name)
    histories = {f: layout.read_fold_info(f)["history"] for f in folds}
    return {
        "name": name, "status": "ok", "model": cfg.model, "timm_name": resolve_model_name(cfg.model),
        "family": model_family(cfg.model), "metric": plan.config.competition.metric,
        "cv": float(np.mean([folds[f]["score"] for f in plan.folds])), "folds": plan.folds,
        "screen_image_size": screen_size, "full_image_size": full_size, "epochs": plan.zoo.screen.epochs,
        "rows": len(plan.competition.y), **cost, "peak_memory_mb": memory, "memory_kind": memory_kind,
        "train_seconds": float(sum(folds[f]["train_seconds"] for f in plan.folds)),
        "wall_seconds": time.perf_counter() - started, "history": histories,
        "settings_hash": plan.settings_hash(name, extra),
    }


def _worker(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)
    zoo = load_zoo(args.zoo, config)
    plan = make_plan(config, zoo)
    extra = dict(zoo.entries())[args.name]
    record_path = plan.out_dir / args.name / "screen.json"
    try:
        record = screen_one(plan, args.name, extra)
    except Exception as exc:  # noqa: BLE001 - any failure of one architecture is recorded; the screen goes on
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        io.write_json(
            record_path,
            {
                "name": args.name,
                "status": "failed",
                "error": f"{type(exc).__name__}: {message}"[:300],
                "settings_hash": plan.settings_hash(args.name, extra),
            },
        )
        raise
    io.write_json(record_path, record)
    return 0


# -- the screen ---------------------------------------------------------------------------------------


def run_screen_process(config_path: Path, zoo_path: Path, name: str, overrides: dict[str, Any], log_path: Path) -> int:
    """Screen one architecture in a child process (its crash, even out of memory, is isolated); its exit code.

    The zoo's job: wherever the executor runs it, the child writes ``screen.json`` and ``screen.log``.
    """
    # the coordinator's overrides travel as JSON: parsed once at the command line, never re-parsed from strings
    command = [
        sys.executable,
        "-m",
        "pipeline.zoo",
        "--config",
        str(config_path),
        "--zoo",
        str(zoo_path),
        "--name",
        name,
        "--overrides-json",
        json.dumps(overrides),
    ]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        return subprocess.run(
            command, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1")
        ).returncode


def _exit_reason(code: int, log_path: Path) -> str:
    if code < 0:
        reason = f"killed by signal {-code}" + (" (out of memory?)" if code == -9 else "")
    else:
        reason = f"exit code {code}"
    lines = (
        [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
        if log_path.is_file()
        else []
    )
    return f"{reason}: {lines[-1][:200]}" if lines else reason


def run_zoo(
    config_path: str | Path,
    zoo_path: str | Path = DEFAULT_ZOO,
    overrides: dict[str, Any] | None = None,
    executor: str | None = None,
) -> tuple[pd.DataFrame, int]:
    """Screen every architecture of a zoo file, skipping those already screened with the same settings.

    Parameters
    ----------
    config_path, zoo_path : path
    overrides : dict, optional
        Parsed ``ARGS``.
    executor : str, optional
        Where the screens run (:mod:`pipeline.core.executors`); default the config's ``executor.name``.

    Returns
    -------
    (leaderboard, n_failed): the leaderboard sorted by screening CV (failed ones last).
    """
    from pipeline.core.executors import Job, get_executor

    config = load_config(config_path, overrides)
    zoo = load_zoo(zoo_path, config)
    plan = make_plan(config, zoo)
    entries = zoo.entries()
    runner = get_executor(executor or config.executor.name, config.executor.settings())
    log.info(
        f"zoo: {len(entries)} architectures on {len(plan.competition.y)} of the training rows, "
        f"{zoo.screen.epochs} epochs, fold(s) {plan.folds} of {config.folds.n_splits}, on {runner.describe()}; "
        f"logs in {plan.out_dir}/<name>/screen.log"
    )
    records: dict[str, dict] = {}
    jobs = []
    for name, extra in entries:
        record_path = plan.out_dir / name / "screen.json"
        old = io.read_json(record_path) if record_path.is_file() else None
        if old and old.get("status") == "ok" and old.get("settings_hash") == plan.settings_hash(name, extra):
            log.info(f"{name}: screened before (CV {old['cv']:.4f}), skipped")
            records[name] = old
            continue
        record_path.unlink(missing_ok=True)
        jobs.append(
            Job(
                name,
                run_screen_process,
                (Path(config_path), Path(zoo_path), name, overrides or {}, plan.out_dir / name / "screen.log"),
            )
        )
    started = time.perf_counter()
    for k, outcome in enumerate(runner.run(jobs), start=1):
        name = outcome.job.key
        record_path, log_path = plan.out_dir / name / "screen.json", plan.out_dir / name / "screen.log"
        record = io.read_json(record_path) if record_path.is_file() else None
        if not outcome.ok:
            record = {"name": name, "status": "failed", "error": outcome.error}
            io.write_json(record_path, record)
        elif outcome.value != 0 and (record is None or record.get("status") == "ok"):
            record = {"name": name, "status": "failed", "error": _exit_reason(outcome.value, log_path)}
            io.write_json(record_path, record)
        records[name] = record
        left = (time.perf_counter() - started) / k * (len(jobs) - k)
        eta = f", about {format_seconds(left)} left" if k < len(jobs) else ""
        if record["status"] == "ok":
            log.info(
                f"[{k}/{len(jobs)}] {name}: CV {record['cv']:.4f}, {record['infer_ips']:.0f} img/s inference, "
                f"{format_seconds(outcome.seconds)} on {outcome.worker}{eta}"
            )
        else:
            log.warning(f"[{k}/{len(jobs)}] {name}: FAILED - {record['error']}{eta}")
    ordered = [records[name] for name, _ in entries]
    board = leaderboard(ordered, config.competition.metric)
    written = write_report(plan, board, ordered)
    n_failed = int((board["status"] != "ok").sum())
    track(config.tracking.settings(config.out, config.competition.name), "zoo",
          {"competition": config.competition.name, "stage": "zoo", "folds": ",".join(map(str, plan.folds))},
          metrics={"architectures": len(board), "failed": n_failed},
          artifacts=[written["html"], written["md"], written["csv"]])
    return board, n_failed


def promote(config: Config, board: pd.DataFrame, top: int, force: bool = False, executor: str | None = None) -> list:
    """Train the best ``top`` screened architectures on every fold at full size, through the normal train stage
    (on ``executor``, default the config's: each (architecture, fold) a job where it is not ``local``)."""
    from pipeline.core.executors import get_executor
    from pipeline.train import run_train
    from pipeline.train.grid import run_train_grid

    ok = board[board["status"] == "ok"]
    if ok.empty:
        raise ConfigError("no architecture was screened successfully; nothing to promote")
    chosen = ok["architecture"].tolist()[:top]
    log.info(
        f"promoting the top {len(chosen)}: {', '.join(chosen)} (every fold, full size); 'make ensemble' then blends "
        "them"
    )
    name = executor or config.executor.name
    if name == "local":
        return [run_train(config, arch, force=force) for arch in chosen]
    results = run_train_grid(config, chosen, get_executor(name, config.executor.settings()), force=force)
    for arch, _, error in results:
        if error:
            log.warning(f"{arch}: FAILED - {error}")
    return [meta for _, meta, error in results if not error]


def read_leaderboard(config: Config) -> pd.DataFrame:
    path = config.out / "zoo" / config.competition.name / "leaderboard.csv"
    if not path.is_file():
        raise ConfigError(f"no zoo leaderboard {path}; run 'make zoo' first")
    return pd.read_csv(path, keep_default_na=False, na_values=[""])


def main(argv: list[str] | None = None) -> int:
    """The per-architecture worker: ``python -m pipeline.zoo --config C --zoo Z --name N``."""
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.zoo", description="screen one architecture (called by 'make zoo')"
    )
    parser.add_argument("--config", required=True)
    parser.add_argument("--zoo", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument(
        "--overrides-json",
        type=json.loads,
        default={},
        dest="overrides",
        help="the coordinator's config overrides, as a JSON object",
    )
    configure_logging()
    return _worker(parser.parse_args(argv))
