"""Speed measurements of a model on the device: training images per second, forward FLOPs, the device in words.

Shared by ``make zoo`` (every architecture is timed the same way) and the benchmarks (``benchmarks.speed``).
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import torch

from pipeline.train.runtime import Runtime, to_device
from pipeline.train.steps import train_step


def synchronize(runtime: Runtime) -> None:
    """Wait for the device's queued work, so a timer around it measures the work (CUDA runs asynchronously)."""
    if runtime.is_cuda:
        torch.cuda.synchronize(runtime.device)


def step_rate(model, optimizer, scaler, criterion, runtime: Runtime, batch: int, image_size: int, n_classes: int,
              steps: int, warmup: int) -> float:
    """Training images per second on synthetic tensors already on the device."""
    x = to_device(torch.randn(batch, 3, image_size, image_size), runtime)
    y = torch.randint(0, n_classes, (batch,), device=runtime.device)
    model.train()
    for _ in range(warmup):
        train_step(model, x, y, criterion, optimizer, scaler, runtime)
    synchronize(runtime)
    start = time.perf_counter()
    for _ in range(steps):
        train_step(model, x, y, criterion, optimizer, scaler, runtime)
    synchronize(runtime)
    return steps * batch / (time.perf_counter() - start)


def forward_flops(model: torch.nn.Module, image_size: int, runtime: Runtime) -> float | None:
    """FLOPs of one forward pass of one image (``torch.utils.flop_counter``), or None if it cannot count them."""
    from torch.utils.flop_counter import FlopCounterMode

    try:
        x = to_device(torch.randn(2, 3, image_size, image_size), runtime)
        model.eval()
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(x)
        return counter.get_total_flops() / 2
    except Exception:  # noqa: BLE001 - an operator the counter does not know: report no figure
        return None


def device_description(runtime: Runtime) -> str:
    """The device a measurement ran on, in words: the GPU and CUDA version, or the CPU model, cores and threads."""
    if runtime.is_cuda:
        return f"{torch.cuda.get_device_name(runtime.device)} (CUDA {torch.version.cuda})"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
