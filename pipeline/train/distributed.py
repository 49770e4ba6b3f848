"""Several processes, one run: PyTorch's DistributedDataParallel under ``torchrun``.

``make train MODEL=x GPUS=4`` starts ``torchrun --standalone --nproc_per_node=4 -m
pipeline train ...``: the same code in four processes (ranks), one GPU each. Training
rows are split by :class:`torch.utils.data.DistributedSampler`; validation and test
rows are split without padding (rank ``r`` predicts rows ``r, r + W, r + 2W, ...``)
and gathered back by row index, so every row is predicted exactly once. Only rank 0
writes files; the other ranks learn its decisions by broadcast.

Without ``torchrun`` (no ``WORLD_SIZE`` in the environment) every helper here is a
no-op for a single process.
"""

from __future__ import annotations

import atexit
import datetime
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: its rank, the number of processes, its rank on this machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = DistContext()


def launched_by_torchrun() -> bool:
    """True inside a process started by ``torchrun`` with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(backend: str = "auto", use_cuda: bool | None = None, timeout_minutes: float = 60.0) -> DistContext:
    """Join the process group ``torchrun`` set up; a single-process context without ``torchrun``.

    Parameters
    ----------
    backend : {"auto", "nccl", "gloo"}
        ``auto``: NCCL when the processes use GPUs, gloo on CPUs.
    use_cuda : bool, optional
        Whether the ranks train on GPUs (default: whether CUDA is available).
    timeout_minutes : float
        How long a collective waits for a slow rank (building a cache, for example).

    Returns
    -------
    DistContext
    """
    if not launched_by_torchrun():
        return SINGLE
    context = DistContext(rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]),
                          local_rank=int(os.environ.get("LOCAL_RANK", "0")),
                          local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"])))
    use_cuda = torch.cuda.is_available() if use_cuda is None else use_cuda
    if backend == "auto":
        backend = "nccl" if use_cuda else "gloo"
    if backend == "nccl" and not use_cuda:
        raise RuntimeError("train.ddp_backend is 'nccl' but the processes run on the CPU; use ddp_backend=gloo or auto")
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(context.local_rank)
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=timeout_minutes))
        atexit.register(_destroy)  # once per process: several runs (MODEL lists) share the group
    return context


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def shutdown(context: DistContext) -> None:
    """Leave the process group (after a last barrier, so no rank exits while another still writes)."""
    if context.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier(context: DistContext) -> None:
    if context.enabled:
        dist.barrier()


def broadcast_object(value: Any, context: DistContext, src: int = 0) -> Any:
    """Rank ``src``'s ``value`` on every rank (any picklable object)."""
    if not context.enabled:
        return value
    box = [value if context.rank == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def shard(indices: np.ndarray, context: DistContext) -> np.ndarray:
    """This rank's share of ``indices``: every ``world_size``-th row from its rank, no padding."""
    indices = np.asarray(indices)
    return indices[context.rank::context.world_size] if context.enabled else indices


def gather_rows(values: np.ndarray, context: DistContext, n_rows: int, axis: int = 0) -> np.ndarray:
    """Reassemble rows predicted by :func:`shard` into their original order, on every rank.

    Parameters
    ----------
    values : ndarray
        This rank's predictions for ``shard(arange(n_rows))``, rows along ``axis``.
    context : DistContext
    n_rows : int
        The number of rows before sharding.

    Returns
    -------
    ndarray with ``n_rows`` along ``axis``: row ``i`` is the prediction of the rank that
    held it. Raises ``RuntimeError`` if a row is missing or predicted twice.
    """
    if not context.enabled:
        return values
    parts: list[Any] = [None] * context.world_size
    dist.all_gather_object(parts, np.ascontiguousarray(values))
    shape = list(values.shape)
    shape[axis] = n_rows
    out = np.empty(shape, dtype=values.dtype)
    seen = np.zeros(n_rows, dtype=np.int64)
    for rank, part in enumerate(parts):
        rows = np.arange(n_rows)[rank::context.world_size]
        if part.shape[axis] != len(rows):
            raise RuntimeError(f"rank {rank} returned {part.shape[axis]} rows, expected {len(rows)}")
        index = [slice(None)] * out.ndim
        index[axis] = rows
        out[tuple(index)] = part
        seen[rows] += 1
    if not (seen == 1).all():
        raise RuntimeError(f"rows predicted {seen.min()} to {seen.max()} times; each must be predicted once")
    return out


def broadcast_buffers(model: torch.nn.Module, context: DistContext) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank before predicting.

    DDP broadcasts buffers at the start of each forward pass, so after the last training
    step every rank's statistics have moved by its own last batch; the saved checkpoint is
    rank 0's, and every rank must predict with the same model.
    """
    if context.enabled:
        for buffer in model.buffers():
            dist.broadcast(buffer.data, src=0)
