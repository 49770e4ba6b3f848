"""How the hardware is used: device, AMP dtype, memory format, loader settings.

Chosen once per run from the machine (``select_runtime``); every other room of the
training package takes a :class:`Runtime` and never asks torch about the device again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from pipeline.config import ConfigError, TrainConfig
from pipeline.train.dataset import collate_rows
from pipeline.train.distributed import SINGLE, DistContext
from pipeline.vision.device import DeviceTransform
from pipeline.vision.policies import augment_policy_steps


@dataclass(frozen=True)
class Runtime:
    """How the hardware is used: chosen once per run from the device present."""

    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool
    num_workers: int
    pin_memory: bool
    persistent_workers: bool = False
    prefetch_factor: int | None = None
    compile_mode: str | None = None
    dist: DistContext = SINGLE

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def is_main(self) -> bool:
        return self.dist.is_main


def use_cuda_for(cfg: TrainConfig) -> bool:
    """Whether this run trains on a GPU (``train.device``: auto, cpu or cuda).

    Raises
    ------
    ConfigError
        If ``device`` is ``cuda`` and no CUDA device is visible.
    """
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is 'cuda' but no CUDA device is visible; use train.device=auto or cpu")
    return cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())


def loader_settings(cfg: TrainConfig, use_cuda: bool, images_in_memory: bool, cpus: int | None = None,
                    processes_per_machine: int = 1) -> dict:
    """DataLoader settings for this machine; each ``"auto"`` in the config is chosen here, any other value is kept.

    Parameters
    ----------
    cfg : TrainConfig
        ``num_workers``, ``pin_memory``, ``persistent_workers``, ``prefetch_factor``.
    use_cuda : bool
        Whether batches go to a GPU.
    images_in_memory : bool
        Whether images are already decoded (the cache or an in-memory store) or decoded on access.
    cpus : int, optional
        CPU cores of this machine (default: ``os.cpu_count()``).
    processes_per_machine : int
        Training processes sharing those cores (one per GPU under torchrun).

    Returns
    -------
    dict with ``num_workers``, ``pin_memory``, ``persistent_workers`` and ``prefetch_factor`` (None without workers).
    """
    cpus = cpus or os.cpu_count() or 1
    share = max(1, cpus // max(1, processes_per_machine))
    if cfg.num_workers != "auto":
        workers = int(cfg.num_workers)
    elif use_cuda:
        # the GPU waits for the CPU: every core this process can spare, but one for the training loop itself
        workers = min(8, max(share - 1, 1))
    else:
        # on the CPU the model and the loader share the same cores: decoded images are transformed in-process,
        # files still to decode get workers so decoding overlaps the step
        workers = 0 if images_in_memory else min(2, share)
    pin = use_cuda if cfg.pin_memory == "auto" else bool(cfg.pin_memory)
    persistent = workers > 0 if cfg.persistent_workers == "auto" else bool(cfg.persistent_workers) and workers > 0
    prefetch = None
    if workers > 0:
        prefetch = (4 if use_cuda else 2) if cfg.prefetch_factor == "auto" else int(cfg.prefetch_factor)
    return {"num_workers": workers, "pin_memory": pin, "persistent_workers": persistent, "prefetch_factor": prefetch}


def amp_dtype_for(cfg: TrainConfig, use_cuda: bool, bf16_supported: bool | None = None) -> torch.dtype | None:
    """The autocast dtype: bf16 by default where the GPU has it, fp16 (with a grad scaler) on request or otherwise.

    Raises
    ------
    ConfigError
        If ``amp_dtype`` is ``bf16`` on a GPU without bf16.
    """
    if not (use_cuda and cfg.amp):
        return None
    if bf16_supported is None:
        bf16_supported = torch.cuda.is_bf16_supported()
    if cfg.amp_dtype == "fp16":
        return torch.float16
    if cfg.amp_dtype == "bf16" and not bf16_supported:
        raise ConfigError("train.amp_dtype is 'bf16' but this GPU has no bf16; use train.amp_dtype=fp16 or auto")
    return torch.bfloat16 if bf16_supported else torch.float16


#: On the CPU, host allocations from this size up are mapped fresh and unmapped when freed (glibc ``mallopt``).
CPU_MMAP_THRESHOLD = 128 * 1024
_M_MMAP_THRESHOLD = -3   # glibc's mallopt parameter number


def return_freed_memory_at_once(threshold: int = CPU_MMAP_THRESHOLD) -> bool:
    """Make glibc hand freed large blocks (a step's activations) straight back to the system.

    glibc maps blocks above a threshold fresh and unmaps them when freed, but it raises that
    threshold (up to 32 MiB) each time such a block is freed, after which the activations of
    a training step on the CPU come from the heap and stay with the process once freed: the
    peak RSS of a CPU run grows by hundreds of MB that hold nothing (measured in
    ``docs/benchmarks.md``: 400 MB for ResNet-18 at 224 px, batch 64). A fixed threshold
    keeps the first behaviour; the price is that the kernel zeroes the pages of every fresh
    mapping: 5-17% more wall time per step for ResNet-18 at 112-224 px, 74% for
    tf_efficientnet_lite0 at 96 px (37.6 against 65.4 images/s), whose many small-channel
    activations are all above the threshold. Hence off by default: ``train.return_freed_memory``.

    Returns
    -------
    bool
        Whether it was set (False off glibc, e.g. macOS or musl).
    """
    import ctypes
    import ctypes.util
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(threshold)))
    except (OSError, AttributeError):
        return False


def select_runtime(cfg: TrainConfig, images_in_memory: bool, context: DistContext = SINGLE) -> Runtime:
    """Pick the device, AMP dtype, memory format, compilation and loader settings for this machine.

    On the CPU, with ``train.return_freed_memory`` (off by default), it also makes freed
    activations go back to the system at once (:func:`return_freed_memory_at_once`, for the
    rest of the process), which lowers the run's peak memory and costs some speed.
    """
    use_cuda = use_cuda_for(cfg)
    if not use_cuda and cfg.return_freed_memory:
        return_freed_memory_at_once()
    if use_cuda and context.enabled:
        device = torch.device("cuda", context.local_rank)
    else:
        device = torch.device("cuda" if use_cuda else "cpu")
    if use_cuda:
        torch.backends.cudnn.benchmark = True
    loader = loader_settings(cfg, use_cuda, images_in_memory, processes_per_machine=context.local_world_size)
    compile_mode = None
    if cfg.compile:
        compile_mode = "default" if cfg.compile is True else cfg.compile
    return Runtime(
        device,
        amp_dtype_for(cfg, use_cuda),
        # on the CPU too: oneDNN's convolutions in NHWC (1.65x the step of tf_efficientnet_lite0, docs/benchmarks.md)
        bool(cfg.channels_last),
        loader["num_workers"],
        loader["pin_memory"],
        loader["persistent_workers"],
        loader["prefetch_factor"],
        compile_mode,
        context,
    )


def eval_batch_size(batch_size: int, runtime: Runtime) -> int:
    """The batch size of validation and prediction loaders.

    On a GPU twice the training batch (inference keeps no activations for a backward pass, and
    larger batches keep the GPU busy); on the CPU the training batch itself: a larger one is no
    faster per image there, and at 224 px its activations would raise the process's peak memory.
    """
    return batch_size * 2 if runtime.is_cuda else batch_size


def make_loader(
    dataset,
    batch_size: int,
    runtime: Runtime,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    sampler=None,
):
    """A DataLoader with the runtime's settings; ``shuffle`` draws from ``generator`` (a resumable order)."""
    kwargs = dict(
        batch_size=batch_size,
        num_workers=runtime.num_workers,
        pin_memory=runtime.pin_memory,
        drop_last=drop_last,
        collate_fn=collate_rows,
    )
    if runtime.num_workers > 0:
        kwargs.update(persistent_workers=runtime.persistent_workers, prefetch_factor=runtime.prefetch_factor)
    if sampler is not None:
        kwargs["sampler"] = sampler
    elif shuffle:
        kwargs["sampler"] = torch.utils.data.RandomSampler(dataset, generator=generator)
    return torch.utils.data.DataLoader(dataset, **kwargs)


def to_device(x: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    """A float batch (synthetic tensors of the benchmarks and probes) onto the device, in the runtime's memory format.
    """
    x = x.to(runtime.device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if runtime.channels_last else x


def batch_to_device(x: torch.Tensor, runtime: Runtime, inputs: DeviceTransform, train: bool = False) -> torch.Tensor:
    """A loader's uint8 batch onto the device, then ``inputs``: floats, device augmentation (``train``), normalisation.
    """
    return inputs(x.to(runtime.device, non_blocking=True), train=train)


def device_transform(cfg: TrainConfig, dcfg, runtime: Runtime) -> DeviceTransform:
    """The per-batch device side of the input path for a model's data config (``models.data_config``).

    The training steps are ``augment_policy``'s, then the config's own ``device_augment``.
    """
    steps = augment_policy_steps(cfg.augment_policy) + list(cfg.device_augment)
    return DeviceTransform(dcfg.mean, dcfg.std, steps, channels_last=runtime.channels_last)


def autocast(runtime: Runtime):
    """The runtime's autocast context (a disabled one without AMP)."""
    if runtime.amp_dtype is None:
        return torch.autocast(device_type=runtime.device.type, enabled=False)
    return torch.autocast(device_type="cuda", dtype=runtime.amp_dtype)


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is the device running out of memory (CUDA's own error or cuBLAS's)."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "ALLOC_FAILED" in text)


def free_device_memory() -> None:
    """Release what a failed or finished trial left on the device."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
