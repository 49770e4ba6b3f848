"""One optimisation step and what it needs: optimiser, learning-rate schedule, loss checks.

``train_step`` is the function both the folds and ``make bench`` run, so the benchmark
times exactly what training does.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from pipeline.config import TrainConfig
from pipeline.core.errors import PipelineError
from pipeline.train.distributed import DistContext
from pipeline.train.runtime import Runtime, autocast


class TrainingError(PipelineError, RuntimeError):
    """Training cannot go on (for example the loss became NaN); the message says what to change."""


def warmup_cosine(total_steps: int, warmup_steps: int, floor: float = 0.01) -> Callable[[int], float]:
    """Learning-rate factor: linear warm-up to 1, then cosine decay to ``floor``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def fine_tune_schedule(total_updates: int, freeze_updates: int, warmup_updates: int) -> Callable[[int], float]:
    """Learning-rate factor per optimizer step: a warm-up + cosine cycle over the head-only steps, then another
    over the rest (fastai's ``fine_tune`` runs one cycle per phase). Without head-only steps: ``warmup_cosine``."""
    if freeze_updates <= 0:
        return warmup_cosine(total_updates, warmup_updates)
    head = warmup_cosine(freeze_updates, min(warmup_updates, freeze_updates))
    body = warmup_cosine(total_updates - freeze_updates, min(warmup_updates, total_updates - freeze_updates))
    return lambda step: head(step) if step < freeze_updates else body(step - freeze_updates)


# torch's own optimizers that have a fused CUDA kernel (one launch for every parameter)
_FUSED_ON_CUDA = (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, runtime: Runtime) -> torch.optim.Optimizer:
    """``train.optimizer`` (any name timm's registry has, AdamW by default) built by timm's factory.

    One path with or without ``train.layer_decay``, as timm's ``train.py`` builds it
    (``create_optimizer_v2``): no weight decay on biases, normalisation weights and the tensors
    the model lists in ``no_weight_decay()`` (a ViT's position embeddings and class token); with
    ``layer_decay``, timm's layer-wise groups, each group's ``lr`` set to ``lr * lr_scale`` here
    because our schedule (``LambdaLR``) scales each group's own initial lr. torch's Adam, AdamW
    and SGD run fused on a GPU.
    """
    from timm.optim import create_optimizer_v2, get_optimizer_class

    kwargs = {}
    if runtime.is_cuda:
        try:
            if get_optimizer_class(cfg.optimizer, bind_defaults=False) in _FUSED_ON_CUDA:
                kwargs["fused"] = True
        except ValueError:   # a composite name (lookahead_adamw): timm builds it, unfused
            pass
    optimizer = create_optimizer_v2(model, opt=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                    layer_decay=cfg.layer_decay, **kwargs)
    for group in optimizer.param_groups:
        group["lr"] = cfg.lr * group.get("lr_scale", 1.0)
    return optimizer


def train_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, criterion, optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler, runtime: Runtime, grad_clip: float | None = None,
               scheduler=None, loss_scale: float = 1.0, update: bool = True) -> torch.Tensor:
    """One optimisation step on a batch already on the device; returns the loss, detached, without a host sync.

    The same function trains the folds and is timed by ``make bench``. With gradient
    accumulation the loop passes ``loss_scale`` = 1/(batches in the group) and ``update=False``
    for all but the group's last batch: the gradients add up and one optimizer (and scheduler)
    step is taken on their mean.
    """
    with autocast(runtime):
        loss = criterion(model(x), y)
    scaler.scale(loss if loss_scale == 1.0 else loss * loss_scale).backward()
    if not update:
        return loss.detach()
    if grad_clip:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    if scheduler is not None:
        scheduler.step()
    return loss.detach()


def maybe_compile(model: torch.nn.Module, runtime: Runtime) -> torch.nn.Module:
    """``torch.compile(model)`` when ``train.compile`` asks for it; the model itself otherwise.

    The compiled module shares the parameters of ``model``; checkpoints are always taken
    from ``model``, so their keys never carry the compiler's ``_orig_mod.`` prefix.
    """
    if runtime.compile_mode is None:
        return model
    return torch.compile(model, mode=runtime.compile_mode)


def check_loss(mean_loss: float, epoch: int, step: int, cfg: TrainConfig) -> None:
    """Stop with what to change when the loss is no longer a finite number."""
    if not math.isfinite(mean_loss):
        raise TrainingError(
            f"the training loss is {mean_loss} at epoch {epoch + 1}, step {step + 1} (lr {cfg.lr}); "
            "lower train.lr, set train.grad_clip, or set train.amp=false"
        )


def global_mean(loss_sum: torch.Tensor, steps: int, context: DistContext) -> float:
    """The mean loss over ``steps`` steps of every rank (a host sync: called every ``log_every`` steps only)."""
    if context.enabled:
        loss_sum = loss_sum.clone()
        torch.distributed.all_reduce(loss_sum)
        return loss_sum.item() / (max(1, steps) * context.world_size)
    return loss_sum.item() / max(1, steps)
