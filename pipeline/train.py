"""Stage 2: fine-tune one architecture on every fold, predict its validation fold and the test set.

Per fold: augmentation at the model's own input size (albumentations per image on the
host, and/or batched on the device: ``pipeline/transforms.py``), the model's own
normalisation (on the device), AdamW with linear warm-up then cosine decay, AMP (bf16, or fp16 with
a grad scaler) and channels_last on a GPU, the best checkpoint by the validation
metric, early stopping, and a progress bar. The training state is saved after every
epoch, so a rerun after a crash continues the unfinished fold and skips finished ones.

The hot loop never waits on the GPU: losses are summed on the device and read back
every ``log_every`` steps only.

Speed: images come from the decoded-image cache (``train.cache``, ``pipeline/cache.py``),
DataLoader settings are chosen from the machine (``loader_settings``), ``train.compile``
wraps the step in ``torch.compile``, ``batch_size: auto`` finds the largest batch that
fits the GPU (``find_batch_size``). Under ``torchrun`` (``make train GPUS=n``) the same
code runs as DistributedDataParallel (``pipeline/distributed.py``): rank 0 alone writes,
and validation and test rows are sharded without padding.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import load_file as load_safetensors
from safetensors.torch import save_file as save_safetensors
from tqdm.auto import tqdm

from pipeline import io
from pipeline.cache import ImageCache, cache_bytes, cache_key, cache_side, open_cache
from pipeline.config import Config, ConfigError, TrainConfig, config_hash, resolve_train_config
from pipeline.data import Competition, ImageDataset, ImageStore, collate_rows, load_competition
from pipeline.distributed import (SINGLE, DistContext, barrier, broadcast_buffers, broadcast_object, gather_rows,
                                  init_distributed, launched_by_torchrun, shard)
from pipeline.folds import FoldsError, read_folds, run_folds
from pipeline.metrics import Metric, get_metric
from pipeline.models import count_parameters, create_model, data_config, default_input_size, model_family, resolve_model_name
from pipeline.report import format_seconds, format_table
from pipeline.tasks import Head, make_head, resolve_loss
from pipeline.store import RunLock, StoreError, code_version, library_versions, prediction_frame, read_meta
from pipeline.transforms import DeviceTransform, HostTransform, apply_views, parse_view

# settings that change how fast a run goes or how it is shown, not what it learns
_NOT_HASHED = ("log_every", "num_workers", "tta", "compile", "ddp_backend", "cache", "cache_margin", "pin_memory",
               "persistent_workers", "prefetch_factor")
# settings hashed only when set away from their default, so runs made before they existed keep their hash
_HASHED_WHEN_SET = {"amp_dtype": "auto", "sync_bn": False, "loss": "auto", "device_augment": []}


def settings_dump(cfg: TrainConfig) -> dict:
    """The training settings that decide what a run learns (the part of the run's hash that comes from ``train``)."""
    dump = cfg.model_dump(exclude=set(_NOT_HASHED))
    for key, default in _HASHED_WHEN_SET.items():
        if dump.get(key) == default:
            dump.pop(key)
    return dump


# -- device and loader ------------------------------------------------------------------

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


def select_runtime(cfg: TrainConfig, images_in_memory: bool, context: DistContext = SINGLE) -> Runtime:
    """Pick the device, AMP dtype, memory format, compilation and loader settings for this machine."""
    use_cuda = use_cuda_for(cfg)
    device = torch.device("cuda", context.local_rank) if use_cuda and context.enabled else torch.device("cuda" if use_cuda else "cpu")
    if use_cuda:
        torch.backends.cudnn.benchmark = True
    loader = loader_settings(cfg, use_cuda, images_in_memory, processes_per_machine=context.local_world_size)
    compile_mode = None
    if cfg.compile:
        compile_mode = "default" if cfg.compile is True else cfg.compile
    return Runtime(device, amp_dtype_for(cfg, use_cuda), bool(use_cuda and cfg.channels_last), loader["num_workers"],
                   loader["pin_memory"], loader["persistent_workers"], loader["prefetch_factor"], compile_mode, context)


def make_loader(dataset, batch_size: int, runtime: Runtime, shuffle: bool = False, generator: torch.Generator | None = None,
                drop_last: bool = False, sampler=None):
    """A DataLoader with the runtime's settings; ``shuffle`` draws from ``generator`` (a resumable order)."""
    kwargs = dict(batch_size=batch_size, num_workers=runtime.num_workers, pin_memory=runtime.pin_memory, drop_last=drop_last,
                  collate_fn=collate_rows)
    if runtime.num_workers > 0:
        kwargs.update(persistent_workers=runtime.persistent_workers, prefetch_factor=runtime.prefetch_factor)
    if sampler is not None:
        kwargs["sampler"] = sampler
    elif shuffle:
        kwargs["sampler"] = torch.utils.data.RandomSampler(dataset, generator=generator)
    return torch.utils.data.DataLoader(dataset, **kwargs)


def _to_device(x: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    """A float batch (synthetic tensors of the benchmarks and probes) onto the device, in the runtime's memory format."""
    x = x.to(runtime.device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if runtime.channels_last else x


def batch_to_device(x: torch.Tensor, runtime: Runtime, inputs: DeviceTransform, train: bool = False) -> torch.Tensor:
    """A loader's uint8 batch onto the device, then ``inputs``: floats, device augmentation (``train``), normalisation."""
    return inputs(x.to(runtime.device, non_blocking=True), train=train)


def device_transform(cfg: TrainConfig, dcfg, runtime: Runtime) -> DeviceTransform:
    """The per-batch device side of the input path for a model's data config (``models.data_config``)."""
    return DeviceTransform(dcfg.mean, dcfg.std, cfg.device_augment, channels_last=runtime.channels_last)


def _autocast(runtime: Runtime):
    if runtime.amp_dtype is None:
        return torch.autocast(device_type=runtime.device.type, enabled=False)
    return torch.autocast(device_type="cuda", dtype=runtime.amp_dtype)


# -- optimisation ------------------------------------------------------------------------

def warmup_cosine(total_steps: int, warmup_steps: int, floor: float = 0.01) -> Callable[[int], float]:
    """Learning-rate factor: linear warm-up to 1, then cosine decay to ``floor``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, runtime: Runtime) -> torch.optim.Optimizer:
    # no weight decay on biases and normalisation weights (1-d tensors), as timm does
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=runtime.is_cuda or None)


def train_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, criterion, optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler, runtime: Runtime, grad_clip: float | None = None,
               scheduler=None) -> torch.Tensor:
    """One optimisation step on a batch already on the device; returns the loss, detached, without a host sync.

    The same function trains the folds and is timed by ``make bench``.
    """
    with _autocast(runtime):
        loss = criterion(model(x), y)
    scaler.scale(loss).backward()
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


# -- the largest batch that fits ---------------------------------------------------------

def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "ALLOC_FAILED" in text)


def _free_device_memory() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


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
    import copy

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
            x = _to_device(torch.randn(batch, 3, image_size, image_size), runtime)
            y = dummy_targets(head, batch, n_classes, runtime.device)
            for _ in range(steps):
                train_step(trial, x, y, criterion, optimizer, scaler, runtime, cfg.grad_clip)
            if runtime.is_cuda:
                torch.cuda.synchronize(runtime.device)
            return True
        except Exception as exc:  # noqa: BLE001 - only out-of-memory errors mean "too large"
            if not _is_oom(exc):
                raise
            return False
        finally:
            del trial, optimizer, x, y
            _free_device_memory()

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
    model = create_model(cfg.model, n_classes, False, cfg.drop_rate, **cfg.model_kwargs)
    rng = torch.get_rng_state(), torch.cuda.get_rng_state(runtime.device)
    try:
        return find_batch_size(step_fits(model, cfg, runtime, image_size, n_classes, head=head), limit=limit)
    finally:
        torch.set_rng_state(rng[0])
        torch.cuda.set_rng_state(rng[1], runtime.device)
        del model
        _free_device_memory()


# -- prediction --------------------------------------------------------------------------

# measured on the 2-core development CPU (docs/benchmarks.md): forward passes of about 2**19
# input pixels (128 images at 64 px, 512 at 32 px) are the fastest per image; larger ones are slower
CPU_PIXELS_PER_PASS = 2**19

@torch.inference_mode()
def predict_views(model: torch.nn.Module, loader, views: list[Callable], runtime: Runtime,
                  activate: Callable[[torch.Tensor], torch.Tensor] | None = None,
                  inputs: DeviceTransform | None = None) -> np.ndarray:
    """Predictions for every view: ``(n_views, n_rows, n_columns)``.

    ``inputs`` turns the loader's uint8 batches into the model's normalised input on the
    device; without it the loader's batches are taken as model input already.

    ``activate`` turns logits into what is stored and averaged over views (the task
    head's softmax, sigmoid or value scale, :class:`pipeline.tasks.Head`); softmax when None.

    On a GPU all views of a batch go through the model in one forward pass while memory
    allows; after an out-of-memory error the views are split into fewer per pass (halving)
    for the rest of the loader. On the CPU a pass holds at most :data:`CPU_PIXELS_PER_PASS`
    input pixels (larger passes spill out of the CPU caches and run slower per image).
    Results stay on the device until the end, so the loop never waits for a copy to the host.
    """
    model.eval()
    activate = activate or (lambda logits: logits.float().softmax(dim=1))
    outputs = []
    per_pass = None
    for x, _ in loader:
        x = _to_device(x, runtime) if inputs is None else batch_to_device(x, runtime, inputs)
        n = x.shape[0]
        if per_pass is None:
            per_pass = len(views)
            if not runtime.is_cuda:
                per_pass = min(per_pass, max(1, CPU_PIXELS_PER_PASS // (n * x.shape[-2] * x.shape[-1])))
        while True:
            try:
                chunks = []
                for first in range(0, len(views), per_pass):
                    with _autocast(runtime):
                        logits = model(apply_views(x, views[first:first + per_pass]))
                    out = activate(logits)
                    chunks.append(out.reshape(-1, n, out.shape[-1]))
                break
            except Exception as exc:  # noqa: BLE001 - only out-of-memory errors are retried
                if not _is_oom(exc) or per_pass == 1:
                    raise
                chunks = logits = None
                _free_device_memory()
                per_pass = max(1, per_pass // 2)
        outputs.append(torch.cat(chunks, dim=0))
    if not outputs:  # no rows: a screen without a test set, or a DDP shard left empty
        width = activate(torch.zeros(1, model.num_classes)).shape[-1]
        return np.zeros((len(views), 0, width), dtype=np.float32)
    return torch.cat(outputs, dim=1).cpu().numpy()


# -- one fold ------------------------------------------------------------------------------

@dataclass
class FoldData:
    store: ImageStore
    test_store: ImageStore
    y: np.ndarray
    folds: np.ndarray
    head: Head


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


class TrainingError(RuntimeError):
    """Training cannot go on (for example the loss became NaN); the message says what to change."""


def _previous(path: Path) -> Path:
    return path.with_name(path.stem + ".prev" + path.suffix)


def _save_state(path: Path, state: dict) -> None:
    """Save the training state, keeping the one before it as a fallback.

    The older file is renamed aside before the new one is written (itself atomically),
    so at any moment of a crash at least one complete state is on disk.
    """
    if path.is_file():
        os.replace(path, _previous(path))
    io.write_with(path, lambda tmp: torch.save(state, tmp))


def _load_state(path: Path) -> dict | None:
    """The last complete training state: ``last.pt``, else the one before it, else None."""
    for candidate in (path, _previous(path)):
        if not candidate.is_file():
            continue
        try:
            state = torch.load(candidate, map_location="cpu", weights_only=True)
        except Exception as exc:  # a damaged file raises one of several torch/pickle errors
            print(f"  warning: {candidate.name} is damaged ({type(exc).__name__}); trying the state before it")
            continue
        if candidate != path:
            print(f"  using the previous training state {candidate.name} (epoch {state['epoch'] + 1})")
        return state
    return None


def _save_best(path: Path, model: torch.nn.Module, epoch: int, score: float) -> None:
    # the checkpoint carries its own epoch and score, so a resume never trusts a stale figure
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {"epoch": str(epoch), "score": repr(float(score))}
    io.write_with(path, lambda tmp: save_safetensors(tensors, str(tmp), metadata=metadata))


def _best_checkpoint_info(path: Path) -> tuple[int, float] | None:
    """(epoch, score) recorded in a best checkpoint, or None if it is missing or damaged."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        return int(metadata["epoch"]), float(metadata["score"])
    except Exception:  # noqa: BLE001 - any unreadable checkpoint is treated as absent
        return None


def _check_loss(mean_loss: float, epoch: int, step: int, cfg: TrainConfig) -> None:
    if not math.isfinite(mean_loss):
        raise TrainingError(
            f"the training loss is {mean_loss} at epoch {epoch + 1}, step {step + 1} (lr {cfg.lr}); "
            "lower train.lr, set train.grad_clip, or set train.amp=false"
        )


def _global_mean(loss_sum: torch.Tensor, steps: int, context: DistContext) -> float:
    """The mean loss over ``steps`` steps of every rank (a host sync: called every ``log_every`` steps only)."""
    if context.enabled:
        loss_sum = loss_sum.clone()
        torch.distributed.all_reduce(loss_sum)
        return loss_sum.item() / (max(1, steps) * context.world_size)
    return loss_sum.item() / max(1, steps)


def _prepare_model(cfg: TrainConfig, n_classes: int, runtime: Runtime, pretrained) -> torch.nn.Module:
    model = create_model(cfg.model, n_classes, pretrained, cfg.drop_rate, **cfg.model_kwargs)
    if cfg.sync_bn and runtime.dist.enabled:
        if runtime.is_cuda:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        elif runtime.is_main:
            print("  note: train.sync_bn needs GPUs (SyncBatchNorm has no CPU kernel); each CPU process keeps its own statistics")
    model.to(runtime.device)
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def _wrap_for_training(model: torch.nn.Module, runtime: Runtime) -> torch.nn.Module:
    """DistributedDataParallel under torchrun, then ``torch.compile`` if asked for."""
    if runtime.dist.enabled:
        device_ids = [runtime.device.index] if runtime.is_cuda else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    return maybe_compile(model, runtime)


def train_fold(run_name: str, cfg: TrainConfig, fold: int, data: FoldData, classes: list[str], metric: Metric, runtime: Runtime, fold_dir: Path, views: list[Callable], view_names: list[str]) -> dict:
    """Train one fold, keep its best checkpoint, predict its validation rows and the test set.

    Under torchrun every rank runs this: training rows are split by a
    DistributedSampler, validation rows are sharded and gathered (every rank computes the
    same score, so early stopping agrees), and only rank 0 writes files.

    Returns
    -------
    dict with the fold's scores, best epoch, timings and history (also written to ``fold.json``).
    """
    context = runtime.dist
    main = context.is_main
    if main:
        fold_dir.mkdir(parents=True, exist_ok=True)
    seed = cfg.seed + 1000 * fold
    _seed_everything(seed)
    model = _prepare_model(cfg, data.head.n_outputs(len(classes)), runtime, cfg.pretrained)
    dcfg = data_config(model, cfg.image_size, cfg.mean, cfg.std, cfg.interpolation)

    train_idx = np.flatnonzero(data.folds != fold)
    valid_idx = np.flatnonzero(data.folds == fold)
    train_tf = HostTransform(dcfg.image_size, dcfg.interpolation, cfg.augment)
    eval_tf = HostTransform(dcfg.image_size, dcfg.interpolation)
    inputs = device_transform(cfg, dcfg, runtime)
    train_ds = ImageDataset(data.store, train_idx, train_tf, data.y)
    valid_ds = ImageDataset(data.store, shard(valid_idx, context), eval_tf, data.y)
    generator = torch.Generator()
    sampler = None
    if context.enabled:
        # the same rows per rank and epoch for a given seed; a resumed run replays them
        sampler = torch.utils.data.DistributedSampler(train_ds, num_replicas=context.world_size, rank=context.rank,
                                                      shuffle=True, seed=seed)
    per_rank = math.ceil(len(train_ds) / context.world_size)
    train_loader = make_loader(train_ds, cfg.batch_size, runtime, shuffle=True, generator=generator,
                               drop_last=per_rank > cfg.batch_size, sampler=sampler)
    valid_loader = make_loader(valid_ds, cfg.batch_size * 2, runtime)

    optimizer = make_optimizer(model, cfg, runtime)
    steps_per_epoch = len(train_loader)
    total_steps = cfg.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total_steps, round(cfg.warmup_epochs * steps_per_epoch)))
    scaler = torch.amp.GradScaler("cuda", enabled=runtime.amp_dtype == torch.float16)
    criterion = data.head  # the task's loss (pipeline.tasks.Head)

    best_path, state_path = fold_dir / "best.safetensors", fold_dir / "last.pt"
    history: list[dict] = []
    best_score, best_epoch, start_epoch, elapsed_before = metric.worst, -1, 0, 0.0
    state = _load_state(state_path)
    best_info = _best_checkpoint_info(best_path)
    if state is not None and best_info is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch = state["epoch"] + 1
        history = list(state["history"])
        elapsed_before = float(state["train_seconds"])
        # the best checkpoint on disk is the truth: it may be newer than a fallback state
        best_epoch, best_score = best_info
        if main:
            print(f"  {run_name} fold {fold}: resuming after epoch {start_epoch}/{cfg.epochs}")
    elif state is not None and main:
        print(f"  {run_name} fold {fold}: the best checkpoint is missing or damaged; the fold restarts")
    step_model = _wrap_for_training(model, runtime)

    valid_y = data.y[valid_idx]
    started = time.perf_counter()
    bar = tqdm(total=total_steps, initial=start_epoch * steps_per_epoch, desc=f"{run_name} fold {fold}", unit="step",
               dynamic_ncols=True, mininterval=0.5, disable=not main)
    for epoch in range(start_epoch, cfg.epochs):
        if best_epoch >= 0 and cfg.patience and epoch - best_epoch > cfg.patience:
            break
        # every epoch's randomness derives from (seed, epoch[, rank]): a resumed run replays it exactly
        generator.manual_seed(seed * 100 + epoch)
        if sampler is not None:
            sampler.set_epoch(epoch)
        torch.manual_seed(seed * 100 + epoch + 7919 * context.rank)
        train_tf.set_random_seed(seed * 100 + epoch + 7919 * context.rank)
        step_model.train()
        loss_sum = torch.zeros((), device=runtime.device)
        for step, (x, y) in enumerate(train_loader):
            x, y = batch_to_device(x, runtime, inputs, train=True), y.to(runtime.device, non_blocking=True)
            loss_sum += train_step(step_model, x, y, criterion, optimizer, scaler, runtime, cfg.grad_clip, scheduler)
            if (step + 1) % cfg.log_every == 0:
                mean_loss = _global_mean(loss_sum, step + 1, context)  # the only host sync of the loop
                _check_loss(mean_loss, epoch, step, cfg)
                bar.set_postfix(loss=f"{mean_loss:.4f}", refresh=False)
                bar.update(cfg.log_every)
        bar.update(steps_per_epoch - (steps_per_epoch // cfg.log_every) * cfg.log_every)
        train_loss = _global_mean(loss_sum, steps_per_epoch, context)
        _check_loss(train_loss, epoch, steps_per_epoch - 1, cfg)
        broadcast_buffers(model, context)
        probs = gather_rows(predict_views(model, valid_loader, views[:1], runtime, data.head.activate, inputs)[0],
                            context, len(valid_idx))
        score = metric(valid_y, probs)
        history.append({"epoch": epoch + 1, "train_loss": train_loss, "valid_score": score, "lr": scheduler.get_last_lr()[0]})
        if metric.is_better(score, best_score):
            best_score, best_epoch = score, epoch
            if main:
                _save_best(best_path, model, epoch, score)
        bar.set_postfix(loss=f"{train_loss:.4f}", **{metric.name: f"{score:.4f}", "best": f"{best_score:.4f}"})
        if main:
            _save_state(state_path, {"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                     "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                                     "best_score": float(best_score), "best_epoch": int(best_epoch), "history": history,
                                     "train_seconds": time.perf_counter() - started + elapsed_before})
    bar.close()
    train_seconds = time.perf_counter() - started + elapsed_before
    barrier(context)  # rank 0's best checkpoint is on disk before any rank reads it

    result = predict_fold(cfg, fold, data, classes, metric, runtime, fold_dir, views, view_names, model=model)
    result.update({"best_epoch": best_epoch + 1, "epochs_run": len(history), "train_seconds": train_seconds,
                   "history": history, "image_size": dcfg.image_size, "mean": dcfg.mean, "std": dcfg.std,
                   "interpolation": dcfg.interpolation, "params": count_parameters(model),
                   "batch_size": cfg.batch_size, "processes": context.world_size})
    if main:
        io.write_json(fold_dir / "fold.json", result)
    return result


def predict_fold(cfg: TrainConfig, fold: int, data: FoldData, classes: list[str], metric: Metric, runtime: Runtime, fold_dir: Path, views: list[Callable], view_names: list[str], model: torch.nn.Module | None = None) -> dict:
    """Load a fold's best checkpoint and predict its validation rows and the test set with TTA.

    Under torchrun each rank predicts every ``world_size``-th row (no padding) and the rows
    are gathered back in order, so each row is predicted exactly once; rank 0 writes.
    """
    started = time.perf_counter()
    context = runtime.dist
    if model is None:
        model = _prepare_model(cfg, data.head.n_outputs(len(classes)), runtime, False)
    model.load_state_dict(load_safetensors(str(fold_dir / "best.safetensors"), device=str(runtime.device)))
    dcfg = data_config(model, cfg.image_size, cfg.mean, cfg.std, cfg.interpolation)
    eval_tf = HostTransform(dcfg.image_size, dcfg.interpolation)
    inputs = device_transform(cfg, dcfg, runtime)
    valid_idx = np.flatnonzero(data.folds == fold)
    test_rows = np.arange(len(data.test_store))
    valid_loader = make_loader(ImageDataset(data.store, shard(valid_idx, context), eval_tf, data.y), cfg.batch_size * 2, runtime)
    test_loader = make_loader(ImageDataset(data.test_store, shard(test_rows, context), eval_tf), cfg.batch_size * 2, runtime)

    def summary(probs: np.ndarray) -> np.ndarray:
        # the plain view and the mean over views: all that is kept, and all that ranks exchange
        return np.stack([probs[0], probs.mean(axis=0)])

    valid_views = gather_rows(summary(predict_views(model, valid_loader, views, runtime, data.head.activate, inputs)),
                              context, len(valid_idx), axis=1)
    test_views = gather_rows(summary(predict_views(model, test_loader, views, runtime, data.head.activate, inputs)),
                             context, len(test_rows), axis=1)
    valid_plain, valid_tta = valid_views
    valid_y = data.y[valid_idx]
    result = {
        "fold": fold,
        "score": metric(valid_y, valid_tta),
        "score_plain": metric(valid_y, valid_plain),
        "predict_seconds": time.perf_counter() - started,
        "tta": view_names,
        "finished": True,
    }
    if context.is_main:
        _write_fold_predictions(fold_dir, valid_idx, valid_tta, valid_plain, test_views[1])
    return result


def _write_fold_predictions(fold_dir: Path, valid_idx: np.ndarray, valid_tta: np.ndarray, valid_plain: np.ndarray, test_tta: np.ndarray) -> None:
    # fold files are keyed by row index; the run-level files, keyed by id, are assembled from them
    columns = [str(k) for k in range(valid_tta.shape[1])]
    for name, rows, probs in (("valid", valid_idx, valid_tta), ("valid_plain", valid_idx, valid_plain),
                              ("test", np.arange(len(test_tta)), test_tta)):
        frame = pd.DataFrame(probs, columns=columns)
        frame.insert(0, "row", rows)
        io.write_parquet(fold_dir / f"{name}.parquet", frame)


def _read_fold_predictions(fold_dir: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    frame = pd.read_parquet(fold_dir / f"{name}.parquet")
    return frame["row"].to_numpy(), frame.drop(columns="row").to_numpy(dtype=np.float64)


# -- the stage -----------------------------------------------------------------------------

_STORES: dict[tuple, ImageStore | ImageCache] = {}


def image_store(paths: list[Path], desc: str, preload: bool | str = "auto") -> ImageStore:
    """One in-memory store per image list per process: the demo's runs share it."""
    key = ("memory", preload, tuple(str(p) for p in paths))
    if key not in _STORES:
        _STORES[key] = ImageStore(paths, preload=preload, desc=desc)
    return _STORES[key]


def input_size(cfg: TrainConfig, n_classes: int) -> int:
    """The model's input side: the recipe's ``image_size``, else the model's default from timm's data config."""
    if cfg.image_size:
        return int(cfg.image_size)
    if not cfg.model_kwargs:  # kwargs such as img_size can change it: then only the built model knows
        size = default_input_size(cfg.model)
        if size:
            return size
    model = create_model(cfg.model, n_classes, False, **cfg.model_kwargs)
    return data_config(model).image_size


def cache_mode(cfg: TrainConfig, cache_dir: Path, n_images: int, target: int) -> str:
    """``train.cache`` resolved: ``auto`` is the disk cache when its folder has room for it, else memory."""
    if cfg.cache != "auto":
        return cfg.cache
    import shutil

    folder = cache_dir
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return "memory"
    needed = cache_bytes(n_images, cache_side(target, cfg.cache_margin))
    return "disk" if needed * 1.1 < free and os.access(folder, os.W_OK) else "memory"


def open_image_store(config: Config, cfg: TrainConfig, paths: list[Path], name: str, target: int,
                     progress: bool = True) -> ImageStore | ImageCache:
    """The images a run reads, as ``train.cache`` says.

    ``disk`` (``auto`` where it fits): the decoded-image cache in ``<output_dir>/cache/``,
    built once per image set and input size and shared by every fold, model and process;
    ``memory``: decoded into this process's memory when they fit in 2 GiB, else decoded
    on access; ``off``: decoded on every access.
    """
    mode = cache_mode(cfg, config.cache_dir, len(paths), target)
    if mode != "disk" or not paths:
        return image_store(paths, name, preload="auto" if mode == "memory" else False)
    key = ("disk", str(config.cache_dir), cache_key(paths, target, cfg.cache_margin))  # a changed file is a new key
    if key not in _STORES:
        _STORES[key] = open_cache(paths, config.cache_dir, target, cfg.cache_margin, name, progress=progress)
    return _STORES[key]


def ensure_folds(config: Config, competition: Competition) -> tuple[np.ndarray, str]:
    """The saved folds; made now (and said so) if this competition has none yet."""
    try:
        return read_folds(config, competition)
    except FoldsError:
        if config.folds_csv.is_file():
            raise
        folds, fingerprint, _ = run_folds(config, competition)
        print(f"made folds: {config.folds_csv} (fingerprint {fingerprint})")
        return folds, fingerprint


def _view_list(cfg: TrainConfig) -> tuple[list[Callable], list[str]]:
    # the plain view always comes first: its predictions give the "CV without TTA" figure
    names = ["identity"] + [v for v in cfg.tta if v.strip() != "identity"]
    return [parse_view(v) for v in names], names


@dataclass
class RunSpec:
    """Everything a run needs, resolved and checked before any work."""

    name: str
    cfg: TrainConfig
    run_dir: Path
    settings_hash: str
    competition: Competition
    folds: np.ndarray
    fingerprint: str
    metric: Metric
    head: Head


def prepare_run(config: Config, model: str, overrides: list[str] | None = None, competition: Competition | None = None) -> RunSpec:
    """Resolve the recipe, check the model name, the weights file and the data: fail before any work."""
    name, cfg = resolve_train_config(config, model, overrides)
    resolve_model_name(cfg.model)
    if isinstance(cfg.pretrained, str):
        create_model(cfg.model, 2, cfg.pretrained, **cfg.model_kwargs)  # raises on a mismatched file
    try:
        resolve_loss(config.competition.task, cfg.loss)  # a recipe's loss fits the task: checked before the data is read
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None
    competition = competition or load_competition(config)
    head = make_head(config.competition.task, cfg.loss, competition.targets, cfg.label_smoothing)
    folds, fingerprint = ensure_folds(config, competition)
    settings = {"train": settings_dump(cfg), "competition": competition_settings(config),
                "folds_fingerprint": fingerprint}
    return RunSpec(name, cfg, config.runs_dir / name, config_hash(settings), competition, folds, fingerprint,
                   get_metric(config.competition.metric), head)


# competition keys added with the tasks: hashed only when set, so runs made before them keep their hash
_COMPETITION_KEYS_WHEN_SET = ("target_columns", "positive_class", "target_range", "metrics")


def competition_settings(config: Config) -> dict:
    """The competition part of a run's hash."""
    dump = config.competition.model_dump()
    for key in _COMPETITION_KEYS_WHEN_SET:
        if not dump.get(key):
            dump.pop(key, None)
    return dump


def _fold_list(spec: RunSpec, folds_subset: list[int] | None) -> list[int]:
    all_folds = sorted(int(f) for f in np.unique(spec.folds))
    if not folds_subset:
        return all_folds
    bad = [f for f in folds_subset if f not in all_folds]
    if bad:
        raise ConfigError(f"FOLDS={','.join(map(str, folds_subset))}: fold(s) {bad} do not exist; folds are {all_folds}")
    return sorted(set(folds_subset))


def _base_meta(config: Config, spec: RunSpec) -> dict:
    return {
        "name": spec.name, "status": "running", "model": spec.cfg.model, "timm_name": resolve_model_name(spec.cfg.model),
        "family": model_family(spec.cfg.model), "competition": config.competition.name,
        "metric": config.competition.metric, "task": config.competition.task, "classes": spec.competition.classes,
        "loss": spec.head.loss_name,
        "folds_fingerprint": spec.fingerprint, "n_folds": int(len(np.unique(spec.folds))),
        "config_hash": spec.settings_hash, "config": spec.cfg.model_dump(), "seed": spec.cfg.seed,
        "versions": library_versions(), "code_version": code_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "folds_done": [],
    }


def _start_distributed(config: Config, model: str, overrides: list[str] | None) -> DistContext:
    """Join torchrun's process group when launched by it (``make train GPUS=n``); a single process otherwise."""
    if not launched_by_torchrun():
        return SINGLE
    _, cfg = resolve_train_config(config, model, overrides)
    return init_distributed(cfg.ddp_backend, use_cuda_for(cfg))


def _on_main(context: DistContext, work: Callable[[], object]):
    """Run ``work`` on rank 0 only and give its result, or its error, to every rank.

    Files are written by rank 0 alone; the other ranks must still take the same path
    (return, raise, or go on with the same metadata), or they would wait forever.
    """
    if not context.enabled:
        return work()
    outcome = None
    if context.is_main:
        try:
            outcome = ("ok", work())
        except (ConfigError, StoreError, FoldsError, TrainingError, ValueError) as exc:
            broadcast_object(("error", exc), context)
            raise
    kind, value = broadcast_object(outcome, context)
    if kind == "error":
        raise value
    return value


@contextlib.contextmanager
def _run_lock(run_dir: Path, context: DistContext):
    """The run folder's lock, held by rank 0 for all ranks; released once every rank is done."""
    if not context.enabled:
        with RunLock(run_dir):
            yield
        return
    lock = RunLock(run_dir)
    _on_main(context, lock.__enter__)
    try:
        yield
        barrier(context)
    finally:
        if context.is_main:
            lock.__exit__(None, None, None)


def _open_stores(config: Config, spec: RunSpec, context: DistContext) -> tuple[FoldData, int]:
    """The train and test images as ``train.cache`` says, and the input size they are cached for."""
    target = input_size(spec.cfg, len(spec.competition.classes))
    store = open_image_store(config, spec.cfg, spec.competition.train_paths, "train", target, progress=context.is_main)
    test_store = open_image_store(config, spec.cfg, spec.competition.test_paths, "test", target, progress=context.is_main)
    return FoldData(store, test_store, spec.competition.y, spec.folds, spec.head), target


def _with_batch_size(spec: RunSpec, meta: dict, runtime: Runtime, target: int) -> TrainConfig:
    """The run's settings with ``batch_size`` a number; ``auto`` is found once per run and kept in its metadata."""
    if spec.cfg.batch_size != "auto":
        return spec.cfg
    found = meta.get("batch_size_found")
    if found is None:
        n_train = int(np.sum(spec.folds != spec.folds[0])) if len(spec.folds) else 1
        n_outputs = spec.head.n_outputs(len(spec.competition.classes))
        found = _on_main(runtime.dist, lambda: resolve_batch_size(spec.cfg, runtime, target, n_outputs, n_train, head=spec.head))
        if runtime.is_main:
            where = "the largest that fits the GPU" if runtime.is_cuda else "the CPU default"
            print(f"  batch_size auto: {found} ({where})")
    meta["batch_size_found"] = int(found)
    return spec.cfg.model_copy(update={"batch_size": int(found)})


def run_train(config: Config, model: str, folds_subset: list[int] | None = None, force: bool = False, overrides: list[str] | None = None, competition: Competition | None = None) -> dict:
    """Train (or resume) one run on the chosen folds; assemble its OOF files when every fold is done.

    Returns
    -------
    The run's metadata (also in ``runs/<competition>/<run>/meta.json``).

    Raises
    ------
    StoreError
        If the run exists with other settings and ``force`` is not set, or another process holds it.
    """
    context = _start_distributed(config, model, overrides)
    spec = _on_main(context, lambda: prepare_run(config, model, overrides, competition))  # rank 0 makes the folds
    fold_ids = _fold_list(spec, folds_subset)
    with _run_lock(spec.run_dir, context):
        meta, finished = _on_main(context, lambda: _open_run(config, spec, fold_ids, force))
        if finished:
            return meta
        data, target = _open_stores(config, spec, context)
        runtime = select_runtime(spec.cfg, data.store.in_memory, context)
        cfg = _with_batch_size(spec, meta, runtime, target)
        views, view_names = _view_list(spec.cfg)
        if context.is_main:
            print(f"{spec.name}: {meta['timm_name']} on {runtime.device}"
                  f"{' (' + str(runtime.amp_dtype).replace('torch.', '') + ' autocast)' if runtime.amp_dtype else ''}"
                  f"{f' x {context.world_size} processes' if context.enabled else ''}, "
                  f"folds {fold_ids}, {spec.cfg.epochs} epochs, TTA views {view_names}")
        for fold in fold_ids:
            fold_dir = spec.run_dir / f"fold{fold}"
            if fold in meta["folds_done"]:
                if context.is_main:
                    print(f"  fold {fold}: done before, skipped")
                continue
            result = train_fold(spec.name, cfg, fold, data, spec.competition.classes, spec.metric, runtime,
                                fold_dir, views, view_names)
            meta["folds_done"] = sorted(set(meta["folds_done"]) | {fold})
            if not context.is_main:
                continue
            io.write_json(spec.run_dir / "meta.json", meta)
            for state_file in (fold_dir / "last.pt", _previous(fold_dir / "last.pt")):
                state_file.unlink(missing_ok=True)  # the fold is final: its resume states are no longer needed
            print(f"  fold {fold}: {spec.metric.name} {result['score']:.4f} (no TTA {result['score_plain']:.4f}), "
                  f"best epoch {result['best_epoch']}/{result['epochs_run']}, {format_seconds(result['train_seconds'])}")
        meta = _on_main(context, lambda: assemble_run(spec, meta))
    if context.is_main:
        print(train_leaderboard(meta))
    return meta


def _open_run(config: Config, spec: RunSpec, fold_ids: list[int], force: bool) -> tuple[dict, bool]:
    """Read or start the run's metadata under its lock: (meta, True) if there is nothing left to train.

    Raises
    ------
    StoreError
        If the run exists with other settings and ``force`` is not set.
    """
    meta = read_meta(spec.run_dir)
    if meta is not None and (force or meta.get("config_hash") != spec.settings_hash):
        if not force:
            raise StoreError(
                f"run {spec.run_dir} exists with other settings (hash {meta.get('config_hash')} != {spec.settings_hash}); "
                "pass FORCE=1 to retrain it from scratch, or change the recipe name"
            )
        for child in spec.run_dir.iterdir():
            if child.name != ".lock":
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        meta = None
    if meta is not None and meta.get("status") == "finished" and all(f in meta["folds_done"] for f in fold_ids):
        print(f"{spec.name}: already finished (CV {meta['cv']:.4f}); pass FORCE=1 to retrain")
        return meta, True
    # temporary files a killed writer left behind: never read, only taking space; we hold the lock
    for stale in spec.run_dir.rglob(".*.tmp"):
        stale.unlink()
    meta = meta or _base_meta(config, spec)
    meta["status"] = "running"
    io.write_json(spec.run_dir / "meta.json", meta)
    return meta, False


def run_predict(config: Config, model: str, overrides: list[str] | None = None, competition: Competition | None = None) -> dict:
    """Re-predict a run's validation folds and the test set from its saved checkpoints (no training).

    This is how a Kaggle inference notebook works: checkpoints in, predictions out,
    with the TTA views of the current config.
    """
    context = _start_distributed(config, model, overrides)
    spec = _on_main(context, lambda: prepare_run(config, model, overrides, competition))
    with _run_lock(spec.run_dir, context):
        meta = _on_main(context, lambda: _trained_meta(spec, model))
        data, target = _open_stores(config, spec, context)
        runtime = select_runtime(spec.cfg, data.store.in_memory, context)
        cfg = _with_batch_size(spec, meta, runtime, target)
        views, view_names = _view_list(spec.cfg)
        for fold in meta["folds_done"]:
            fold_dir = spec.run_dir / f"fold{fold}"
            result = predict_fold(cfg, fold, data, spec.competition.classes, spec.metric, runtime,
                                  fold_dir, views, view_names)
            if not context.is_main:
                continue
            fold_info = io.read_json(fold_dir / "fold.json")
            fold_info.update(result)
            io.write_json(fold_dir / "fold.json", fold_info)
            print(f"  fold {fold}: {spec.metric.name} {result['score']:.4f} (no TTA {result['score_plain']:.4f}), TTA {view_names}")
        meta = _on_main(context, lambda: assemble_run(spec, meta))
    if context.is_main:
        print(train_leaderboard(meta))
    return meta


def _trained_meta(spec: RunSpec, model: str) -> dict:
    meta = read_meta(spec.run_dir)
    if meta is None:
        raise StoreError(f"no run {spec.run_dir}; train it first with 'make train MODEL={model}'")
    if meta.get("config_hash") != spec.settings_hash:
        raise StoreError(f"run {spec.run_dir} was trained with other settings; predict with the same recipe and ARGS")
    return meta


def assemble_run(spec: RunSpec, meta: dict) -> dict:
    """Join the fold files into the run's id-keyed OOF and test files once every fold is done."""
    all_folds = sorted(int(f) for f in np.unique(spec.folds))
    fold_infos = {f: io.read_json(spec.run_dir / f"fold{f}" / "fold.json") for f in meta["folds_done"]}
    meta["folds"] = {str(f): {k: v for k, v in info.items() if k != "history"} for f, info in fold_infos.items()}
    if sorted(meta["folds_done"]) != all_folds:
        meta["status"] = "partial"
        io.write_json(spec.run_dir / "meta.json", meta)
        return meta
    classes = spec.competition.classes
    n_train = len(spec.folds)
    oof, oof_plain = np.zeros((n_train, len(classes))), np.zeros((n_train, len(classes)))
    test = np.zeros((len(spec.competition.test_ids), len(classes)))
    for fold in all_folds:
        fold_dir = spec.run_dir / f"fold{fold}"
        rows, probs = _read_fold_predictions(fold_dir, "valid")
        oof[rows] = probs
        rows, probs = _read_fold_predictions(fold_dir, "valid_plain")
        oof_plain[rows] = probs
        test += _read_fold_predictions(fold_dir, "test")[1] / len(all_folds)
    ids = spec.competition.train_ids
    io.write_parquet(spec.run_dir / "oof.parquet", prediction_frame(ids, oof, classes, spec.folds))
    io.write_parquet(spec.run_dir / "oof_plain.parquet", prediction_frame(ids, oof_plain, classes, spec.folds))
    io.write_parquet(spec.run_dir / "test.parquet", prediction_frame(spec.competition.test_ids, test, classes))
    y = spec.competition.y
    meta.update({
        "status": "finished",
        "cv": spec.metric(y, oof),
        "cv_plain": spec.metric(y, oof_plain),
        "train_seconds": sum(info["train_seconds"] for info in fold_infos.values()),
        "predict_seconds": sum(info["predict_seconds"] for info in fold_infos.values()),
        "params": next(iter(fold_infos.values()))["params"],
        "image_size": next(iter(fold_infos.values()))["image_size"],
        "tta": next(iter(fold_infos.values()))["tta"],
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    })
    meta["tta_gain"] = meta["cv"] - meta["cv_plain"]
    private = spec.competition.solution_labels()
    if private is not None:
        meta["private_lb"] = spec.metric(private, test)
    io.write_json(spec.run_dir / "meta.json", meta)
    return meta


def train_leaderboard(meta: dict) -> str:
    """The per-fold table printed after a run."""
    rows = []
    for fold, info in sorted(meta.get("folds", {}).items(), key=lambda kv: int(kv[0])):
        rows.append({"fold": int(fold), "best epoch": f"{info.get('best_epoch', '-')}/{info.get('epochs_run', '-')}",
                     "score": info["score"], "no TTA": info["score_plain"],
                     "train": format_seconds(info.get("train_seconds", 0.0)), "predict": format_seconds(info["predict_seconds"])})
    if meta.get("status") == "finished":
        rows.append({"fold": "CV", "best epoch": "", "score": meta["cv"], "no TTA": meta["cv_plain"],
                     "train": format_seconds(meta["train_seconds"]), "predict": format_seconds(meta["predict_seconds"])})
    title = f"{meta['name']} ({meta['timm_name']}, {meta['metric']}) - {meta['status']}"
    if "private_lb" in meta:
        title += f", private LB {meta['private_lb']:.4f}"
    return format_table(rows, title)
