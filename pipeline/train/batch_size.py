"""The largest batch that fits the GPU: real training steps on a copy of the model, doubling then bisecting."""

from __future__ import annotations

import copy
from typing import Callable

import torch

from pipeline.config import TrainConfig
from pipeline.train.heads import Head
from pipeline.train.runtime import Runtime, free_device_memory, is_oom, to_device
from pipeline.train.steps import TrainingError, make_optimizer, train_step
from pipeline.vision.models import create_model


def find_batch_size(fits: Callable[[int], bool], start: int = 16, limit: int = 1024, safety: float = 0.9,
                    multiple: int = 8) -> int:
    """The largest batch size for which ``fits(batch)`` is true, with a safety margin.

    Doubles from ``start`` until a batch does not fit (or ``limit`` is reached), then
    bisects between the last size that fitted and the first that did not. When memory
    set the bound, the result is scaled by ``safety`` and rounded down to a multiple of
    ``multiple`` (room for fragmentation and the loader's pinned buffers).

    Parameters
    ----------
    fits : callable
        ``fits(batch)``: True if a full training step at that batch size runs.
    start, limit : int
        The first size tried and the largest size wanted.
    safety : float
        Fraction of the largest fitting size that is returned (when memory bounded it).
    multiple : int
        The result is a multiple of this when it is at least that large.

    Returns
    -------
    int

    Raises
    ------
    TrainingError
        If not even a batch of 1 fits.
    """
    limit = max(1, int(limit))
    good, bad = 0, None
    size = min(max(1, start), limit)
    while True:
        if fits(size):
            good = size
            if size >= limit:
                break
            size = min(size * 2, limit)
        else:
            bad = size
            break
    if good == 0:  # even the first size failed: halve down to 1
        size = bad // 2
        while size >= 1 and not fits(size):
            bad, size = size, size // 2
        if size < 1:
            raise TrainingError("not even a batch of 1 fits in the GPU's memory; use a smaller image_size or model")
        good = size
    if bad is None:
        return good
    while bad - good > max(1, good // 16):
        middle = (good + bad) // 2
        if fits(middle):
            good = middle
        else:
            bad = middle
    result = max(1, int(good * safety))
    return result - result % multiple if result >= multiple else result


def step_fits(model: torch.nn.Module, cfg: TrainConfig, runtime: Runtime, image_size: int, n_classes: int,
              steps: int = 2, head: Head | None = None) -> Callable[[int], bool]:
    """A ``fits(batch)`` test for :func:`find_batch_size`: full training steps on random data.

    Each try trains a copy of ``model`` with its own AdamW (its state counts too), so the
    model passed in is left untouched; an out-of-memory error means "does not fit".
    """

    def fits(batch: int) -> bool:
        trial = optimizer = x = y = None
        try:
            trial = copy.deepcopy(model).to(runtime.device)
            if runtime.channels_last:
                trial = trial.to(memory_format=torch.channels_last)
            trial.train()
            optimizer = make_optimizer(trial, cfg, runtime)
            scaler = torch.amp.GradScaler("cuda", enabled=runtime.amp_dtype == torch.float16)
            criterion = head or torch.nn.CrossEntropyLoss()
            x = to_device(torch.randn(batch, 3, image_size, image_size), runtime)
            y = dummy_targets(head, batch, n_classes, runtime.device)
            for _ in range(steps):
                train_step(trial, x, y, criterion, optimizer, scaler, runtime, cfg.grad_clip)
            if runtime.is_cuda:
                torch.cuda.synchronize(runtime.device)
            return True
        except Exception as exc:  # noqa: BLE001 - only out-of-memory errors mean "too large"
            if not is_oom(exc):
                raise
            return False
        finally:
            del trial, optimizer, x, y
            free_device_memory()

    return fits


def dummy_targets(head: Head | None, batch: int, n_outputs: int, device) -> torch.Tensor:
    """Random targets of the shape and type ``head`` trains on (class indices without a head)."""
    if head is None or head.loss_name == "ce":
        return torch.randint(0, n_outputs, (batch,), device=device)
    if head.values:
        return torch.rand(batch, device=device)
    return torch.randint(0, 2, (batch, n_outputs), device=device).float()  # 0/1 per column (binary: one)


def resolve_batch_size(cfg: TrainConfig, runtime: Runtime, image_size: int, n_classes: int, n_train: int,
                       cpu_default: int = 64, head: Head | None = None) -> int:
    """``train.batch_size`` as a number: itself, or for ``"auto"`` the largest that fits the GPU.

    On the CPU there is no memory wall worth searching for: ``"auto"`` means
    ``cpu_default``. Either way the result is at most the number of training rows.
    """
    if cfg.batch_size != "auto":
        return int(cfg.batch_size)
    limit = max(1, min(1024, n_train))
    if not runtime.is_cuda:
        return min(cpu_default, limit)
    model = create_model(cfg.model, n_classes, False, cfg.drop_rate, cfg.small_input, **cfg.model_kwargs)
    rng = torch.get_rng_state(), torch.cuda.get_rng_state(runtime.device)
    try:
        return find_batch_size(step_fits(model, cfg, runtime, image_size, n_classes, head=head), limit=limit)
    finally:
        torch.set_rng_state(rng[0])
        torch.cuda.set_rng_state(rng[1], runtime.device)
        del model
        free_device_memory()
