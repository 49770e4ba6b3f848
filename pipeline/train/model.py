"""The network of a fold: built on the run's device and memory format, wrapped for DDP and ``torch.compile``."""

from __future__ import annotations

import logging

import numpy as np
import torch

from pipeline.config import TrainConfig
from pipeline.train.runtime import Runtime
from pipeline.train.steps import maybe_compile
from pipeline.vision.models import create_model

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed torch and numpy: the model's initial weights and every draw before the first epoch."""
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


def prepare_model(cfg: TrainConfig, n_classes: int, runtime: Runtime, pretrained) -> torch.nn.Module:
    """The architecture with ``n_classes`` outputs on the runtime's device (SyncBatchNorm under DDP on GPUs)."""
    model = create_model(cfg.model, n_classes, pretrained, cfg.drop_rate, cfg.small_input, **cfg.model_kwargs)
    if cfg.sync_bn and runtime.dist.enabled:
        if runtime.is_cuda:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        elif runtime.is_main:
            log.info(
                "  note: train.sync_bn needs GPUs (SyncBatchNorm has no CPU kernel); each CPU process keeps its own "
                "statistics"
            )
    model.to(runtime.device)
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def wrap_for_training(model: torch.nn.Module, runtime: Runtime) -> torch.nn.Module:
    """DistributedDataParallel under torchrun, then ``torch.compile`` if asked for."""
    if runtime.dist.enabled:
        device_ids = [runtime.device.index] if runtime.is_cuda else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    return maybe_compile(model, runtime)
