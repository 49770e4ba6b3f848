"""Training recipes off by default: an EMA of the weights (timm ``ModelEmaV3``) and mixup/cutmix (timm ``Mixup``).

Gradient accumulation lives in :func:`pipeline.train.steps.train_step` and the loop; the
config keys are in :class:`pipeline.config.TrainConfig` and the README's "Training recipes".
"""

from __future__ import annotations

import torch
from timm.data import Mixup
from timm.data.mixup import mixup_target
from timm.utils import ModelEmaV3

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
