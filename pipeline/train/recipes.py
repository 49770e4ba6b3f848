"""Training recipes off by default: an EMA of the weights (timm ``ModelEmaV3``), mixup/cutmix (timm ``Mixup``),
an average of the last epochs' weights (SWA-style) and progressive resizing.

Gradient accumulation lives in :func:`pipeline.train.steps.train_step` and the loop; the
config keys are in :class:`pipeline.config.TrainConfig` and the README's "Training recipes".
"""

from __future__ import annotations

import copy
from typing import Iterable

import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.data.mixup import mixup_target
from timm.utils import ModelEmaV3
from torch.nn.modules.batchnorm import _BatchNorm

from pipeline.config import ConfigError, TrainConfig
from pipeline.train.heads import Head


class WeightEma:
    """timm's ``ModelEmaV3`` tied to the model it follows.

    ``module`` holds the averaged weights (parameters and buffers, on the model's device);
    ``update(step)`` takes the optimizer step count, so timm's decay warm-up follows updates,
    not batches, whatever ``grad_accum_steps`` is.
    """

    def __init__(self, model: torch.nn.Module, decay: float, warmup: bool):
        self.source = model
        self.ema = ModelEmaV3(model, decay=decay, use_warmup=warmup)

    @property
    def module(self) -> torch.nn.Module:
        return self.ema.module

    def update(self, step: int) -> None:
        """One EMA step after the ``step``-th optimizer update (no grad, no host sync)."""
        self.ema.update(self.source, step=step)

    def state_dict(self) -> dict:
        return self.ema.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.ema.module.load_state_dict(state)


def make_ema(model: torch.nn.Module, cfg: TrainConfig) -> WeightEma | None:
    """The weight EMA ``train.ema`` asks for, or None."""
    return WeightEma(model, cfg.ema_decay, cfg.ema_warmup) if cfg.ema else None


# how a head's targets become the soft targets mixup blends: class indices (one-hot) or per-label columns
_TARGET_KINDS = {"ce": "classes", "bce": "labels"}


def mix_kind(head: Head) -> str:
    """``classes`` (softmax head) or ``labels`` (sigmoid per label); ConfigError for value targets."""
    if head.values or head.loss_name not in _TARGET_KINDS:
        raise ConfigError(f"mixup/cutmix cannot train task {head.task!r} with loss {head.loss_name!r}: its targets are "
                          "values, not labels (pipeline.config.check_recipe_fits_task says why)")
    return _TARGET_KINDS[head.loss_name]


class BatchMixer:
    """Mixup/cutmix of a device batch with timm's ``Mixup``; returns the mixed images and soft targets.

    timm draws its lambdas and boxes from numpy's global RNG: the loop seeds it per epoch
    (like torch's), so a resumed run mixes exactly as an uninterrupted one. The images are
    mixed in place on the device; only scalars come from the host.
    """

    def __init__(self, head: Head, n_outputs: int, cfg: TrainConfig):
        self.kind = mix_kind(head)
        self.n_outputs, self.smoothing = n_outputs, cfg.label_smoothing
        self.mixup = Mixup(mixup_alpha=cfg.mixup_alpha, cutmix_alpha=cfg.cutmix_alpha, prob=cfg.mixup_prob,
                           switch_prob=cfg.mixup_switch_prob, mode=cfg.mixup_mode, label_smoothing=cfg.label_smoothing,
                           num_classes=n_outputs, multi_label=self.kind == "labels")

    def targets(self, y: torch.Tensor) -> torch.Tensor:
        """``y`` in the form timm mixes: class indices, or a (batch, labels) float matrix."""
        return y.long().reshape(-1) if self.kind == "classes" else y.float().reshape(len(y), -1)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.targets(y)
        if len(x) % 2:
            # timm mixes pairs; an odd (last) batch trains on its own labels, as soft targets like the rest
            return x, mixup_target(y, self.n_outputs, 1.0, self.smoothing, self.kind == "labels")
        return self.mixup(x, y)


def make_mixer(head: Head, n_outputs: int, cfg: TrainConfig) -> BatchMixer | None:
    """The batch mixer ``train.mixup_alpha``/``cutmix_alpha`` ask for, or None."""
    return BatchMixer(head, n_outputs, cfg) if cfg.mixes else None


class WeightAverage:
    """A running mean of the model's weights over the epochs it is updated at (SWA-style checkpoint averaging).

    ``update()`` after an epoch folds the model's parameters into the mean (equal weight per
    epoch); buffers are copied from the model, and BatchNorm statistics are recomputed for the
    averaged weights by :func:`recompute_norm_stats` before it is validated. The count is
    saved with the mean, so a resume continues it exactly.
    """

    def __init__(self, model: torch.nn.Module):
        self.source = model
        self.module = copy.deepcopy(model).requires_grad_(False)
        self.count = 0

    @torch.no_grad()
    def update(self) -> None:
        """Fold the model's current weights into the mean (no host sync)."""
        self.count += 1
        for mean, p in zip(self.module.parameters(), self.source.parameters()):
            mean.lerp_(p.detach(), 1.0 / self.count)   # mean + (p - mean) / n: exactly p at n = 1
        for mine, theirs in zip(self.module.buffers(), self.source.buffers()):
            mine.copy_(theirs)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.count = int(state["count"])


def make_average(model: torch.nn.Module, cfg: TrainConfig) -> WeightAverage | None:
    """The weight average ``train.average_last`` asks for, or None."""
    return WeightAverage(model) if cfg.average_last else None


def averages_epoch(cfg: TrainConfig, epoch: int) -> bool:
    """Whether ``epoch`` (0-based) is one of the last ``train.average_last`` epochs, whose weights are averaged."""
    return cfg.average_last > 0 and epoch >= cfg.epochs - cfg.average_last


def has_batch_norm(model: torch.nn.Module) -> bool:
    """Whether the model keeps BatchNorm running statistics (which an average of weights must recompute)."""
    return any(isinstance(m, _BatchNorm) and m.track_running_stats for m in model.modules())


@torch.no_grad()
def recompute_norm_stats(model: torch.nn.Module, batches: Iterable[torch.Tensor]) -> None:
    """BatchNorm running statistics recomputed from scratch over ``batches`` (device tensors, ready for the model).

    As ``torch.optim.swa_utils.update_bn``: statistics reset, momentum None (an equal-weight
    mean over the batches), a forward pass in train mode without gradients; the model's mode
    and momenta are put back. The caller runs it under the training's autocast.
    """
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    was_training = model.training
    model.train()
    for x in batches:
        model(x)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.train(was_training)


def train_side(cfg: TrainConfig, epoch: int, full: int) -> int:
    """The image side ``epoch`` trains at: the last ``train.progressive_sizes`` step begun by then, else ``full``."""
    plan = cfg.progressive_sizes or []
    # the whole plan is checked at every epoch, so a bad plan stops before its first epoch
    if any(size > full for _, size in plan):
        raise ConfigError(f"train.progressive_sizes {plan} asks for more than the input size {full} px: the images are "
                          f"cached at {full} px; give sides up to {full}")
    side = full
    for start, size in plan:
        if epoch >= start:
            side = size
    return side


def resize_batch(x: torch.Tensor, side: int) -> torch.Tensor:
    """A device batch scaled to height ``side`` (aspect kept), antialiased bilinear; unchanged at its own size.

    Downscaling after normalisation equals normalising the downscaled image (both are linear per channel)."""
    h, w = x.shape[-2:]
    if h == side:
        return x
    size = (side, max(1, round(w * side / h)))
    return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
