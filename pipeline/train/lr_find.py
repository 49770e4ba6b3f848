"""``make lr-find``: the learning-rate range test (Leslie Smith 2015; fastai's ``lr_find``).

The recipe's model, data path, augmentation, optimiser and loss train on fold 0's
training rows while the learning rate grows exponentially from ``start_lr`` to
``end_lr``, one batch per step. The loss is smoothed by an exponential moving average
(debiased, as fastai does) and the sweep stops early once the smoothed loss exceeds
``diverge`` times its best. The curve is written as a PNG and a CSV under
``lr_find/<competition>/``; the weights are thrown away and nothing is written to the
run store.

The suggested learning rate is the **steepest descent** of the smoothed loss: the
learning rate where it falls fastest per decade of learning rate (the most negative
``d smoothed_loss / d log10(lr)``, by ``numpy.gradient``), searched among the points up
to the minimum of the smoothed loss (beyond the minimum the loss is on its way up).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.config import Config, LrFindConfig
from pipeline.core import io
from pipeline.core.errors import PipelineError

log = logging.getLogger(__name__)

SUGGESTION_RULE = ("steepest descent of the smoothed loss (the most negative d loss / d log10 lr) "
                   "before the smoothed loss's minimum, past the sweep's first tenth")


class LrFindError(PipelineError, ValueError):
    """The sweep cannot give a suggestion (too few points, a curve with no finite value)."""


def lr_schedule(start_lr: float, end_lr: float, num_steps: int) -> np.ndarray:
    """``num_steps`` learning rates spaced evenly in log scale from ``start_lr`` to ``end_lr`` (both included)."""
    return np.geomspace(start_lr, end_lr, num_steps)


def smooth_losses(losses: np.ndarray, beta: float = 0.98) -> np.ndarray:
    """The debiased exponential moving average of ``losses`` (fastai's smoothing; ``beta=0``: the losses)."""
    out = np.empty(len(losses))
    avg = 0.0
    for i, loss in enumerate(losses):
        avg = beta * avg + (1 - beta) * float(loss)
        out[i] = avg / (1 - beta ** (i + 1))
    return out


def diverged(smoothed: float, best: float, factor: float) -> bool:
    """Whether the sweep should stop: the smoothed loss is not finite or exceeds ``factor`` x its best so far."""
    return not math.isfinite(smoothed) or smoothed > factor * best


def suggest_lr(lrs: np.ndarray, smoothed: np.ndarray) -> float:
    """The suggested learning rate by :data:`SUGGESTION_RULE` (one of ``lrs``, so inside the sweep's range).

    Raises
    ------
    LrFindError
        With fewer than 2 finite points.
    """
    lrs, smoothed = np.asarray(lrs, dtype=float), np.asarray(smoothed, dtype=float)
    finite = np.isfinite(smoothed)
    if finite.sum() < 2:
        raise LrFindError(
            f"the learning-rate sweep has {int(finite.sum())} finite loss value(s); at least 2 are needed "
            "(raise lr_find.num_steps or lower lr_find.start_lr)"
        )
    # fastai skips the sweep's first tenth: there the debiased average holds only a few batches' losses, so its
    # slope is noise (on CIFAR it picked 1e-7, the sweep's start, before this skip)
    first = len(lrs) // 10
    # the curve up to its first non-finite value
    end = int(np.argmin(finite)) if not finite.all() else len(smoothed)
    first = min(first, end - 2)
    slope = np.gradient(smoothed[:end], np.log10(lrs[:end]))
    lowest = first + int(np.argmin(smoothed[first:end]))
    return float(lrs[first + int(np.argmin(slope[first : lowest + 1]))])


@dataclass
class LrFindResult:
    """A finished sweep: its curve, the suggestion and the files written."""

    name: str
    lrs: np.ndarray
    losses: np.ndarray
    smoothed: np.ndarray
    suggestion: float
    stopped_early: bool
    plot: Path
    csv: Path

    def frame(self) -> pd.DataFrame:
        return curve_frame(self.lrs, self.losses, self.smoothed)


def curve_frame(lrs: np.ndarray, losses: np.ndarray, smoothed: np.ndarray) -> pd.DataFrame:
    """The curve as a table: ``lr``, ``loss``, ``smoothed_loss``."""
    return pd.DataFrame({"lr": lrs, "loss": losses, "smoothed_loss": smoothed})


def lr_find_paths(config: Config, name: str) -> tuple[Path, Path]:
    """Where the sweep of ``name`` is written: ``lr_find/<competition>/<name>.png`` and ``.csv``."""
    folder = config.out / "lr_find" / config.competition.name
    return folder / f"{name}.png", folder / f"{name}.csv"


def write_plot(
    path: Path, lrs: np.ndarray, losses: np.ndarray, smoothed: np.ndarray, suggestion: float, title: str
) -> Path:
    """The loss against the learning rate (log scale), the suggestion marked; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    try:
        ax.plot(lrs, losses, color="0.75", lw=1, label="loss")
        ax.plot(lrs, smoothed, color="C0", lw=2, label="smoothed loss")
        ax.axvline(suggestion, color="C3", ls="--", label=f"suggested lr {suggestion:.2e}")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("training loss")
        finite = smoothed[np.isfinite(smoothed)]
        if len(finite):
            low, high = float(finite.min()), float(finite[0])
            ax.set_ylim(low - 0.1 * abs(high - low) - 1e-6, max(high, low) + 0.5 * abs(high - low) + 1e-6)
        ax.set_title(title)
        ax.legend()
        fig.tight_layout()
        return io.write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    finally:
        plt.close(fig)


def lr_find_settings(
    config: Config, start_lr: float | None = None, end_lr: float | None = None, num_steps: int | None = None
) -> LrFindConfig:
    """The config's ``lr_find`` section with the command line's values over it, validated again.

    Raises
    ------
    ConfigError
        If a value is out of range (``start_lr`` not below ``end_lr``, fewer than 5 steps).
    """
    from pydantic import ValidationError

    from pipeline.config import ConfigError, format_validation_error

    given = {"start_lr": start_lr, "end_lr": end_lr, "num_steps": num_steps}
    merged = config.lr_find.model_dump() | {k: v for k, v in given.items() if v is not None}
    try:
        return LrFindConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(
            format_validation_error(exc, "lr_find", LrFindConfig).replace("  - ", "  - lr_find.")
        ) from None


def run_lr_find(
    config: Config,
    model: str,
    settings: LrFindConfig | None = None,
    overrides: dict[str, Any] | None = None,
    fold: int = 0,
) -> LrFindResult:
    """Sweep the learning rate for one recipe on fold ``fold``'s training rows; write the plot and the CSV.

    Parameters
    ----------
    config : Config
    model : str
        A recipe name, a model alias or a timm name (as ``make train MODEL=``).
    settings : LrFindConfig, optional
        The sweep (default: the config's ``lr_find`` section).
    overrides : dict, optional
        Parsed ``key=value`` overrides; ``train`` keys apply as for training.
    fold : int
        The fold whose training rows (every other fold) are swept on.

    Returns
    -------
    LrFindResult
    """
    import torch

    from pipeline.train.batch_size import resolve_batch_size
    from pipeline.train.dataset import ImageDataset
    from pipeline.train.distributed import SINGLE
    from pipeline.train.model import prepare_model, seed_everything
    from pipeline.train.runtime import batch_to_device, device_transform, make_loader, select_runtime
    from pipeline.train.spec import prepare_run
    from pipeline.train.stage import open_stores
    from pipeline.train.steps import make_optimizer, train_step
    from pipeline.vision.host import HostTransform
    from pipeline.vision.models import data_config

    settings = settings or config.lr_find
    spec = prepare_run(config, model, overrides)
    data, target = open_stores(config, spec, SINGLE)
    runtime = select_runtime(spec.cfg, data.store.in_memory)
    cfg = spec.cfg
    train_idx = np.flatnonzero(data.folds != fold)
    if cfg.batch_size == "auto":
        n_outputs = spec.head.n_outputs(len(spec.competition.classes))
        cfg = cfg.model_copy(
            update={"batch_size": resolve_batch_size(cfg, runtime, target, n_outputs, len(train_idx), head=spec.head)}
        )
    seed_everything(cfg.seed)
    net = prepare_model(cfg, spec.head.n_outputs(len(spec.competition.classes)), runtime, cfg.pretrained)
    dcfg = data_config(net, cfg.image_size, cfg.mean, cfg.std, cfg.interpolation)
    train_tf = HostTransform(dcfg.image_size, dcfg.interpolation, cfg.augment)
    train_tf.set_random_seed(cfg.seed)
    inputs = device_transform(cfg, dcfg, runtime)
    generator = torch.Generator().manual_seed(cfg.seed)
    loader = make_loader(
        ImageDataset(data.store, train_idx, train_tf, data.y),
        cfg.batch_size,
        runtime,
        shuffle=True,
        generator=generator,
        drop_last=len(train_idx) > cfg.batch_size,
    )
    optimizer = make_optimizer(net, cfg, runtime)
    scaler = torch.amp.GradScaler("cuda", enabled=runtime.amp_dtype == torch.float16)

    schedule = lr_schedule(settings.start_lr, settings.end_lr, settings.num_steps)
    lrs, losses, smoothed = [], [], []
    avg, best, stopped_early = 0.0, math.inf, False
    log.info(
        "%s: lr-find from %.1e to %.1e over %d steps on fold %d's %d training rows (batch %d, %s)",
        spec.name,
        settings.start_lr,
        settings.end_lr,
        settings.num_steps,
        fold,
        len(train_idx),
        cfg.batch_size,
        runtime.device,
    )
    net.train()
    batches = iter(loader)
    for step, lr in enumerate(schedule):
        try:
            x, y = next(batches)
        except StopIteration:  # more steps than batches: another pass over the rows
            batches = iter(loader)
            x, y = next(batches)
        for group in optimizer.param_groups:
            group["lr"] = float(lr)
        x, y = batch_to_device(x, runtime, inputs, train=True), y.to(runtime.device, non_blocking=True)
        loss = float(train_step(net, x, y, spec.head, optimizer, scaler, runtime, cfg.grad_clip).item())
        avg = settings.smoothing * avg + (1 - settings.smoothing) * loss
        value = avg / (1 - settings.smoothing ** (step + 1))
        lrs.append(float(lr))
        losses.append(loss)
        smoothed.append(value)
        if step > 0 and diverged(value, best, settings.diverge):
            stopped_early = True
            log.info(
                "  stopped at lr %.2e (step %d): the smoothed loss %.4g exceeds %g x its best %.4g",
                lr,
                step + 1,
                value,
                settings.diverge,
                best,
            )
            break
        best = min(best, value)
    del net, optimizer
    lrs_a, losses_a, smoothed_a = np.array(lrs), np.array(losses), np.array(smoothed)
    # the point that diverged is shown but not searched: it lies beyond the minimum anyway
    suggestion = suggest_lr(lrs_a, smoothed_a)
    plot, csv = lr_find_paths(config, spec.name)
    io.write_csv(csv, curve_frame(lrs_a, losses_a, smoothed_a))
    write_plot(
        plot,
        lrs_a,
        losses_a,
        smoothed_a,
        suggestion,
        f"{spec.name} ({cfg.model}): lr range test, fold {fold}, batch {cfg.batch_size}",
    )
    log.info("%s: suggested lr %.2e (%s); the recipe's lr is %.2e", spec.name, suggestion, SUGGESTION_RULE, cfg.lr)
    return LrFindResult(spec.name, lrs_a, losses_a, smoothed_a, suggestion, stopped_early, plot, csv)
