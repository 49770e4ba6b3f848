"""One fold, epoch by epoch: ``train_one_epoch`` and ``evaluate`` as small functions, ``train_fold`` around them.

The hot loop never waits on the GPU: losses are summed on the device and read back every
``log_every`` steps only. Every epoch's randomness derives from (seed, epoch[, rank]), and
the training state is saved after every epoch, so a resumed fold replays exactly what an
uninterrupted one does.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from typing import Callable

import numpy as np
import torch

from pipeline.config import TrainConfig
from pipeline.core import io
from pipeline.core.report import progress_bar
from pipeline.core.seeds import epoch_seed
from pipeline.store import RunLayout
from pipeline.task.metrics import Metric
from pipeline.train import checkpoint
from pipeline.train.dataset import FoldData, ImageDataset
from pipeline.train.distributed import barrier, broadcast_buffers, gather_rows, shard
from pipeline.train.finetune import body_norms_to_eval, head_only, set_body_frozen
from pipeline.train.heads import Head
from pipeline.train.model import prepare_model, seed_everything, wrap_for_training
from pipeline.train.predict import predict_fold, predict_views
from pipeline.train.recipes import (BatchMixer, WeightAverage, WeightEma, averages_epoch, has_batch_norm, make_average,
                                    make_ema, make_mixer, recompute_norm_stats, resize_batch, train_side)
from pipeline.train.runtime import Runtime, autocast, batch_to_device, device_transform, eval_batch_size, make_loader
from pipeline.train.steps import check_loss, fine_tune_schedule, global_mean, make_optimizer, train_step
from pipeline.vision.device import DeviceTransform
from pipeline.vision.host import HostTransform
from pipeline.vision.models import count_parameters, data_config

log = logging.getLogger(__name__)


def train_one_epoch(model: torch.nn.Module, loader, criterion: Head, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, scheduler, runtime: Runtime, inputs: DeviceTransform,
                    cfg: TrainConfig, epoch: int, bar, ema: WeightEma | None = None, mixer: BatchMixer | None = None,
                    updates_before: int = 0, side: int | None = None,
                    frozen: torch.nn.Module | None = None) -> tuple[float, float]:
    """One pass over the training loader.

    Every ``cfg.grad_accum_steps`` batches make one optimizer step (the epoch's last group may
    be shorter; its loss is scaled by its own size). ``ema`` is updated after each optimizer
    step (``updates_before`` steps were taken in earlier epochs); ``mixer`` mixes each batch
    and the head's soft-target loss trains on it. ``side``: the batch is scaled on the device to
    this height (progressive resizing). ``frozen``: the model whose body is frozen this epoch;
    its body's norm layers stay in eval mode (``finetune.body_norms_to_eval``).

    The loss is read back to the host every ``cfg.log_every`` steps only (and once at the end).
    The time the loop waits for the loader's next batch is measured on the host clock, with no
    device sync: on a GPU, a loop blocked on the loader has queued no new work, so once the
    queued steps drain the GPU waits for data; on the CPU (no workers) it is the loader's own work.

    Returns
    -------
    (loss, data_wait_seconds)
        The mean loss over every rank's steps, and the seconds spent waiting for batches.
    """
    model.train()
    if frozen is not None:
        body_norms_to_eval(frozen)
    loss_sum = torch.zeros((), device=runtime.device)
    steps = len(loader)
    accum = cfg.grad_accum_steps
    loss_fn = criterion.soft_loss if mixer is not None else criterion
    waited = 0.0
    asked = time.perf_counter()
    for step, (x, y) in enumerate(loader):
        waited += time.perf_counter() - asked
        x, y = batch_to_device(x, runtime, inputs, train=True), y.to(runtime.device, non_blocking=True)
        if side is not None:
            x = resize_batch(x, side)
        if mixer is not None:
            x, y = mixer(x, y)
        group_start = step - step % accum
        group = min(accum, steps - group_start)
        update = step - group_start == group - 1
        # DDP: gradients are all-reduced once per optimizer step, not on every accumulated batch
        sync = nullcontext() if update or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            loss_sum += train_step(model, x, y, loss_fn, optimizer, scaler, runtime, cfg.grad_clip, scheduler,
                                   loss_scale=1.0 / group, update=update)
        if update and ema is not None:
            ema.update(updates_before + group_start // accum + 1)
        if (step + 1) % cfg.log_every == 0:
            mean_loss = global_mean(loss_sum, step + 1, runtime.dist)  # the only host sync of the loop
            check_loss(mean_loss, epoch, step, cfg)
            bar.set_postfix(loss=f"{mean_loss:.4f}", refresh=False)
            bar.update(cfg.log_every)
        asked = time.perf_counter()
    bar.update(steps - (steps // cfg.log_every) * cfg.log_every)
    train_loss = global_mean(loss_sum, steps, runtime.dist)
    check_loss(train_loss, epoch, steps - 1, cfg)
    return train_loss, waited


def evaluate(model: torch.nn.Module, loader, view: Callable, runtime: Runtime, head: Head, inputs: DeviceTransform,
             y: np.ndarray, metric: Metric) -> float:
    """The metric on the validation rows (plain view, gathered from every rank's shard)."""
    probs = gather_rows(predict_views(model, loader, [view], runtime, head.activate, inputs)[0], runtime.dist, len(y))
    return metric(y, probs)


def finish_average(average: WeightAverage, train_loader, generator: torch.Generator, train_tf: HostTransform,
                   seed: int, epoch: int, runtime: Runtime, inputs: DeviceTransform,
                   score: Callable[[torch.nn.Module], float]) -> dict:
    """Recompute the averaged weights' BatchNorm statistics on the training rows, then validate them.

    The pass over the training loader (full-size images, the training augmentation, no mixing)
    is seeded like epoch ``epoch`` (one past the last), so a fold resumed after its last epoch recomputes the same
    statistics. Under torchrun each rank sees its own rows; rank 0's statistics are kept.

    Returns
    -------
    dict with the averaged epochs and the validation score.
    """
    if has_batch_norm(average.module):
        generator.manual_seed(epoch_seed(seed, epoch))
        torch.manual_seed(epoch_seed(seed, epoch, runtime.dist.rank))
        train_tf.set_random_seed(epoch_seed(seed, epoch, runtime.dist.rank))
        with autocast(runtime):
            batches = (batch_to_device(x, runtime, inputs, train=True) for x, _ in train_loader)
            recompute_norm_stats(average.module, batches)
        broadcast_buffers(average.module, runtime.dist)
    return {"epochs": average.count, "score": score(average.module)}


def train_fold(
    run_name: str,
    cfg: TrainConfig,
    fold: int,
    data: FoldData,
    classes: list[str],
    metric: Metric,
    runtime: Runtime,
    layout: RunLayout,
    views: list[Callable],
    view_names: list[str],
    soft=None,
) -> dict:
    """Train one fold, keep its best checkpoint, predict its validation rows and the test set.

    ``soft`` (:class:`pipeline.students.teacher.SoftRows`, ``make pseudo``/``make distill``): the training rows
    carry the teacher's packed targets, pseudo-labelled test rows are added, and its loss trains; the
    validation rows, and so the OOF, are the fold's own as always.

    Under torchrun every rank runs this: training rows are split by a
    DistributedSampler, validation rows are sharded and gathered (every rank computes the
    same score, so early stopping agrees), and only rank 0 writes files.

    Returns
    -------
    dict with the fold's scores, best epoch, timings, throughput and history (also written to ``fold.json``).
    """
    context = runtime.dist
    main = context.is_main
    if main:
        layout.fold_dir(fold).mkdir(parents=True, exist_ok=True)
    seed = cfg.seed + 1000 * fold
    seed_everything(seed)
    model = prepare_model(cfg, data.head.n_outputs(len(classes)), runtime, cfg.pretrained)
    dcfg = data_config(model, cfg.image_size, cfg.mean, cfg.std, cfg.interpolation)

    train_idx = np.flatnonzero(data.folds != fold)
    valid_idx = np.flatnonzero(data.folds == fold)
    train_tf = HostTransform(dcfg.image_size, dcfg.interpolation, cfg.augment)
    eval_tf = HostTransform(dcfg.image_size, dcfg.interpolation)
    inputs = device_transform(cfg, dcfg, runtime)
    train_ds = (
        ImageDataset(data.store, train_idx, train_tf, data.y)
        if soft is None
        else soft.dataset(data.store, data.test_store, train_idx, train_tf)
    )
    criterion = data.head if soft is None else soft.loss
    valid_ds = ImageDataset(data.store, shard(valid_idx, context), eval_tf, data.y)
    generator = torch.Generator()
    sampler = None
    if context.enabled:
        # the same rows per rank and epoch for a given seed; a resumed run replays them
        sampler = torch.utils.data.DistributedSampler(
            train_ds, num_replicas=context.world_size, rank=context.rank, shuffle=True, seed=seed
        )
    per_rank = math.ceil(len(train_ds) / context.world_size)
    drop_last = per_rank > cfg.batch_size
    train_loader = make_loader(
        train_ds, cfg.batch_size, runtime, shuffle=True, generator=generator, drop_last=drop_last, sampler=sampler
    )
    valid_loader = make_loader(valid_ds, eval_batch_size(cfg.batch_size, runtime), runtime)

    optimizer = make_optimizer(model, cfg, runtime)
    ema = make_ema(model, cfg)
    mixer = make_mixer(data.head, data.head.n_outputs(len(classes)), cfg)
    average = make_average(model, cfg)
    steps_per_epoch = len(train_loader)
    # the schedule counts optimizer steps: with accumulation, one per grad_accum_steps batches
    updates_per_epoch = math.ceil(steps_per_epoch / cfg.grad_accum_steps)
    images_per_epoch = (steps_per_epoch * cfg.batch_size if drop_last else per_rank) * context.world_size
    total_steps = cfg.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        fine_tune_schedule(
            cfg.epochs * updates_per_epoch,
            cfg.freeze_epochs * updates_per_epoch,
            round(cfg.warmup_epochs * updates_per_epoch),
        ),
    )
    scaler = torch.amp.GradScaler("cuda", enabled=runtime.amp_dtype == torch.float16)

    best_path, state_path = layout.best(fold), layout.state(fold)
    history: list[dict] = []
    best_score, best_epoch, start_epoch, elapsed_before = metric.worst, -1, 0, 0.0
    state = checkpoint.load_state(state_path)
    best_info = checkpoint.best_checkpoint_info(best_path)
    if state is not None and best_info is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        if average is not None:
            average.load_state_dict(state["average"])
        start_epoch = state["epoch"] + 1
        history = list(state["history"])
        elapsed_before = float(state["train_seconds"])
        # the best checkpoint on disk is the truth: it may be newer than a fallback state
        best_epoch, best_score = best_info
        if main:
            log.info("  %s fold %d: resuming after epoch %d/%d", run_name, fold, start_epoch, cfg.epochs)
    elif state is not None and main:
        log.info("  %s fold %d: the best checkpoint is missing or damaged; the fold restarts", run_name, fold)
    # the phase is a function of the epoch: a resumed fold freezes (or not) as the uninterrupted one did
    phase = head_only(cfg, start_epoch)
    if phase:
        set_body_frozen(model, True)
    step_model = wrap_for_training(model, runtime)

    valid_y = data.y[valid_idx]
    started = time.perf_counter()
    bar = progress_bar(
        total=total_steps,
        initial=start_epoch * steps_per_epoch,
        desc=f"{run_name} fold {fold}",
        unit="step",
        enabled=main,
    )
    for epoch in range(start_epoch, cfg.epochs):
        if best_epoch >= 0 and cfg.patience and epoch - best_epoch > cfg.patience:
            break
        # every epoch's randomness derives from (seed, epoch[, rank]): a resumed run replays it exactly
        generator.manual_seed(epoch_seed(seed, epoch))
        if sampler is not None:
            sampler.set_epoch(epoch)
        torch.manual_seed(epoch_seed(seed, epoch, context.rank))
        train_tf.set_random_seed(epoch_seed(seed, epoch, context.rank))
        if head_only(cfg, epoch) != phase:
            # unfrozen: DDP and torch.compile fix the trainable parameters when they wrap, so wrap again
            phase = head_only(cfg, epoch)
            set_body_frozen(model, phase)
            step_model = wrap_for_training(model, runtime)
        side = train_side(cfg, epoch, dcfg.image_size)
        mixing = mixer is not None and epoch < cfg.epochs - cfg.mixup_off_epochs
        if mixing:
            # timm's Mixup draws from numpy's global RNG; seeded here like torch's, so a resume mixes the same
            np.random.seed(epoch_seed(seed, epoch, context.rank))
        epoch_started = time.perf_counter()
        train_loss, waited = train_one_epoch(
            step_model,
            train_loader,
            criterion,
            optimizer,
            scaler,
            scheduler,
            runtime,
            inputs,
            cfg,
            epoch,
            bar,
            ema=ema,
            mixer=mixer if mixing else None,
            updates_before=epoch * updates_per_epoch,
            side=side if side != dcfg.image_size else None,
            frozen=model if phase else None,
        )
        if average is not None and averages_epoch(cfg, epoch):
            average.update()
        # the loss read-back above waited for the device, so this is the epoch's real training time
        epoch_seconds = max(time.perf_counter() - epoch_started, 1e-9)
        images_per_s = images_per_epoch / epoch_seconds
        data_wait = min(waited / epoch_seconds, 1.0)
        broadcast_buffers(model, context)
        score = evaluate(model, valid_loader, views[0], runtime, data.head, inputs, valid_y, metric)
        scores = {"valid_score": score}
        if ema is not None:
            # the EMA's buffers follow each rank's own; rank 0's are the ones every rank validates and keeps
            broadcast_buffers(ema.module, context)
            score = evaluate(ema.module, valid_loader, views[0], runtime, data.head, inputs, valid_y, metric)
            scores = {"valid_score": score, "valid_score_raw": scores["valid_score"], "valid_score_ema": score}
        history.append(
            {
                "epoch": epoch + 1,
                "train_loss": train_loss,
                **scores,
                "lr": scheduler.get_last_lr()[0],
                "train_images_per_s": images_per_s,
                "data_wait_share": data_wait,
            }
        )
        if metric.is_better(score, best_score):
            best_score, best_epoch = score, epoch
            if main:
                # with train.ema the EMA weights are the fold's model: kept here, predicted by predict_fold
                checkpoint.save_best(best_path, model if ema is None else ema.module, epoch, score)
        bar.set_postfix(loss=f"{train_loss:.4f}", **{metric.name: f"{score:.4f}", "best": f"{best_score:.4f}"})
        if main and bar.disable:
            # a log file gets one line per epoch instead of the bar's carriage-return updates
            log.info(
                "  %s fold %d epoch %d/%d: loss %.4f, %s %.4f (best %.4f), %.0f images/s, %.0f%% waiting for data",
                run_name,
                fold,
                epoch + 1,
                cfg.epochs,
                train_loss,
                metric.name,
                score,
                best_score,
                images_per_s,
                100 * data_wait,
            )
        if main:
            checkpoint.save_state(
                state_path,
                {
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "best_score": float(best_score),
                    "best_epoch": int(best_epoch),
                    "history": history,
                    "train_seconds": time.perf_counter() - started + elapsed_before,
                    **({} if ema is None else {"ema": ema.state_dict()}),
                    **({} if average is None else {"average": average.state_dict()}),
                },
            )
    bar.close()
    train_seconds = time.perf_counter() - started + elapsed_before
    averaged = None
    if average is not None and average.count:
        averaged = finish_average(
            average,
            train_loader,
            generator,
            train_tf,
            seed,
            cfg.epochs,
            runtime,
            inputs,
            lambda m: evaluate(m, valid_loader, views[0], runtime, data.head, inputs, valid_y, metric),
        )
        averaged["kept"] = bool(metric.is_better(averaged["score"], best_score))
        if averaged["kept"]:
            # the average replaces the best checkpoint only when it validates better (README says why)
            best_score, best_epoch = averaged["score"], len(history) - 1
            if main:
                checkpoint.save_best(best_path, average.module, best_epoch, best_score)
    barrier(context)  # rank 0's best checkpoint is on disk before any rank reads it

    result = predict_fold(cfg, fold, data, classes, metric, runtime, layout, views, view_names, model=model)
    rates = [h["train_images_per_s"] for h in history if "train_images_per_s" in h]
    waits = [h["data_wait_share"] for h in history if "data_wait_share" in h]
    result.update(
        {
            "best_epoch": best_epoch + 1,
            "epochs_run": len(history),
            "train_seconds": train_seconds,
            "train_images_per_s": float(np.median(rates)) if rates else None,
            "data_wait_share": float(np.median(waits)) if waits else None,
            "history": history,
            "image_size": dcfg.image_size,
            "mean": dcfg.mean,
            "std": dcfg.std,
            "interpolation": dcfg.interpolation,
            "params": count_parameters(model),
            "batch_size": cfg.batch_size,
            "processes": context.world_size,
            **({} if averaged is None else {"averaged": averaged}),
            **({} if soft is None else soft.info),
        }
    )
    if main:
        io.write_json(layout.fold_info(fold), result)
    return result
